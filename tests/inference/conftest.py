"""Shared fixtures of the inference tests: a small CT phantom on disk, the tiny model, micro checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from samadapt.data.phantoms import generate_phantom
from samadapt.inference.model_source import load_model
from samadapt.io.volume import Volume, read_volume, write_volume
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, save_sam

PHANTOM_SIZE = (16, 64, 64)  # Z, Y, X
PHANTOM_SPACING = (6.25, 6.25, 12.0)  # x, y, z mm: the default 400 x 400 x 192 mm field of view
LIVER = (1, 10)  # raw phantom values of the liver region (organ + lesion)


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory) -> tuple[Path, Path]:
    """(image, label) NIfTI files of one CT phantom (16 x 64 x 64 voxels)."""
    root = tmp_path_factory.mktemp("phantom")
    case = generate_phantom(np.random.default_rng([0, 0]), size=PHANTOM_SIZE, spacing=PHANTOM_SPACING)
    image, label = root / "phantom_000_0000.nii.gz", root / "phantom_000_label.nii.gz"
    write_volume(case.image, case.geometry, image)
    write_volume(case.label, case.geometry, label)
    return image, label


@pytest.fixture(scope="session")
def phantom_volume(phantom_files) -> Volume:
    return read_volume(phantom_files[0])


@pytest.fixture(scope="session")
def phantom_labels(phantom_files) -> np.ndarray:
    """``(Z, Y, X)`` raw label values of the phantom."""
    return read_volume(phantom_files[1]).array


@pytest.fixture(scope="session")
def two_discs() -> np.ndarray:
    """A 100 x 150 grey image (non-square: the model frame pads rows) with two bright discs, so that masks are
    neither trivially empty nor full."""
    yy, xx = np.mgrid[:100, :150]
    picture = np.full((100, 150), 40, np.uint8)
    picture[(yy - 40) ** 2 + (xx - 40) ** 2 < 20**2] = 200
    picture[(yy - 60) ** 2 + (xx - 110) ** 2 < 15**2] = 150
    return picture


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """A ``samadapt train``-like run folder holding a random ``test_micro`` model.pth + model.json."""
    spec = REGISTRY["test_micro"]
    root = tmp_path_factory.mktemp("micro_run")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_sam(build_sam(spec), spec, root / "model.pth", {"data": {"classes": ["liver", "spleen"]}})
    return root


@pytest.fixture(scope="session")
def liver_mask(phantom_labels) -> np.ndarray:
    """``(Z, Y, X)`` bool: the phantom's liver region (organ and lesions)."""
    return np.isin(phantom_labels, LIVER)


@pytest.fixture(scope="session")
def voxel_box():
    """``voxel_box(mask)``: the ``[x0, y0, z0, x1, y1, z1]`` voxel-index corners of a ``(Z, Y, X)`` mask."""

    def corners(mask: np.ndarray) -> list[int]:
        z, y, x = np.nonzero(mask)
        return [int(x.min()), int(y.min()), int(z.min()), int(x.max()), int(y.max()), int(z.max())]

    return corners


def _write_adapter_run(root: Path, checkpoint: Path, loaded, has_apm: bool) -> Path:
    """An untrained ProMISe adapter (classes liver, spleen) of ``loaded`` in ``root``, its IPS shift non-zero."""
    from samadapt.models.sam import sam_digest
    from samadapt.promise import AdapterSpec, PromiseAdapter, save_adapter

    spec = loaded.spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        adapter = PromiseAdapter(AdapterSpec(
            classes=("liver", "spleen"), image_size=spec.image_size, feature_dim=spec.encoder_embed_dim,
            feature_levels=3, grid=spec.embedding_size, transformer_dim=spec.prompt_embed_dim, num_mask_tokens=4,
            has_apm=has_apm, has_ips=True), base_model=str(checkpoint), base_digest=sam_digest(loaded.sam))
        torch.nn.init.normal_(adapter.ips.mlp[2].weight, std=0.5)  # IPS starts at zero shift: make it matter
    save_adapter(adapter, root / "adapter.pt")
    return root


@pytest.fixture(scope="session")
def write_adapter_run():
    """``(root, checkpoint, loaded, has_apm) -> root``: writes an untrained adapter with a non-zero IPS shift."""
    return _write_adapter_run
