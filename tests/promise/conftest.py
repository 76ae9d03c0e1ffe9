"""A few CT phantoms prepared at 64 px and a seeded random ``test_micro`` SAM: what the ProMISe tests train on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samadapt.config import PrepareConfig, PromiseConfig, make_config, merge_settings
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.data.prepared import PreparedDataset
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, save_sam


@pytest.fixture(scope="session")
def promise_prepared(tmp_path_factory) -> PreparedDataset:
    """4 phantom cases (train 2, val 1, test 1), 10 axial slices each (all kept), prepared at 64 px."""
    root = tmp_path_factory.mktemp("promise_phantoms")
    source = write_phantom_dataset(root / "raw", n_cases=4, seed=1, size=(10, 64, 64), spacing=(5.0, 5.0, 8.0))
    return prepare_dataset(source, root / "prepared", PrepareConfig(image_size=64, keep_empty_ratio=1.0))


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> PreparedDataset:
    """3 small phantom cases (8 slices each) prepared at 256 px, the packaged ``tiny`` model's frame."""
    root = tmp_path_factory.mktemp("promise_tiny")
    source = write_phantom_dataset(root / "raw", n_cases=3, seed=2, size=(8, 64, 64), spacing=(5.0, 5.0, 8.0))
    return prepare_dataset(source, root / "prepared", PrepareConfig(image_size=256, split=(0.67, 0.33, 0.0)))


@pytest.fixture(scope="session")
def micro_base(tmp_path_factory) -> Path:
    """A seeded random ``test_micro`` SAM checkpoint: the frozen base model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        spec = REGISTRY["test_micro"]
        return save_sam(build_sam(spec), spec, tmp_path_factory.mktemp("promise_base") / "micro.pth")


@pytest.fixture()
def promise_config(promise_prepared, micro_base):
    """``PromiseConfig`` for the micro set: a short schedule, everything else overridable."""

    def make(**overrides) -> PromiseConfig:
        values = dict(data=str(promise_prepared.root), model=str(micro_base),
                      engine=dict(steps=6, batch_size=2, checkpoint_every=2, eval_every=3, warmup_steps=1, lr=3e-3))
        return make_config(PromiseConfig, merge_settings(values, overrides, PromiseConfig))

    return make
