"""ProMISe (arXiv 2403.04164): SAM fully frozen, an auto-prompting module (APM) and incremental pattern
shifting (IPS).

- :mod:`~samadapt.promise.apm`: point prompts per class from the encoder's multi-level features.
- :mod:`~samadapt.promise.ips`: an image-conditioned shift of the decoder's mask tokens.
- :mod:`~samadapt.promise.shifted_decoder`: :func:`decode_with_shift`, SAM's frozen decoder with that shift.
- :mod:`~samadapt.promise.adapter`: :class:`PromiseAdapter` (APM + IPS), its files, :func:`load_adapter`.
- :mod:`~samadapt.promise.adapt`: ``samadapt adapt``, the training (SAM frozen) on the shared engine.
- :mod:`~samadapt.promise.predict`: automatic and prompted masks of one slice.

The contract :mod:`samadapt.inference` relies on: :func:`load_adapter`, :class:`PromiseAdapter`
(``base_model``, ``classes``, ``has_apm``, ``has_ips``, ``auto_points``, ``token_shift``; plus
``multimask`` / ``mask_index`` for decoding, ``presence_probability``) and :func:`decode_with_shift`.
"""

from samadapt.promise.adapter import (
    AdapterSpec,
    PromiseAdapter,
    check_base_model,
    load_adapter,
    load_base_model,
    save_adapter,
)
from samadapt.promise.shifted_decoder import decode_with_shift

__all__ = ["AdapterSpec", "PromiseAdapter", "check_base_model", "decode_with_shift", "load_adapter",
           "load_base_model", "save_adapter"]
