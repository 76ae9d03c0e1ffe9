"""Masks from a ProMISe adapter on one slice: automatic (APM points, IPS shift) or with given prompts.

Masks come out in the model frame (``SxS`` bool, thresholded at logit 0 after bilinear upscaling of the
low-res logits, as :mod:`samadapt.evaluation.box_protocol` does), with the padding outside the unpadded
region ``valid_hw`` cleared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam

from samadapt.data.prepared import PreparedDataset
from samadapt.evaluation.box_protocol import SlicePrediction, slices_with_objects
from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.promise.adapter import PromiseAdapter
from samadapt.promise.automatic import decode_automatic


def to_model_frame(low_res: torch.Tensor, image_size: int, valid_hw: tuple[int, int]) -> torch.Tensor:
    """``PxLxL`` low-res logits -> ``PxSxS`` bool masks (logit > 0), zero outside ``valid_hw``."""
    masks = upscale_logits(low_res.float(), image_size) > 0
    masks[:, int(valid_hw[0]):, :] = False
    masks[:, :, int(valid_hw[1]):] = False
    return masks


@torch.no_grad()
def automatic_masks(
    adapter: PromiseAdapter, sam: Sam, embedding: torch.Tensor, features: torch.Tensor,
    valid_hw: tuple[int, int], presence_threshold: float | None = 0.5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every adapter class segmented without prompts on one slice (the rule of :mod:`samadapt.promise.automatic`).

    Args:
        embedding: ``1xCxgxg``; features: ``1x3xDxgxg`` (on the adapter's device).
        presence_threshold: classes whose presence probability is below it get an empty mask (None, or an
            adapter without a presence head: every class gets its mask).
    Returns:
        masks ``KxSxS`` bool (model frame), presence probabilities ``K`` (or None).
    """
    auto = decode_automatic(adapter, SamDecoder.for_adapter(sam, adapter), embedding, features)
    masks = to_model_frame(auto.low_res[:, 0], adapter.spec.image_size, valid_hw)
    masks[auto.absent(presence_threshold)] = False
    return masks, auto.presence


@torch.no_grad()
def prompted_masks(
    sam: Sam, embedding: torch.Tensor, shift: torch.Tensor | None, multimask: bool, prompts: dict,
    image_size: int, valid_hw: tuple[int, int],
) -> torch.Tensor:
    """``NxSxS`` bool masks for ``N`` given prompts (``{"boxes": Nx4}`` or ``{"points": (NxPx2, NxP)}``,
    model-input px) with an optional IPS ``shift`` (``1xTxC``): decoder output 0, as the adapter trains."""
    low_res, _ = SamDecoder(sam, shift)(embedding, multimask=multimask, **prompts)
    return to_model_frame(low_res[:, 0], image_size, valid_hw)


@dataclass
class AutomaticSplit:
    """Automatic predictions on a split's slices with objects, one entry per object (the layout of
    :func:`~samadapt.evaluation.box_protocol.score_predictions`), and the false positives seen there."""

    predictions: list[SlicePrediction]
    absent_pairs: int
    false_positives: int

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.absent_pairs if self.absent_pairs else float("nan")


@torch.no_grad()
def predict_automatic_split(
    adapter: PromiseAdapter, sam: Sam, prepared: PreparedDataset, cache: EmbeddingCache, split: str = "test",
    presence_threshold: float | None = 0.5,
) -> AutomaticSplit:
    """Every adapter class segmented without prompts on the slices of ``split`` that hold objects.

    Each object's entry pairs its class's automatic mask with the class's ground truth on the slice (the
    union of its instances), so the rows line up object by object with the prompted methods' rows while
    scoring what automatic segmentation predicts: one mask per class. Objects of classes the adapter does not
    know are left out. Adapter classes absent from a slice count as false positives when their mask is not
    empty. (``samadapt eval --prompts auto`` scores every slice and class; see
    :mod:`samadapt.promise.auto_protocol`.)
    """
    device = next(adapter.parameters()).device
    predictions, absent, false_positives = [], 0, 0
    for case_id, index, objects in slices_with_objects(prepared, split):
        embedding = torch.tensor(np.array(cache.embeddings(case_id)[index : index + 1]), dtype=torch.float32)
        features = torch.tensor(np.array(cache.features(case_id)[index : index + 1]), dtype=torch.float32)
        valid_hw = tuple(prepared.meta(case_id)["valid_hw"])
        masks, _ = automatic_masks(adapter, sam, embedding.to(device), features.to(device), valid_hw,
                                   presence_threshold)
        masks = masks.cpu().numpy()
        kept = [o for o in objects if o.class_name in adapter.classes]
        truth = {o.class_name: np.zeros_like(masks[0]) for o in kept}
        for obj in kept:
            truth[obj.class_name] |= prepared.object_mask(case_id, obj)
        missing = [k for k, name in enumerate(adapter.classes) if name not in truth]
        absent += len(missing)
        false_positives += sum(bool(masks[k].any()) for k in missing)
        if kept:
            predicted = np.stack([masks[adapter.classes.index(o.class_name)] for o in kept])
            predictions.append(SlicePrediction(case_id, index, kept, predicted,
                                               np.stack([truth[o.class_name] for o in kept])))
    return AutomaticSplit(predictions, absent, false_positives)
