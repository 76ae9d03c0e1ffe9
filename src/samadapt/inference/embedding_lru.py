"""A bounded, least-recently-used store of per-slice image embeddings (the Segmenter's cache).

Memory per slice (fp16): ``C x g x g x 2`` bytes for the embedding (64 KiB for ``tiny``, 2 MiB for
ViT-B) plus ``3 x D x g x g x 2`` for encoder features when an auto-prompting adapter needs them
(288 KiB for ``tiny``, 18 MiB for ViT-B). The bound is a number of slices, chosen by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from samadapt.errors import ConfigError


@dataclass(frozen=True)
class SliceEmbedding:
    """One slice's encoder output: ``1xCxgxg`` float16 embedding and ``1x3xDxgxg`` float16 features (or None)."""

    embedding: np.ndarray
    features: np.ndarray | None = None


class EmbeddingLRU:
    """At most ``max_items`` :class:`SliceEmbedding` values; the least recently used one is dropped first."""

    def __init__(self, max_items: int):
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigError(f"embedding cache size {max_items!r}: give at least 1 slice")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, SliceEmbedding] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> SliceEmbedding | None:
        """The value of ``key`` (now the most recently used), or None; counts a hit or a miss."""
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: SliceEmbedding) -> None:
        """Store ``value`` as the most recently used; drops the oldest entries beyond the bound."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._items)

    def info(self) -> dict:
        """``{"size", "max_items", "hits", "misses"}``."""
        return {"size": len(self), "max_items": self.max_items, "hits": self.hits, "misses": self.misses}
