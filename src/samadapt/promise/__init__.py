"""ProMISe (arXiv 2403.04164): SAM fully frozen, an auto-prompting module (APM) and incremental pattern
shifting (IPS).

- :mod:`~samadapt.promise.apm`: point prompts per class from the encoder's multi-level features.
- :mod:`~samadapt.promise.ips`: an image-conditioned shift of the decoder's mask tokens.
- the shift is applied by :class:`samadapt.models.decoder.SamDecoder` (SAM's frozen decoder, tokens shifted).
- :mod:`~samadapt.promise.adapter`: :class:`PromiseAdapter` (APM + IPS), its files, :func:`load_adapter`.
- :mod:`~samadapt.promise.adapt`: ``samadapt adapt``, the training (SAM frozen) on the shared engine.
- :mod:`~samadapt.promise.automatic`: the one rule for automatic masks (APM points, IPS, presence gate).
- :mod:`~samadapt.promise.predict`: automatic and prompted masks of one slice in the model frame.

What :mod:`samadapt.inference` uses: :func:`load_adapter`, :func:`load_base_model`, :func:`check_base_model`,
:class:`PromiseAdapter` (``classes``, ``has_apm``, ``has_ips``, ``token_shift``) and
:mod:`~samadapt.promise.automatic`. This package imports nothing of :mod:`samadapt.inference`.
:func:`decode_with_shift` is kept for code written against earlier versions (deprecated).
"""

import warnings

from samadapt.promise.adapter import (
    AdapterSpec,
    PromiseAdapter,
    check_base_model,
    load_adapter,
    load_base_model,
    save_adapter,
)


def decode_with_shift(sam, embedding, shift, points=None, boxes=None, mask_logits=None, multimask=False):
    """Deprecated: ``SamDecoder(sam, shift)(embedding, points, boxes, mask_logits, multimask)``
    (:class:`samadapt.models.decoder.SamDecoder`)."""
    from samadapt.models.decoder import SamDecoder

    warnings.warn("samadapt.promise.decode_with_shift is deprecated; use "
                  "samadapt.models.decoder.SamDecoder(sam, shift)(embedding, ...)", DeprecationWarning, stacklevel=2)
    return SamDecoder(sam, shift)(embedding, points, boxes, mask_logits, multimask)


__all__ = ["AdapterSpec", "PromiseAdapter", "check_base_model", "decode_with_shift", "load_adapter",
           "load_base_model", "save_adapter"]
