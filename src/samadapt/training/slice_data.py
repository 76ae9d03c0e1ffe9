"""Training slices of a prepared dataset, read from its embedding cache, in a resumable order.

A *training slice* is one slice of one case with its objects (organs and lesions). The batch of step ``s``
is a pure function of ``(seed, s)``: slices are visited epoch by epoch, each epoch in its own permutation
drawn from ``numpy.random.default_rng([seed, epoch])``, so a resumed run needs only its step to continue
the same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.errors import DatasetError
from samadapt.evaluation.box_protocol import slices_with_objects
from samadapt.models.embedding_cache import EmbeddingCache


@dataclass(frozen=True)
class TrainingSlice:
    """One slice that has objects: ``case_id``, ``slice`` index in the case shard, its ``objects``."""

    case_id: str
    slice: int
    objects: tuple[SliceObject, ...]


@dataclass
class SliceSample:
    """A loaded training slice.

    ``embedding``: ``1xCxgxg`` float32 image embedding (None until encoded, when read without a cache);
    ``masks``: ``NxSxS`` bool object masks in the model
    frame; ``classes``: the N class names; ``is_lesion``: ``N`` bool.
    """

    embedding: torch.Tensor | None
    masks: torch.Tensor
    classes: list[str]
    is_lesion: torch.Tensor


def training_slices(prepared: PreparedDataset, split: str = "train") -> list[TrainingSlice]:
    """Every slice of ``split`` with at least one object, in case order."""
    found = [TrainingSlice(cid, index, tuple(objs)) for cid, index, objs in slices_with_objects(prepared, split)]
    if not found:
        raise DatasetError(f"{prepared.root}: the '{split}' split has no slice with objects; prepare more cases "
                           "or another split")
    return found


class SliceOrder:
    """Which slices make micro-batch ``micro`` of step ``step`` (epoch-wise permutations, see module doc)."""

    def __init__(self, n_slices: int, batch_size: int, grad_accum: int, seed: int):
        self.n, self.batch_size, self.grad_accum, self.seed = n_slices, batch_size, grad_accum, seed
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int, micro: int = 0) -> list[int]:
        """Slice indices (into the list given to the sampler) of one micro-batch."""
        first = (step * self.grad_accum + micro) * self.batch_size
        return [int(self._permutation(i // self.n)[i % self.n]) for i in range(first, first + self.batch_size)]


def load_slice(
    prepared: PreparedDataset, cache: EmbeddingCache | None, item: TrainingSlice, is_lesion_class
) -> SliceSample:
    """Read the embedding (from ``cache``, if given) and object masks of ``item`` (``is_lesion_class``:
    class name -> bool)."""
    embedding = None
    if cache is not None:
        embedding = torch.from_numpy(np.asarray(cache.embeddings(item.case_id)[item.slice], dtype=np.float32))[None]
    labels = np.asarray(prepared.labels(item.case_id)[item.slice])
    masks = torch.from_numpy(np.stack([np.isin(labels, obj.values) for obj in item.objects]))
    classes = [obj.class_name for obj in item.objects]
    return SliceSample(embedding, masks, classes, torch.tensor([is_lesion_class(c) for c in classes]))
