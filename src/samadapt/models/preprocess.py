"""Turn uint8 slices in the model frame into SAM's normalised encoder input."""

from __future__ import annotations

import numpy as np
import torch

from samadapt.models.registry import ModelSpec


def to_model_input(
    images: np.ndarray | torch.Tensor,
    spec: ModelSpec,
    valid_hw: tuple[int, int] | np.ndarray | None = None,
) -> torch.Tensor:
    """Normalise uint8 images for the model's image encoder, as ``spec.normalization`` says.

    ``mean_std`` (SAM): ``(x - pixel_mean) / pixel_std``. ``min_max`` (MedSAM, LiteMedSAM): each image
    scaled to [0, 1] by its own minimum and maximum over the unpadded region (a constant image becomes 0).

    Args:
        images: ``BxSxS`` (grey) or ``BxSxSx3`` (RGB) uint8, already in the model frame (longest side
            resized to ``spec.image_size``, padded bottom/right).
        spec: the model's architecture (pixel mean/std, input size).
        valid_hw: ``(h, w)`` of the unpadded region, or a ``Bx2`` array of them. SAM and MedSAM pad *after*
            normalising, so padded pixels are set to 0 (SAM: the mean) exactly as ``Sam.preprocess`` does.

    Returns:
        ``Bx3xSxS`` float32 tensor.
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(-1).expand(*x.shape, 3)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != spec.image_size or x.shape[2] != spec.image_size:
        raise ValueError(f"images must be BxSxS or BxSxSx3 with S={spec.image_size}, got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()
    size = spec.image_size
    hw = np.broadcast_to(
        np.asarray(valid_hw if valid_hw is not None else (size, size), dtype=np.int64).reshape(-1, 2),
        (x.shape[0], 2),
    )
    if spec.normalization == "min_max":
        for i, (h, w) in enumerate(hw):
            region = x[i, :, :h, :w]
            low, high = region.min(), region.max()
            x[i] = (x[i] - low) / torch.clamp(high - low, min=1e-8)
    else:
        mean = torch.tensor(spec.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x - mean) / std
    for i, (h, w) in enumerate(hw):
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x.contiguous()
