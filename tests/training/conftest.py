"""A small prepared CT-phantom dataset in the 64 px frame of the ``test_micro`` model, shared by the module."""

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
def micro_prepared(tmp_path_factory) -> PreparedDataset:
    """4 phantom cases (train 2, val 1, test 1), 16 axial slices each, prepared at 64 px."""
    root = tmp_path_factory.mktemp("micro_phantoms")
    source = write_phantom_dataset(root / "raw", n_cases=4, seed=0, size=(16, 64, 64), spacing=(5.0, 5.0, 8.0))
    return prepare_dataset(source, root / "prepared", PrepareConfig(image_size=64))


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """A seeded random ``test_micro`` SAM saved as a checkpoint: the base model fine-tuning starts from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = REGISTRY["test_micro"]
        return save_sam(build_sam(spec), spec, tmp_path_factory.mktemp("base") / "micro.pth")
