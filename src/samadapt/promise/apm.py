"""APM, the auto-prompting module (ProMISe): point prompts predicted from the encoder's multi-level features.

Input: the outputs of three image-encoder blocks (about 1/2, 3/4 and the end of the ViT,
``spec.feature_block_indexes``), ``Bx3xDxgxg`` float (the embedding cache stores them with ``samadapt embed
--features``). Output, for each of ``K`` classes: ``N`` points ``BxKxNx2`` float XY in **model-input
pixels** (``sigmoid x image_size``), with fixed labels (the first ``n_positive`` positive, the rest
negative; :func:`samadapt.prompts.point_sets.fixed_point_labels`), and optionally ``BxK`` presence logits.
There is no loss on the coordinates: they learn through SAM's frozen prompt encoder and mask decoder from
the mask loss.

Two variants (``apm_kind``):

- ``resnet`` (the paper's main one): the three levels concatenated (``3D`` channels), fusion conv3x3 ->
  ReLU -> conv3x3 -> ReLU -> conv3x3, a ResNet body (stem conv3x3 stride 1, norm, ReLU, max-pool; four
  stages of basic blocks), global average pool, and class-conditioned linear heads: one linear map per
  class to its ``2N`` coordinates (stacked into one ``Linear(F, K*2N)``).
- ``cross_attention``: ``K x N`` learned queries (one set per class) attend over the tokens of the three
  levels (each projected ``D -> d``, plus learned level and position embeddings) in a small transformer
  decoder; each query's output gives one point.

Sizes (``apm_size``): ``paper`` is ProMISe's ViT-B setting (fusion 256, ResNet-34 body: widths 64-512,
blocks 3-4-6-3; cross-attention width 256); ``small`` is scaled for samadapt-tiny (``D = 192``, 16x16
grid): fusion 128, widths 32-256, one block per stage (2.3 M parameters for 12 classes; the
cross-attention variant, width 128: 0.7 M).
``auto`` takes ``paper`` for encoders of width >= 768, else ``small``.

Decisions where the paper is silent:

- **GroupNorm** instead of BatchNorm in the body: batches are a few correlated slices, inference runs one
  slice at a time, and the training engine checkpoints parameters, not running statistics.
- **Presence head** (an addition): one logit per class, "is the class on this slice", from the pooled
  feature (``resnet``) or from one extra query per class (``cross_attention``), trained with BCE. Automatic
  segmentation must say *no* for classes absent from a slice; SAM given 8 positive points always answers
  with some mask, so without it every absent class would be a false positive.
- **Initial points**: the head's weights start small and each point's position starts at a fixed layout,
  ``point_bias`` (logits of ``position / image_size``): by default a small ellipse of positives around the
  class's mean box centre on the training slices and a wider ellipse of negatives around its mean box
  (:func:`initial_point_layout`); the module learns where to move them, image by image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


@dataclass(frozen=True)
class APMSize:
    """Widths and depths of an APM (see the module docstring's presets)."""

    fusion_channels: int
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    attention_dim: int
    attention_heads: int
    attention_layers: int = 2


APM_SIZES = {
    "small": APMSize(128, (32, 64, 128, 256), (1, 1, 1, 1), 128, 4),
    "paper": APMSize(256, (64, 128, 256, 512), (3, 4, 6, 3), 256, 8),
}


def resolve_apm_size(name: str, feature_dim: int) -> str:
    """``auto`` -> ``paper`` for encoder widths >= 768 (ViT-B and up), else ``small``."""
    if name == "auto":
        return "paper" if feature_dim >= 768 else "small"
    return name


def _logit(fraction: torch.Tensor) -> torch.Tensor:
    fraction = fraction.clamp(0.01, 0.99)
    return torch.log(fraction / (1 - fraction))


def initial_point_layout(
    priors: torch.Tensor, n_positive: int, n_negative: int, image_size: int,
    positive_radius: float = 0.3, negative_radius: float = 1.4,
) -> torch.Tensor:
    """Starting positions ``KxNx2`` (model-input px) of each class's points.

    Args:
        priors: ``Kx4`` per class ``(cx, cy, half_w, half_h)`` in model-input pixels: the mean centre and
            half size of the class's boxes on the training slices (the image centre and a quarter of the
            image for a class never seen).
    Returns:
        positives on an ellipse of ``positive_radius`` x the half size around the centre, negatives on one
        of ``negative_radius`` x the half size (angles staggered), clamped inside the image.
    """
    cx, cy, hw, hh = (priors[:, i : i + 1].float() for i in range(4))

    def ring(count: int, radius: float, phase: float) -> torch.Tensor:
        angles = 2 * math.pi * (torch.arange(count, dtype=torch.float32) + phase) / max(count, 1)
        return torch.stack([cx + radius * hw * angles.cos(), cy + radius * hh * angles.sin()], dim=-1)

    points = torch.cat([ring(n_positive, positive_radius, 0.0), ring(n_negative, negative_radius, 0.5)], dim=1)
    return points.clamp(1.0, image_size - 1.0)


def centre_priors(num_classes: int, image_size: int) -> torch.Tensor:
    """``Kx4`` priors at the image centre with a quarter-image half size (no training statistics)."""
    half = image_size / 2
    return torch.tensor([[half, half, half / 2, half / 2]] * num_classes, dtype=torch.float32)


class _PointOutput(nn.Module):
    """Shared tail: ``raw`` logit offsets ``BxKxNx2`` + the per-point bias -> sigmoid x image size."""

    def __init__(self, num_classes: int, num_points: int, image_size: int):
        super().__init__()
        self.image_size = image_size
        layout = initial_point_layout(centre_priors(num_classes, image_size), num_points // 2,
                                      num_points - num_points // 2, image_size)
        self.point_bias = nn.Parameter(_logit(layout / image_size))

    def set_layout(self, points: torch.Tensor) -> None:
        """Start from ``points`` (``KxNx2`` model-input px) instead of the centre layout."""
        with torch.no_grad():
            self.point_bias.copy_(_logit(points.to(self.point_bias) / self.image_size))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw + self.point_bias) * self.image_size


def _stage(inplanes: int, planes: int, blocks: int, stride: int, groups: int) -> nn.Sequential:
    def norm(channels: int) -> nn.GroupNorm:
        return nn.GroupNorm(min(groups, channels), channels)

    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), norm(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm)]
    layers += [BasicBlock(planes, planes, norm_layer=norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetAPM(nn.Module):
    """``forward(features Bx3xDxgxg) -> (points BxKxNx2 model-input px, presence logits BxK or None)``."""

    def __init__(self, feature_dim: int, levels: int, num_classes: int, num_points: int, image_size: int,
                 size: APMSize, presence: bool = True):
        super().__init__()
        self.num_classes, self.num_points = num_classes, num_points
        f = size.fusion_channels
        self.fusion = nn.Sequential(
            nn.Conv2d(levels * feature_dim, f, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(f, f, 3, padding=1))
        widths = size.widths
        stem = [nn.Conv2d(f, widths[0], 3, padding=1, bias=False), nn.GroupNorm(min(8, widths[0]), widths[0]),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        stages, inplanes = [], widths[0]
        for i, (width, blocks) in enumerate(zip(widths, size.blocks, strict=True)):
            stages.append(_stage(inplanes, width, blocks, 1 if i == 0 else 2, 8))
            inplanes = width
        self.body = nn.Sequential(*stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(inplanes, num_classes * num_points * 2)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        self.presence = nn.Linear(inplanes, num_classes) if presence else None
        self.points = _PointOutput(num_classes, num_points, image_size)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = features.shape[0]
        pooled = self.body(self.fusion(features.flatten(1, 2)))
        raw = self.head(pooled).view(b, self.num_classes, self.num_points, 2)
        presence = self.presence(pooled) if self.presence is not None else None
        return self.points(raw), presence


class CrossAttentionAPM(nn.Module):
    """The cross-attention variant: learned queries over the three levels' tokens (same outputs as
    :class:`ResNetAPM`)."""

    def __init__(self, feature_dim: int, levels: int, grid: int, num_classes: int, num_points: int,
                 image_size: int, size: APMSize, presence: bool = True):
        super().__init__()
        self.num_classes, self.num_points = num_classes, num_points
        d = size.attention_dim
        self.project = nn.ModuleList(nn.Conv2d(feature_dim, d, 1) for _ in range(levels))
        self.level_embed = nn.Parameter(torch.randn(levels, d) * 0.02)
        self.position_embed = nn.Parameter(torch.randn(grid * grid, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(num_classes * num_points, d) * 0.02)
        self.presence_queries = nn.Parameter(torch.randn(num_classes, d) * 0.02) if presence else None
        layer = nn.TransformerDecoderLayer(d, size.attention_heads, dim_feedforward=4 * d, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, size.attention_layers, norm=nn.LayerNorm(d))
        self.head = nn.Linear(d, 2)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        self.presence = nn.Linear(d, 1) if presence else None
        self.points = _PointOutput(num_classes, num_points, image_size)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = features.shape[0]
        tokens = [proj(features[:, i]).flatten(2).transpose(1, 2) + self.position_embed + self.level_embed[i]
                  for i, proj in enumerate(self.project)]
        memory = torch.cat(tokens, dim=1)
        queries = self.queries
        if self.presence_queries is not None:
            queries = torch.cat([queries, self.presence_queries], dim=0)
        out = self.decoder(queries.unsqueeze(0).expand(b, -1, -1), memory)
        n_point_queries = self.num_classes * self.num_points
        raw = self.head(out[:, :n_point_queries]).view(b, self.num_classes, self.num_points, 2)
        presence = self.presence(out[:, n_point_queries:]).squeeze(-1) if self.presence is not None else None
        return self.points(raw), presence


def build_apm(kind: str, feature_dim: int, levels: int, grid: int, num_classes: int, num_points: int,
              image_size: int, size: str = "auto", presence: bool = True) -> nn.Module:
    """An APM of ``kind`` (``resnet`` or ``cross_attention``) and size preset ``size``."""
    preset = APM_SIZES[resolve_apm_size(size, feature_dim)]
    if kind == "resnet":
        return ResNetAPM(feature_dim, levels, num_classes, num_points, image_size, preset, presence)
    if kind == "cross_attention":
        return CrossAttentionAPM(feature_dim, levels, grid, num_classes, num_points, image_size, preset, presence)
    raise ValueError(f"unknown APM kind {kind!r}; use resnet or cross_attention")


def class_priors(boxes_by_class: Sequence[Sequence[Sequence[float]]], image_size: int) -> torch.Tensor:
    """``Kx4`` ``(cx, cy, half_w, half_h)`` from each class's XYXY boxes (model-input px); an empty list gives
    the :func:`centre_priors` row."""
    rows = []
    default = centre_priors(1, image_size)[0]
    for boxes in boxes_by_class:
        if not boxes:
            rows.append(default)
            continue
        b = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
        centre = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], dim=1).mean(0)
        half = torch.stack([(b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2], dim=1).mean(0).clamp(min=1.0)
        rows.append(torch.cat([centre, half]))
    return torch.stack(rows) if rows else torch.zeros((0, 4))
