"""Automatic (prompt-free) masks of a ProMISe adapter on one slice: the one rule, for inference and evaluation.

For each class asked for: the APM's points for the class (its fixed labels, the first ``num_positive``
positive), decoded as the adapter was trained (its IPS shift, ``multimask=adapter.multimask``) and output 0
taken (with ``multimask`` the first of SAM's three ambiguity outputs, ProMISe's choice; else the single-mask
output); the mask is where the bilinearly upscaled logits are above 0. A class whose presence probability
is below the presence threshold gets an empty mask (:meth:`AutomaticDecode.absent`; an adapter without a
presence head, or a threshold of None, keeps every mask).

Users: :meth:`samadapt.inference.segmenter.Segmenter.predict_auto` (``samadapt segment --auto``, the web
app; masks in the original frame) and :func:`samadapt.promise.predict.automatic_masks` (validation of
``samadapt adapt``, ``samadapt eval --prompts auto``; masks in the model frame). ``samadapt segment --auto``
then keeps a mask only where its predicted IoU and area reach ``auto.min_score`` / ``auto.min_area``
(:func:`samadapt.inference.volume_segmentation.segment_volume_auto`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from samadapt.errors import ConfigError
from samadapt.models.decoder import Decoder
from samadapt.promise.adapter import PromiseAdapter


@dataclass(frozen=True)
class AutomaticDecode:
    """The decoder's answer for ``K`` classes of one slice (class ``k`` of :attr:`class_indices` in row ``k``).

    - ``low_res``: ``Kx1x4gx4g`` low-res logits (output 0), model-input frame;
    - ``iou``: ``Kx1`` predicted IoU;
    - ``points``: ``KxNx2`` APM points (XY model-input px); ``labels``: ``KxN`` (1 positive, 0 negative);
    - ``presence``: ``K`` presence probabilities, or None without a presence head.
    """

    class_indices: tuple[int, ...]
    low_res: torch.Tensor
    iou: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor
    presence: torch.Tensor | None

    def absent(self, presence_threshold: float | None) -> torch.Tensor:
        """``K`` bool: the classes whose mask the presence rule empties (probability < threshold)."""
        if self.presence is None or presence_threshold is None:
            return torch.zeros(len(self.class_indices), dtype=torch.bool, device=self.low_res.device)
        return self.presence < presence_threshold


def decode_automatic(adapter: PromiseAdapter, decoder: Decoder, embedding: torch.Tensor, features: torch.Tensor,
                     class_indices: Sequence[int] | None = None) -> AutomaticDecode:
    """APM points of the given classes (default: all the adapter's, in its order) on one slice, decoded.

    Args:
        decoder: the adapter's decoder (e.g. ``SamDecoder.for_adapter(sam, adapter)``: its base SAM with
            its IPS shift).
        embedding: ``1xCxgxg`` float image embedding; features: ``1x3xDxgxg`` float encoder features.
        class_indices: 0-based indices into ``adapter.classes``.
    """
    if not adapter.has_apm:
        raise ConfigError("this ProMISe adapter has no auto-prompting module (APM); automatic mode needs one: "
                          "train it with `samadapt adapt --set mode=apm+ips`, or prompt with boxes / points")
    indices = tuple(range(len(adapter.classes))) if class_indices is None else tuple(
        adapter.checked_class_index(int(k)) for k in class_indices)
    points, presence = adapter.predict_points(features)  # 1xKxNx2, 1xK logits or None
    points = points[0, list(indices)]
    labels = adapter.point_labels(len(indices), points.device)
    low_res, iou = decoder(embedding, points=(points, labels), multimask=adapter.multimask)
    probability = None if presence is None else torch.sigmoid(presence[0, list(indices)])
    return AutomaticDecode(indices, low_res[:, :1], iou[:, :1], points, labels, probability)


def class_index(adapter: PromiseAdapter, name: str | int | None) -> int:
    """0-based index of class ``name`` (a name or an index) among ``adapter.classes``; None means the first."""
    classes = [str(c) for c in adapter.classes]
    if name is None:
        return 0
    if isinstance(name, int) and not isinstance(name, bool):
        if 0 <= name < len(classes):
            return name
    elif str(name) in classes:
        return classes.index(str(name))
    raise ConfigError(f"class {name!r} is not one the adapter segments automatically; known: {', '.join(classes)}")
