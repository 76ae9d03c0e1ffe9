"""Error prediction: a light head that says where SAM's current mask is wrong, from the decoder's outputs.

**Design.** The decoder already knows roughly where it is unsure: near its decision boundary (small
``|logit|``). The head starts from exactly that and learns the rest:

``error_logit = a - b |logit| + upsample(body(features))``, in the model-input frame, where ``logit`` is the
current mask's logit upsampled (bilinear) from the low-res grid, ``a = 0`` and ``b = 1`` at the start (error
probability 1/2 on the boundary, falling off as the decoder grows sure) and learnable, and the body is a
small CNN on the decoder's low-res grid (``4g x 4g``: 64 x 64 for ``tiny``) whose last layer starts near
zero. Its features, all detached from SAM (the head never changes SAM's weights):

- the current low-res logits (clamped to +-20, scaled by 1/10), their sigmoid, and the decoder's doubt
  ``1 - |2 sigmoid - 1|``;
- the decoder's predicted IoU ``N``, broadcast to a plane: its own estimate of how good the mask is;
- the image embedding ``1xCxgxg``, reduced to ``embedding_channels`` (8) by a 1x1 convolution and upsampled
  bilinearly: what the image looks like there.

Body: conv3x3 (-> ``hidden``, 16) + GELU, conv3x3 with dilation 2 + GELU, conv1x1 -> 1; about 5k parameters
for ``tiny``. The first convolution is linear, so its response to the image channels, the same for every
mask and round of a slice, is computed once per slice (:meth:`ErrorHead.image_features`). A fresh head
trained at the decoder's fine-tuning rate barely moves in a short run, so its weights learn ``lr_gain`` (10)
times faster (:class:`_ScaledConv2d`), inside the shared engine's one optimiser.

**Training target** (in :mod:`samadapt.training.phpg`): the true error of the thresholded mask in the
model-input frame, ``(upscaled logits > 0) xor truth``; loss: binary cross-entropy per pixel.

**Use.** During PHPG training it guides where correction clicks are drawn
(:mod:`samadapt.prompts.corrections`); at inference :func:`suggest_next_clicks` turns it into GT-free
refinement suggestions. Saved as ``error_head.pth`` (a plain state dict) with an ``error_head.json``
sidecar holding its shape, next to the fine-tuned ``model.pth``, which stays a plain SAM state dict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from samadapt.errors import CheckpointError
from samadapt.io.atomic import atomic_path, write_json_atomic
from samadapt.models.decoder import upscale_logits
from samadapt.prompts.corrections import suggested_clicks

ERROR_HEAD_FILE = "error_head.pth"


class _ScaledConv2d(nn.Conv2d):
    """A convolution whose weights are stored divided by ``gain`` and multiplied back in the forward pass.

    With Adam the stored weights move by about ``lr`` per step, so the effective ones move ``gain`` times
    faster: a fresh head learns at ``gain x lr`` while SAM's decoder keeps the run's ``lr``, without a second
    optimiser or parameter group in the shared engine (Karras et al.'s equalised learning rate, as a plain
    multiplier).
    """

    def __init__(self, *args, gain: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = gain
        with torch.no_grad():
            self.weight.div_(gain)
            self.bias.div_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.gain, self.bias * self.gain)


def _to_frame(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """``Nx4gx4g`` -> ``NxSxS`` bilinear (:func:`upscale_logits`); the tensor itself where the grid already is
    the frame (LiteMedSAM: 256 = 256), as the resampling would be an exact copy."""
    return low_res if low_res.shape[-2:] == (size, size) else upscale_logits(low_res, size)


class ErrorHead(nn.Module):
    """Per-pixel error logits of N masks from their decoder outputs (see the module docstring).

    Args:
        embed_dim: channels ``C`` of the image embedding (``spec.prompt_embed_dim``: 128 for tiny, 256 for SAM).
        hidden: width of the convolutional body.
        embedding_channels: channels the embedding is reduced to.
        lr_gain: how much faster than the run's learning rate the head's weights move (:class:`_ScaledConv2d`).
    """

    def __init__(self, embed_dim: int, hidden: int = 16, embedding_channels: int = 8, lr_gain: float = 10.0):
        super().__init__()
        self.embed_dim, self.hidden, self.embedding_channels = embed_dim, hidden, embedding_channels
        self.lr_gain = lr_gain
        self.reduce = _ScaledConv2d(embed_dim, embedding_channels, 1, gain=lr_gain)
        self.body = nn.Sequential(
            _ScaledConv2d(embedding_channels + 4, hidden, 3, padding=1, gain=lr_gain), nn.GELU(),
            _ScaledConv2d(hidden, hidden, 3, padding=2, dilation=2, gain=lr_gain), nn.GELU(),
            _ScaledConv2d(hidden, 1, 1, gain=lr_gain),
        )
        # the boundary term a - b |logit| at full resolution, starting at logit(p) = -|logit|: p = 1/2 on the
        # decoder's decision boundary, falling off as the decoder grows sure
        self.boundary = nn.Parameter(torch.tensor([0.0, 1.0 / lr_gain]))
        with torch.no_grad():
            self.body[-1].weight.mul_(0.1)
            self.body[-1].bias.zero_()

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "hidden": self.hidden, "embedding_channels": self.embedding_channels,
                "lr_gain": self.lr_gain}

    def image_features(self, embedding: torch.Tensor, grid: int) -> torch.Tensor:
        """``1 x hidden x grid x grid``: the first body layer's response to the image part of the features (the
        embedding ``1xCxgxg`` reduced, upsampled to the low-res grid, convolved with that layer's image
        channels, plus its bias). It depends on the slice only: compute it once and pass it as ``image`` to
        every :meth:`forward` on that slice (PHPG's rounds).

        The first layer is linear, so its output on ``[image, per-mask features]`` is the sum of its outputs
        on each part (zero padding included): the image part, the same for every mask and round, is convolved
        once instead of once per mask and round, and its gradient flows through one image, not N."""
        first = self.body[0]
        reduced = F.interpolate(self.reduce(embedding.detach().float()), (grid, grid), mode="bilinear",
                                align_corners=False)
        weight = first.weight[:, : self.embedding_channels] * first.gain
        return F.conv2d(reduced, weight, first.bias * first.gain, padding=first.padding, dilation=first.dilation)

    def forward(
        self, low_res_logits: torch.Tensor, iou_pred: torch.Tensor, embedding: torch.Tensor, image_size: int,
        image: torch.Tensor | None = None, upscaled_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Error logits ``NxSxS`` in the model-input frame.

        Args:
            low_res_logits: ``Nx4gx4g`` (or ``Nx1x4gx4g``) current mask logits.
            iou_pred: ``N`` predicted IoU of those masks.
            embedding: ``1xCxgxg`` image embedding of the slice.
            image_size: side ``S`` of the frame of the output (the model-input frame).
            image: :meth:`image_features` of ``embedding`` on the low-res grid, if already computed (the same
                for every round on one slice); None computes it here.
            upscaled_logits: ``NxSxS`` the same logits already upscaled to ``S`` (bilinear), if the caller has
                them; None upscales here.
        """
        logits = low_res_logits.detach().float()
        logits = logits if logits.dim() == 4 else logits[:, None]
        n, _, h, w = logits.shape
        if image is None:
            image = self.image_features(embedding, h)
        iou_plane = iou_pred.detach().float().reshape(n, 1, 1, 1).expand(n, 1, h, w)
        probability = logits.sigmoid()
        doubt = 1 - (2 * probability - 1).abs()  # 1 on the decoder's decision boundary, 0 where it is sure
        per_mask = torch.cat([logits.clamp(-20, 20) / 10, probability, doubt, iou_plane], dim=1)
        # channels-last: oneDNN's CPU convolutions run faster on it; the values are the same up to rounding
        per_mask = per_mask.contiguous(memory_format=torch.channels_last)
        first = self.body[0]
        weight = first.weight[:, self.embedding_channels :] * first.gain
        hidden = image + F.conv2d(per_mask, weight, None, padding=first.padding, dilation=first.dilation)
        residual = _to_frame(self.body[1:](hidden)[:, 0], image_size)
        offset, slope = self.boundary * self.lr_gain
        if upscaled_logits is None:
            upscaled_logits = _to_frame(logits[:, 0], image_size)
        distance = upscaled_logits.detach().float().clamp(-20, 20).abs()
        return residual + offset - slope * distance


def error_probability(
    head: ErrorHead, low_res_logits: torch.Tensor, iou_pred: torch.Tensor, embedding: torch.Tensor, image_size: int
) -> torch.Tensor:
    """``NxSxS`` probability, in the model-input frame, that each pixel of the current mask is wrong."""
    return head(low_res_logits, iou_pred, embedding, image_size).sigmoid()


def true_error(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The head's training target: ``(logits > 0) xor truth`` (both ``NxSxS``, model frame) as float."""
    return ((logits > 0) ^ truth.bool()).float()


def error_head_loss(error_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per mask: ``NxSxS`` logits and targets -> ``N``."""
    return F.binary_cross_entropy_with_logits(error_logits, target, reduction="none").flatten(1).mean(1)


@torch.no_grad()
def suggest_next_clicks(
    head: ErrorHead, low_res_logits: torch.Tensor, iou_pred: torch.Tensor, embedding: torch.Tensor,
    image_size: int, threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GT-free refinement: where the head says the current masks are wrong, and the click that would fix it.

    Args:
        low_res_logits: ``Nx4gx4g`` current mask logits; ``iou_pred``: ``N``; ``embedding``: ``1xCxgxg``.
        image_size: side ``S`` of the model-input frame.
        threshold: error probability above which a pixel is suspect.
    Returns:
        points ``Nx2`` XY (model-input pixels), labels ``N`` (0 where the click lands inside the current mask:
        a suspected false positive; 1 outside: a suspected miss), and the error probability ``NxSxS``.
    """
    probability = error_probability(head, low_res_logits, iou_pred, embedding, image_size)
    logits = low_res_logits.float()
    current = upscale_logits(logits if logits.dim() == 3 else logits[:, 0], image_size) > 0
    points, labels = suggested_clicks(probability, current, threshold)
    return points, labels, probability


def save_error_head(head: ErrorHead, path: str | os.PathLike[str], info: dict | None = None) -> Path:
    """``path`` (state dict) and its ``.json`` sidecar (the head's shape plus ``info``), atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)
    write_json_atomic(path.with_suffix(".json"), {"kind": "samadapt error head", **head.config(), **(info or {})})
    return path


def load_error_head(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ErrorHead:
    """The head saved by :func:`save_error_head`; :class:`CheckpointError` for a missing or foreign file."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise CheckpointError(f"{path}: no error head here (needs {path.name} and {sidecar.name}); train with "
                              "--set objective=phpg (error head on) to get one")
    try:
        meta = json.loads(sidecar.read_text())
        head = ErrorHead(int(meta["embed_dim"]), int(meta["hidden"]), int(meta["embedding_channels"]),
                         float(meta["lr_gain"]))
        head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch raises several types for corrupt files; the sidecar a few more
        raise CheckpointError(f"{path}: not a samadapt error head ({type(err).__name__}); retrain it or pass the "
                              f"error_head.pth of a PHPG run") from None
    return head.to(device).eval()
