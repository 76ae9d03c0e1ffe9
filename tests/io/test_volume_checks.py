"""read_volume / write_volume refuse what ITK would get wrong or die on (issue 19): NaN and infinities in NIfTI
files, which ITK's NIfTI reader turns into 0, and paths that are not UTF-8, which abort the process in ITK."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from samadapt.errors import InputFileError
from samadapt.io.volume import Geometry, check_nifti_finite, read_volume, write_volume

REAL_DICOM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "ct_liver_dicom" / "ct-3slice"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _nifti1(array: np.ndarray, order: str) -> bytes:
    """A minimal single-file NIfTI-1 (``n+1``) of a ``(Z, Y, X)`` float array in byte order ``order``."""
    datatype, bitpix = {np.dtype(np.float32): (16, 32), np.dtype(np.float64): (64, 64)}[array.dtype]
    header = bytearray(348)
    struct.pack_into(order + "i", header, 0, 348)
    struct.pack_into(order + "8h", header, 40, 3, *reversed(array.shape), 1, 1, 1, 1)
    struct.pack_into(order + "hh", header, 70, datatype, bitpix)
    struct.pack_into(order + "8f", header, 76, 1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0)
    struct.pack_into(order + "fff", header, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    header[344:348] = b"n+1\0"
    return bytes(header) + b"\0" * 4 + array.astype(array.dtype.newbyteorder(order)).tobytes()


def _with_bad_voxels(dtype) -> np.ndarray:
    array = np.arange(3 * 4 * 5, dtype=dtype).reshape(3, 4, 5)
    array[0, 0, 0], array[1, 2, 3], array[2, 3, 4] = np.nan, np.inf, -np.inf
    return array


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_nan_and_inf_in_nifti_are_found_in_the_file(tmp_path: Path, dtype, order: str, gzipped: bool):
    data = _nifti1(_with_bad_voxels(dtype), order)
    path = tmp_path / ("bad.nii.gz" if gzipped else "bad.nii")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # what ITK alone makes of it
    for check in (read_volume, check_nifti_finite):
        with pytest.raises(InputFileError) as info:
            check(path)
        assert str(info.value).startswith(f"{path}: contains 3 NaN or infinite voxels")
        assert "\n" not in str(info.value) and "fix or mask" in str(info.value)


def test_finite_float_and_integer_nifti_read_as_before(tmp_path: Path):
    finite = np.arange(60, dtype=np.float32).reshape(3, 4, 5) - 30.5
    (tmp_path / "be.nii").write_bytes(_nifti1(finite, ">"))
    np.testing.assert_array_equal(read_volume(tmp_path / "be.nii").array, finite)
    check_nifti_finite(tmp_path / "be.nii")
    geometry = Geometry((5, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    ints = write_volume(finite.astype(np.int16), geometry, tmp_path / "ints.nii.gz")
    np.testing.assert_array_equal(read_volume(ints).array, finite.astype(np.int16))
    nrrd = write_volume(_with_bad_voxels(np.float32), geometry, tmp_path / "keeps.nrrd")  # NRRD keeps them
    assert np.isnan(read_volume(nrrd).array).sum() == 1
    check_nifti_finite(nrrd)  # only NIfTI needs the check


def _bad_name(folder: Path, name: bytes) -> Path:
    path = os.path.join(os.fsencode(folder), name)
    try:
        with open(path, "wb"):
            pass
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    os.remove(path)
    return Path(os.fsdecode(path))


def test_paths_that_are_not_utf8_are_refused_before_itk(tmp_path: Path):
    geometry = Geometry((5, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    good = write_volume(np.zeros((3, 4, 5), np.int16), geometry, tmp_path / "good.mha")
    bad = _bad_name(tmp_path, b"caf\xe9.mha")  # Latin-1, not UTF-8
    shutil.copy(good, bad)
    with pytest.raises(InputFileError, match=r"caf\\xe9\.mha: the path holds bytes that are not UTF-8"):
        read_volume(bad)
    with pytest.raises(InputFileError, match="not UTF-8"):
        write_volume(np.zeros((3, 4, 5), np.int16), geometry, tmp_path / "out\udcff.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.mha", bad.name])  # nothing written


@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason="shared/data/real/ct_liver_dicom is not here")
def test_dicom_folder_with_a_file_name_that_is_not_utf8(tmp_path: Path):
    series = tmp_path / "series"
    shutil.copytree(REAL_DICOM, series)
    renamed = _bad_name(series, b"0\xff3.dcm")
    os.rename(series / "03.dcm", renamed)
    with pytest.raises(InputFileError, match=r"0\\xff3\.dcm: the path holds bytes that are not UTF-8"):
        read_volume(series)


def test_a_path_that_is_not_utf8_does_not_abort_the_process(tmp_path: Path):
    """ITK aborts the interpreter (SIGABRT) on such a path: run the read in a child process to prove it no longer
    gets there."""
    geometry = Geometry((5, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    bad = _bad_name(tmp_path, b"x\xfe.nii.gz")
    shutil.copy(write_volume(np.zeros((3, 4, 5), np.int16), geometry, tmp_path / "good.nii.gz"), bad)
    code = ("import sys\nfrom samadapt.errors import InputFileError\nfrom samadapt.io.volume import read_volume\n"
            "try:\n    read_volume(sys.argv[1])\nexcept InputFileError:\n    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code, bad], capture_output=True, timeout=120)
    assert done.returncode == 3, done.stderr
