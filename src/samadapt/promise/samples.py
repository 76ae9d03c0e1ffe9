"""ProMISe's training and evaluation samples: one slice's cached embedding and features, with its class and
object masks.

A slice's *class mask* is the union of the class's instances on it (automatic segmentation predicts one
mask per class); its *object masks* are the instances one by one (prompted modes prompt objects). Classes
are those of the adapter (``classes``, in head order); objects of other classes are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from samadapt.data.prepared import PreparedDataset
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.training.slice_data import TrainingSlice, training_slices


@dataclass
class PromiseSample:
    """One slice, ready for the frozen decoder.

    - ``embedding``: ``1xCxgxg`` float32 image embedding.
    - ``features``: ``1x3xDxgxg`` float32 encoder block outputs, or None when not read.
    - ``class_indices``: ``K'`` long, the adapter classes present on the slice (into ``classes``).
    - ``class_masks``: ``K'xSxS`` bool, their masks (union of instances), model frame.
    - ``presence``: ``K`` float, 1 for every adapter class present on the slice, else 0.
    - ``object_masks``: ``NxSxS`` bool, every object of an adapter class, model frame.
    - ``valid_hw``: the unpadded ``(h, w)`` of the model frame.
    """

    embedding: torch.Tensor
    features: torch.Tensor | None
    class_indices: torch.Tensor
    class_masks: torch.Tensor
    presence: torch.Tensor
    object_masks: torch.Tensor
    valid_hw: tuple[int, int]


def promise_slices(prepared: PreparedDataset, split: str, classes: list[str]) -> list[TrainingSlice]:
    """The slices of ``split`` holding at least one object of ``classes`` (objects of other classes dropped)."""
    wanted = set(classes)
    kept = []
    for item in training_slices(prepared, split):
        objects = tuple(obj for obj in item.objects if obj.class_name in wanted)
        if objects:
            kept.append(TrainingSlice(item.case_id, item.slice, objects))
    return kept


def class_boxes(slices: list[TrainingSlice], classes: list[str]) -> list[list[tuple[int, int, int, int]]]:
    """Per class of ``classes``, the XYXY boxes (model-input px) of its class masks on ``slices``."""
    boxes: list[list] = [[] for _ in classes]
    index = {name: k for k, name in enumerate(classes)}
    for item in slices:
        per_class: dict[int, list] = {}
        for obj in item.objects:
            per_class.setdefault(index[obj.class_name], []).append(obj.box)
        for k, found in per_class.items():
            b = np.array(found)
            boxes[k].append((int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())))
    return boxes


def load_promise_slice(
    prepared: PreparedDataset, cache: EmbeddingCache, item: TrainingSlice, classes: list[str], with_features: bool
) -> PromiseSample:
    """Read the cached embedding (and features) and the masks of ``item``."""
    index = {name: k for k, name in enumerate(classes)}
    embedding = torch.from_numpy(np.asarray(cache.embeddings(item.case_id)[item.slice], dtype=np.float32))[None]
    features = None
    if with_features:
        features = torch.from_numpy(np.asarray(cache.features(item.case_id)[item.slice], dtype=np.float32))[None]
    labels = np.asarray(prepared.labels(item.case_id)[item.slice])
    objects = [obj for obj in item.objects if obj.class_name in index]
    object_masks = np.stack([np.isin(labels, obj.values) for obj in objects]) if objects else \
        np.zeros((0, *labels.shape), dtype=bool)
    present = sorted({index[obj.class_name] for obj in objects})
    class_masks = [np.logical_or.reduce([m for m, obj in zip(object_masks, objects, strict=True)
                                         if index[obj.class_name] == k]) for k in present]
    presence = torch.zeros(len(classes))
    presence[present] = 1.0
    return PromiseSample(
        embedding, features, torch.tensor(present, dtype=torch.long),
        torch.from_numpy(np.stack(class_masks)) if class_masks else torch.zeros((0, *labels.shape), dtype=torch.bool),
        presence, torch.from_numpy(object_masks), tuple(prepared.meta(item.case_id)["valid_hw"]))


def low_res_targets(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``NxSxS`` bool masks -> ``NxLxL`` float targets at the decoder's low-res size ``L`` (area average)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, size, size), device=masks.device)
    return F.interpolate(masks.float()[:, None], size=(size, size), mode="area")[:, 0]
