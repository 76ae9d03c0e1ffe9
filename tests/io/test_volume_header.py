"""The one header-only geometry reader (``read_header_geometry``): the geometry ``read_volume`` reports, without
reading voxels, on real volumes and written ones; None where a header cannot tell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samadapt.io.volume import Geometry, is_volume_path, read_geometry, read_header_geometry, read_volume, write_volume

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # x and y swapped, one of them reversed


def _real_files() -> list[Path]:
    if not REAL.is_dir():
        return []
    return sorted(p for p in REAL.rglob("*") if p.is_file() and is_volume_path(p) and not p.suffix == ".dcm")


@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_real_headers_give_the_geometry_of_the_read_volume(path: Path) -> None:
    assert read_header_geometry(path) == read_volume(path).geometry


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_written_oblique_volume_reads_back_from_its_header(tmp_path: Path, suffix: str) -> None:
    geometry = Geometry((5, 4, 3), (0.7, 0.9, 2.5), (-10.0, 20.5, 3.0), OBLIQUE)
    path = write_volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), geometry, tmp_path / f"v{suffix}")
    header = read_header_geometry(path)
    assert header == read_volume(path).geometry
    assert header.size == (5, 4, 3) and header.direction == pytest.approx(OBLIQUE)
    assert header.spacing == pytest.approx((0.7, 0.9, 2.5)) and header.origin == pytest.approx((-10.0, 20.5, 3.0))


def test_what_a_header_cannot_tell_is_none_and_read_geometry_reads_it(tmp_path: Path) -> None:
    image = tmp_path / "slice.png"
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(image)
    assert read_header_geometry(image) is None  # 2D: read_volume adds the slice axis
    assert read_geometry(image) == read_volume(image).geometry and read_geometry(image).size == (8, 6, 1)
    assert read_header_geometry(tmp_path) is None  # a folder (a DICOM series is read in full)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume")
    assert read_header_geometry(broken) is None  # read_volume reports it with the proper message
