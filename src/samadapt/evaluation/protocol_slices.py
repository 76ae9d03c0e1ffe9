"""The slices a prompt protocol visits: every slice of a split with objects, its truth and its embedding.

Shared by the interactive and robustness protocols (:mod:`samadapt.evaluation.interactive_protocol`,
:mod:`samadapt.evaluation.robustness_protocol`); the box protocol reads the same slices in the same order
(:func:`~samadapt.evaluation.box_protocol.slices_with_objects`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.evaluation.box_protocol import slices_with_objects
from samadapt.models.embedding_cache import EmbeddingCache


@dataclass
class ProtocolSlice:
    """One slice to prompt: ``truth`` ``NxSxS`` bool (model frame), ``embedding`` ``1xCxgxg`` float32,
    ``valid_hw`` the unpadded part of the frame (predictions are cut to it before scoring)."""

    case_id: str
    slice: int
    objects: list[SliceObject]
    truth: torch.Tensor
    embedding: torch.Tensor
    valid_hw: tuple[int, int]

    def crop(self, masks: torch.Tensor) -> torch.Tensor:
        """``masks`` (``NxSxS`` bool) with everything outside the unpadded region cleared."""
        h, w = self.valid_hw
        masks = masks.clone()
        masks[:, h:, :] = False
        masks[:, :, w:] = False
        return masks


def load_protocol_slice(prepared: PreparedDataset, cache: EmbeddingCache, case_id: str, index: int,
                        objects: list[SliceObject]) -> ProtocolSlice:
    """One slice's truth (``objects``' masks) and embedding."""
    truth = torch.from_numpy(np.stack([prepared.object_mask(case_id, obj) for obj in objects]))
    embedding = torch.tensor(np.array(cache.embeddings(case_id)[index : index + 1]), dtype=torch.float32)
    valid_h, valid_w = prepared.meta(case_id)["valid_hw"]
    return ProtocolSlice(case_id, index, objects, truth.bool(), embedding, (int(valid_h), int(valid_w)))


def protocol_slices(prepared: PreparedDataset, cache: EmbeddingCache, split: str) -> Iterator[ProtocolSlice]:
    """Every slice of ``split`` that has objects, in case order (as the box protocol)."""
    for case_id, index, objects in slices_with_objects(prepared, split):
        yield load_protocol_slice(prepared, cache, case_id, index, objects)


def object_row(item: ProtocolSlice, obj: SliceObject) -> dict:
    """The identifying columns of one object's score row (as the box protocol's rows)."""
    return {"case_id": item.case_id, "slice": item.slice, "class": obj.class_name, "instance": obj.instance,
            "area": obj.area}
