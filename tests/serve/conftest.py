"""Fixtures of the web-app tests: a data folder holding one CT phantom, a secret file beside it, the app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samadapt.data.phantoms import generate_phantom
from samadapt.inference.model_source import load_model
from samadapt.io.volume import write_volume

VOLUME = "ct/phantom_007.nii.gz"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """``data/ct/phantom_007.nii.gz`` (16 x 64 x 64 CT phantom) and ``data/ct/liver_mask.npy``; outside the
    folder, ``secret.nii.gz``, reachable from inside only through the link ``data/ct/escape.nii.gz``. Copies of
    the phantom the listing hides: ``data/.hidden.nii.gz``, ``data/.cache/phantom.nii.gz`` and, through the
    folder link ``data/linked`` (to ``data/ct``), ``data/linked/phantom_007.nii.gz``."""
    root = tmp_path_factory.mktemp("serve")
    case = generate_phantom(np.random.default_rng([0, 7]), size=(16, 64, 64), spacing=(6.25, 6.25, 12.0))
    data = root / "data"
    write_volume(case.image, case.geometry, data / VOLUME)
    np.save(data / "ct" / "liver_mask.npy", np.isin(case.label, (1, 10)))
    write_volume(case.label, case.geometry, root / "secret.nii.gz")
    (data / "ct" / "escape.nii.gz").symlink_to(root / "secret.nii.gz")
    write_volume(case.image, case.geometry, data / ".hidden.nii.gz")
    write_volume(case.image, case.geometry, data / ".cache" / "phantom.nii.gz")
    (data / "linked").symlink_to(data / "ct", target_is_directory=True)
    return data


@pytest.fixture(scope="session")
def volume_name() -> str:
    """The phantom's path relative to the data folder."""
    return VOLUME


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny")
