"""Multi-level encoder features (ProMISe's APM input): which blocks, captured how, in which layout.

``spec.feature_block_indexes`` names the blocks (0-based over all encoder blocks); :func:`capture_features`
hooks them for one forward pass and hands back each output as ``BxDxgxg``. Used by the embedding cache and
by the onnxruntime encoder graph alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from samadapt.models.registry import ModelSpec


def feature_module(encoder: nn.Module, spec: ModelSpec, index: int) -> nn.Module:
    """The module whose output is multi-level feature ``index`` (0-based over all encoder blocks).

    ``vit``: ``encoder.blocks[index]`` (output ``BxgxgxD``). ``tiny_vit``: the block of that global index;
    a stage's last block is taken with the stage's patch merging, i.e. the whole stage (output ``BxNxD``
    tokens, ``N = g*g`` for the stages that feed features).
    """
    if spec.encoder != "tiny_vit":
        return encoder.blocks[index]
    start = 0
    for stage, depth in enumerate(spec.stage_depths):
        if index < start + depth:
            local = index - start
            return encoder.layers[stage] if local == depth - 1 else encoder.layers[stage].blocks[local]
        start += depth
    raise IndexError(f"block {index} beyond the encoder's {start} blocks")


def feature_map(output: torch.Tensor, grid: int) -> torch.Tensor:
    """A captured block output as ``BxDxgxg``: ViT blocks give ``BxgxgxD``, TinyViT stages ``BxNxD``."""
    if output.ndim == 3:
        return output.reshape(output.shape[0], grid, grid, output.shape[2]).permute(0, 3, 1, 2)
    return output.permute(0, 3, 1, 2)


@contextlib.contextmanager
def capture_features(
    encoder: nn.Module, spec: ModelSpec, indexes: tuple[int, ...]
) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks on the feature blocks ``indexes``; yields a dict filled with each one's ``BxDxgxg`` output
    during the next forward pass (hooks removed on exit)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index in sorted(set(indexes)):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor, index: int = index) -> None:
            captured[index] = feature_map(output, spec.embedding_size)
        handles.append(feature_module(encoder, spec, index).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
