"""Shared fixtures of the evaluation tests: a few small CT phantoms prepared at 64 px, two micro models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samadapt.config import PrepareConfig
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.data.prepared import PreparedDataset
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, save_sam


@pytest.fixture(scope="session")
def phantom_prepared(tmp_path_factory) -> PreparedDataset:
    """3 phantom cases (one per split), 8 slices each, non-square so that ``valid_hw`` crops columns."""
    root = tmp_path_factory.mktemp("phantoms")
    source = write_phantom_dataset(root / "raw", n_cases=3, seed=0, size=(8, 40, 36), spacing=(10.0, 10.0, 15.0))
    return prepare_dataset(source, root / "prepared", PrepareConfig(image_size=64))


@pytest.fixture(scope="session")
def micro_models(tmp_path_factory) -> list[Path]:
    """Two random ``test_micro`` checkpoints: ``runs/a/model.pth`` and ``runs/b/model.pth``."""
    root = tmp_path_factory.mktemp("runs")
    spec = REGISTRY["test_micro"]
    paths = []
    for seed, name in enumerate(("a", "b")):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            paths.append(save_sam(build_sam(spec), spec, root / name / "model.pth"))
    return paths

