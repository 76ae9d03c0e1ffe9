"""Box-prompt evaluation on a split of a prepared dataset, from cached embeddings.

Every object of every slice is prompted at once with its box (tight, or jittered by up to ``jitter_px``
model-frame pixels per coordinate), decoded with a single mask output, thresholded at logit 0 and scored
against its ground truth in the model frame, restricted to the unpadded region. Spacing comes from the
prepared case (``pixel_spacing_mm``), so NSD and HD95 are in mm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam

from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.evaluation.metrics import segmentation_scores
from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.prompts.boxes import boxes_from_masks, jitter_boxes_uniform, masks_from_boxes


@dataclass
class SlicePrediction:
    """Predicted and true masks of the objects of one slice (model frame, ``NxSxS`` bool)."""

    case_id: str
    slice: int
    objects: list[SliceObject]
    predicted: np.ndarray
    truth: np.ndarray


def slices_with_objects(prepared: PreparedDataset, split: str) -> Iterator[tuple[str, int, list[SliceObject]]]:
    """(case id, slice index, objects) for every slice of ``split`` that has objects, in case order."""
    for case_id in prepared.case_ids(split):
        by_slice: dict[int, list[SliceObject]] = {}
        for obj in prepared.objects(case_id):
            by_slice.setdefault(obj.slice, []).append(obj)
        for index in sorted(by_slice):
            yield case_id, index, by_slice[index]


@torch.inference_mode()
def predict_with_boxes(
    sam: Sam,
    prepared: PreparedDataset,
    cache: EmbeddingCache,
    split: str = "test",
    jitter_px: float = 0.0,
    seed: int = 0,
    slices: Iterable[tuple[str, int, list[SliceObject]]] | None = None,
) -> Iterator[SlicePrediction]:
    """Decode every object of ``split`` from its (jittered) box; yields one :class:`SlicePrediction` per slice.

    ``slices`` (``(case_id, slice, objects)``, default :func:`slices_with_objects` of ``split``) limits it to
    a sample; the jitter noise is drawn slice after slice in their order.
    """
    image_size = prepared.image_size
    generator = torch.Generator().manual_seed(seed)
    device = next(sam.parameters()).device
    for case_id, index, objects in slices if slices is not None else slices_with_objects(prepared, split):
        valid_h, valid_w = prepared.meta(case_id)["valid_hw"]
        truth = np.stack([prepared.object_mask(case_id, obj) for obj in objects])
        boxes = jitter_boxes_uniform(boxes_from_masks(torch.as_tensor(truth)), jitter_px, generator, image_size)
        embedding = torch.tensor(np.array(cache.embeddings(case_id)[index : index + 1]), dtype=torch.float32)
        low_res, _ = SamDecoder(sam)(embedding.to(device), boxes=boxes.to(device))
        predicted = (upscale_logits(low_res[:, 0], image_size) > 0).cpu().numpy()
        predicted[:, valid_h:, :] = False
        predicted[:, :, valid_w:] = False
        yield SlicePrediction(case_id, index, objects, predicted, truth)


def box_fill_predictions(prepared: PreparedDataset, split: str = "test",
                         slices: Iterable[tuple[str, int, list[SliceObject]]] | None = None
                         ) -> Iterator[SlicePrediction]:
    """The box-filling baseline: each object's prediction is its own tight box, filled (on ``slices``, default
    every slice of ``split`` with objects)."""
    for case_id, index, objects in slices if slices is not None else slices_with_objects(prepared, split):
        truth = np.stack([prepared.object_mask(case_id, obj) for obj in objects])
        predicted = masks_from_boxes(boxes_from_masks(torch.as_tensor(truth)), *truth.shape[-2:]).numpy()
        yield SlicePrediction(case_id, index, objects, predicted, truth)


def score_predictions(
    prepared: PreparedDataset, predictions: Iterator[SlicePrediction], nsd_tolerance_mm: float = 2.0
) -> list[dict]:
    """One row per object: case, slice, class, instance, area and Dice / IoU / NSD / HD95 (2D, mm)."""
    rows = []
    for item in predictions:
        spacing = tuple(prepared.meta(item.case_id)["pixel_spacing_mm"])
        for obj, pred, gt in zip(item.objects, item.predicted, item.truth, strict=True):
            scores = segmentation_scores(pred, gt, spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm)
            rows.append({"case_id": item.case_id, "slice": item.slice, "class": obj.class_name,
                         "instance": obj.instance, "area": obj.area, **scores})
    return rows
