"""Automatic segmentation through a ProMISe adapter (APM points, IPS token shift) on its frozen SAM.

:mod:`samadapt.promise` is imported only when an adapter is asked for, so that prompted inference works
without it. What is used of it (see :mod:`samadapt.promise.adapter`): :func:`load_adapter`,
:func:`load_base_model` / :func:`check_base_model` (an adapter fits the one SAM whose weights it was
trained on), and of a ``PromiseAdapter``: ``classes`` (0-based class index), ``has_apm``, ``has_ips``,
``auto_points(features 1x3xDxgxg, k) -> (points 1xNx2 model-input px, labels 1xN)``,
``token_shift(embedding 1xCxgxg) -> 1xTxC or None``, ``presence_probability(features, k) -> 1 or None``,
``multimask`` / ``mask_index`` (how it decodes); and :func:`decode_with_shift`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from samadapt.errors import ConfigError
from samadapt.models.sam import LoadedModel


def _promise() -> Any:
    try:
        import samadapt.promise as promise
    except ImportError:
        raise ConfigError("ProMISe adapters need samadapt.promise, which this install lacks; "
                          "use box or point prompts instead") from None
    return promise


def load_promise_adapter(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """``samadapt.promise.load_adapter(path, device)`` (a ``samadapt adapt`` run folder or its adapter file)."""
    return _promise().load_adapter(path, device)


def adapter_base_model(adapter: Any, device: str | torch.device = "cpu") -> LoadedModel:
    """The frozen SAM ``adapter`` was trained on, loaded on ``device`` and checked to be the very weights."""
    return _promise().load_base_model(adapter, device)


def check_adapter_fits(adapter: Any, loaded: LoadedModel) -> None:
    """:class:`~samadapt.errors.CheckpointError` unless ``loaded`` is the SAM ``adapter`` was trained on."""
    _promise().check_base_model(adapter, loaded)


def class_index(adapter: Any, name: str | int | None) -> int:
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


def shifted_decode(adapter: Any, sam: Any, embedding: torch.Tensor,
                   **prompts: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~samadapt.inference.decode.decode` with the adapter's IPS shift (plain decode without IPS)."""
    shift = adapter.token_shift(embedding) if adapter is not None and adapter.has_ips else None
    return _promise().decode_with_shift(sam, embedding, shift, **prompts)


@torch.inference_mode()
def auto_decode(adapter: Any, sam: Any, embedding: torch.Tensor, features: torch.Tensor, index: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """APM points for class ``index`` on one slice, decoded (with the IPS shift) as the adapter was trained.

    Args:
        embedding: ``1xCxgxg`` float image embedding; features: ``1x3xDxgxg`` float encoder features.
    Returns:
        low-res logits ``1x1x4gx4g`` (the adapter's mask output), IoU prediction ``1x1``, points ``1xNx2``
        (model-input px), labels ``1xN``, and the presence probability ``1`` (None without a presence head).
    """
    if not adapter.has_apm:
        raise ConfigError("this ProMISe adapter has no auto-prompting module (APM); automatic mode needs one: "
                          "train it with `samadapt adapt --set mode=apm+ips`, or prompt with boxes / points")
    points, labels = adapter.auto_points(features, index)
    low_res, iou = shifted_decode(adapter, sam, embedding, points=(points, labels), multimask=adapter.multimask)
    k = adapter.mask_index
    presence = adapter.presence_probability(features, index)
    return low_res[:, k : k + 1], iou[:, k : k + 1], points, labels, presence
