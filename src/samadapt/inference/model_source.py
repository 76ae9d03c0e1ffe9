"""Where a model for inference comes from: a registry name, a SAM-format ``.pth``, or a run folder.

A run folder is what ``samadapt train`` (or ``samadapt pretrain``) writes: it holds ``model.pth`` and its
``model.json`` sidecar. A folder whose run has not finished (``best.pth`` only) is refused with a message
naming the checkpoint to pass instead, so that an unfinished run is never used by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from samadapt.errors import CheckpointError
from samadapt.models.sam import LoadedModel, load_sam

RUN_MODEL_FILE = "model.pth"


def resolve_model_argument(model: str | os.PathLike[str]) -> str:
    """A registry name or checkpoint path for :func:`~samadapt.models.sam.load_sam`; run folders -> their model.

    Raises :class:`CheckpointError` for a folder without ``model.pth``.
    """
    path = Path(model).expanduser()
    if not path.is_dir():
        return str(model)
    checkpoint = path / RUN_MODEL_FILE
    if checkpoint.is_file():
        return str(checkpoint)
    hint = f"pass {path / 'best.pth'} to use its best checkpoint" if (path / "best.pth").is_file() else (
        "pass a run folder written by `samadapt train`, a .pth file or a registry name")
    raise CheckpointError(f"{path}: run folder holds no {RUN_MODEL_FILE} (unfinished run?); {hint}")


def load_model(model: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Load a SAM model for inference from a registry name, a ``.pth`` file or a run folder (eval mode)."""
    return load_sam(resolve_model_argument(model), device=device)


def model_classes(loaded: LoadedModel) -> list[str]:
    """The class names a fine-tuned model's sidecar records (``data.classes``), or ``[]``."""
    data = loaded.sidecar.get("data") if isinstance(loaded.sidecar, dict) else None
    classes = data.get("classes") if isinstance(data, dict) else None
    return [str(c) for c in classes] if isinstance(classes, list) else []
