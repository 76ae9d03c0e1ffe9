"""3D volumes with their geometry, read and written through SimpleITK.

Array order is SimpleITK's numpy order, ``(Z, Y, X)``; geometry tuples are in SimpleITK's physical order,
``(x, y, z)``, in millimetres, with ``direction`` the 3x3 cosine matrix flattened row-major.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from samadapt.errors import GeometryMismatchError, InputFileError
from samadapt.io.atomic import atomic_path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Largest relative deviation of a DICOM slice gap from the mean gap that still counts as evenly spaced.
DICOM_SPACING_TOLERANCE = 0.05


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in patient space (SimpleITK conventions, x/y/z order, mm)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of_image(cls, image: sitk.Image | sitk.ImageFileReader) -> Geometry:
        """The geometry of an image, or of a reader holding a file's header (:func:`read_header`)."""
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def apply_to(self, image: sitk.Image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def physical_point(self, index_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        """Patient coordinates (mm, SimpleITK's LPS) of voxel ``index_xyz`` (``(x, y, z)`` index order), as
        SimpleITK's ``TransformContinuousIndexToPhysicalPoint``: ``origin + direction @ (spacing * index)``."""
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        scaled = np.asarray(self.spacing, dtype=np.float64) * np.asarray(index_xyz, dtype=np.float64)
        return tuple(float(v) for v in np.asarray(self.origin, dtype=np.float64) + direction @ scaled)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(tuple(data["size"]), tuple(data["spacing"]), tuple(data["origin"]),
                   tuple(data["direction"]))


@dataclass
class Volume:
    """A voxel array ``(Z, Y, X)`` with its :class:`Geometry`."""

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None


def check_path_encodable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputFileError` when ``path`` holds bytes that are not UTF-8.

    Python keeps such bytes as lone surrogates; SimpleITK / ITK cannot take them and abort the whole process
    (a C++ ``std::logic_error``), so every path is checked here before it reaches ITK. The message shows the
    bad bytes as ``\\xNN``.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
        raise InputFileError(f"{shown}: the path holds bytes that are not UTF-8 (shown as \\xNN), which the image "
                             "reader cannot open; rename the file or folder with UTF-8 characters") from None


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """True for a file with a volume suffix or a folder (taken as a DICOM series)."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES)


def _itk_reason(err: RuntimeError) -> str:
    """The informative line of a SimpleITK exception, without source locations and object addresses."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Exception thrown in SimpleITK", "Reason: "))]
    if not lines:
        return "unreadable"
    reason = re.sub(r"^(sitk::ERROR: |ITK ERROR: \w+\(0x[0-9a-f]+\): )", "", lines[-1])
    return reason[:160]


def _dicom_files_left_out(folder: Path, series_id: str, used: list[str]) -> None:
    """Raise when a file of ``series_id`` sits in ``folder`` but GDCM skipped it (truncated or corrupt).

    GDCM silently drops files it cannot parse from a series, which would give a volume with slices
    missing. Files of other kinds (DICOMDIR, text, other series) are ignored.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pydicom ships with the core install
        return
    used_names = {Path(name).resolve() for name in used}
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.name.startswith(".") or file.resolve() in used_names:
            continue
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError):
            continue
        if str(header.get("SeriesInstanceUID", "")) == series_id:
            raise InputFileError(f"{file}: belongs to the DICOM series in {folder} but cannot be read "
                                 "(truncated or corrupt); replace it or remove it from the folder")


def _read_dicom_series(folder: Path) -> sitk.Image:
    for entry in folder.iterdir():  # GDCM lists every file of the folder: no name may abort ITK
        check_path_encodable(entry)
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputFileError(f"{folder}: no DICOM series found in this folder; "
                             "point to a folder of .dcm files")
    if len(series) > 1:
        raise InputFileError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
            "put each series in its own folder"
        )
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    _dicom_files_left_out(folder, series[0], files)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_even_slices(folder, reader, image, len(files))
    return image


def _check_even_slices(folder: Path, reader: sitk.ImageSeriesReader, image: sitk.Image, n_files: int) -> None:
    """Raise when the slice positions (DICOM 0020|0032 along the slice normal) are not evenly spaced.

    ITK only warns on stderr and spreads the slices over the mean gap, which would misplace every slice
    after a missing one.
    """
    if image.GetDimension() != 3 or image.GetSize()[2] < 3 or image.GetSize()[2] != n_files:
        return
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                              for i in range(n_files)])
    except (RuntimeError, ValueError):
        return
    if positions.shape != (n_files, 3):
        return
    gaps = np.abs(np.diff(positions @ normal))
    step = float(image.GetSpacing()[2])
    worst = float(np.abs(gaps - step).max())
    if worst > DICOM_SPACING_TOLERANCE * step:
        raise InputFileError(
            f"{folder}: slices are not evenly spaced (gaps {gaps.min():.4g} to {gaps.max():.4g} mm; missing "
            "slices?); complete the series or resample it first"
        )


def _nifti_voxel_bytes(reader: sitk.ImageFileReader) -> tuple[int, int] | None:
    """``(vox_offset, voxel bytes)`` from a NIfTI header read by ``reader``; None when not NIfTI."""
    try:
        ndim = int(reader.GetMetaData("dim[0]"))
        dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, ndim + 1)]
        bitpix = int(reader.GetMetaData("bitpix"))
        offset = int(float(reader.GetMetaData("vox_offset")))
    except (RuntimeError, ValueError):
        return None
    return offset, int(np.prod(dims, dtype=np.int64)) * bitpix // 8


def _gunzipped_size(path: Path) -> tuple[int, bool]:
    """Decompress ``path`` as a stream, keeping nothing: ``(bytes out, whether the last member ended)``."""
    got, complete = 0, False
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            while chunk:
                got += len(decompressor.decompress(chunk))
                complete = decompressor.eof
                if not complete:
                    break
                chunk = decompressor.unused_data  # a further gzip member, if any
                if not chunk.strip(b"\0"):
                    break
                decompressor = zlib.decompressobj(wbits=31)
    return got, complete


def _check_nifti_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """Raise :class:`InputFileError` when a NIfTI file holds fewer bytes than its header promises.

    ITK fills the missing part of a truncated ``.nii`` / ``.nii.gz`` with zeros without any error, so
    this is checked here: the file size when uncompressed; when gzipped, the gzip trailer (4 bytes, the
    usual single-member case) or, where that disagrees, a streaming decompression count.
    """
    layout = _nifti_voxel_bytes(reader)
    if layout is None:
        return
    expected = layout[0] + layout[1]
    size = path.stat().st_size
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        if gzipped and size >= 18:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return
    got, complete = size, True
    if gzipped:
        try:
            got, complete = _gunzipped_size(path)
        except zlib.error as err:
            raise InputFileError(f"{path}: is corrupt ({err}); re-copy or re-export the file") from None
    if got < expected or not complete:
        raise InputFileError(f"{path}: is truncated ({got} of {expected} bytes); "
                             "re-copy or re-export the file")


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy type (no endianness)


def _count_nifti_nonfinite(path: Path, reader: sitk.ImageFileReader) -> int:
    """NaN and infinite values in the data block of a float NIfTI file, read from the file itself.

    ITK's NIfTI reader turns them into 0 (a ``.mha`` or ``.nrrd`` keeps them), so they cannot be seen in the
    image it returns. Only float data can hold them: 0 for any other datatype, and for a header ITK does not
    describe. The byte order comes from the header's ``sizeof_hdr`` (348 or 540).
    """
    try:
        datatype = int(reader.GetMetaData("datatype"))
    except (RuntimeError, ValueError):
        return 0
    layout = _nifti_voxel_bytes(reader)
    if datatype not in _NIFTI_FLOAT_TYPES or layout is None:
        return 0
    offset, remaining = layout
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
        order = "<" if int.from_bytes(f.read(4), "little") in (348, 540) else ">"
        dtype = np.dtype(order + _NIFTI_FLOAT_TYPES[datatype])
        f.seek(offset)
        chunk = (1 << 24) // dtype.itemsize * dtype.itemsize
        bad, carry = 0, b""
        while remaining > 0:
            data = f.read(min(chunk, remaining))
            if not data:
                break
            remaining -= len(data)
            data = carry + data
            usable = len(data) - len(data) % dtype.itemsize
            values = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            carry = data[usable:]
    return bad


def _check_nifti_finite(path: Path, reader: sitk.ImageFileReader) -> None:
    nonfinite = _count_nifti_nonfinite(path, reader)
    if nonfinite:
        raise InputFileError(f"{path}: contains {nonfinite} NaN or infinite voxels (a NIfTI reader reads them "
                             "as 0); fix or mask them first")


def read_header(path: str | os.PathLike[str]) -> sitk.ImageFileReader | None:
    """A reader holding the header of the file ``path`` (no voxel is read), or None for a folder or a file whose
    header ITK cannot read (:func:`read_volume` reports those with the proper message)."""
    path = Path(path)
    if not path.is_file():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def read_header_geometry(path: str | os.PathLike[str]) -> Geometry | None:
    """The geometry :func:`read_volume` would return for ``path``, from the file's header alone (no voxel is
    read); None where the header cannot tell: a folder (DICOM series), a 2D image (``read_volume`` adds the
    slice axis) or a file whose header ITK cannot read."""
    path = Path(path)
    check_path_encodable(path)
    reader = read_header(path)
    if reader is None or reader.GetDimension() != 3:
        return None
    return Geometry.of_image(reader)


def read_geometry(path: str | os.PathLike[str]) -> Geometry:
    """A volume's geometry: from its header when that tells (:func:`read_header_geometry`), else by reading
    the volume (DICOM folders and 2D files)."""
    return read_header_geometry(path) or read_volume(path).geometry


def check_nifti_finite(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputFileError` when the NIfTI file ``path`` holds NaN or infinite voxels (as
    :func:`read_volume` does), without reading the volume; other files and unreadable headers pass (reading
    them reports those)."""
    path = Path(path)
    check_path_encodable(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    reader = read_header(path)
    if reader is None:
        return
    try:
        _check_nifti_complete(path, reader)  # a truncated file is reported as such, not as a failed scan
        _check_nifti_finite(path, reader)
    except RuntimeError:
        return
    except (OSError, EOFError, zlib.error) as err:
        raise InputFileError(f"{path}: cannot be read ({err}); re-copy or re-export the file") from None


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI / NRRD / MHA / MHD file or a DICOM series folder.

    Returns the voxel array in ``(Z, Y, X)`` order and the exact source geometry. 2D files are returned
    as a single-slice volume. Raises :class:`InputFileError` naming the file when it is missing, of an
    unknown format, unreadable or truncated, when its path is not UTF-8 (which would abort ITK), when a
    NIfTI file holds NaN or infinite voxels (ITK's NIfTI reader would silently read them as 0), and naming
    the folder when a DICOM series has unreadable or unevenly spaced slices.
    """
    path = Path(path)
    check_path_encodable(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file or folder; check the path")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if path.name.lower().endswith((".nii", ".nii.gz")):
                _check_nifti_complete(path, reader)
                _check_nifti_finite(path, reader)
            image = reader.Execute()
    except RuntimeError as err:
        raise InputFileError(f"{path}: cannot be read as a medical image ({_itk_reason(err)}); "
                             "check the file is complete") from None
    except (OSError, EOFError, zlib.error) as err:
        raise InputFileError(f"{path}: cannot be read ({err}); re-copy or re-export the file") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "samadapt reads scalar volumes only")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputFileError(f"{path}: is {image.GetDimension()}D; samadapt reads 2D or 3D images")
    return Volume(sitk.GetArrayFromImage(image), Geometry.of_image(image), path)


def write_volume(array: np.ndarray, geometry: Geometry, path: str | os.PathLike[str],
                 compress: bool = True) -> Path:
    """Write ``array`` ``(Z, Y, X)`` with ``geometry`` to ``path`` atomically (format from the suffix).

    The grid must match ``geometry.size`` (reversed); the written file carries the geometry exactly.
    """
    path = Path(path)
    check_path_encodable(path)
    expected = tuple(reversed(geometry.size))
    if tuple(array.shape) != expected:
        raise GeometryMismatchError(
            f"{path}: array shape {tuple(array.shape)} (Z, Y, X) does not match the reference grid {expected}"
        )
    if not path.name.lower().endswith(VOLUME_SUFFIXES):
        raise InputFileError(f"{path}: unknown volume format; name the output with one of "
                             f"{', '.join(VOLUME_SUFFIXES)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to(image)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
    except RuntimeError as err:
        raise InputFileError(f"{path}: cannot be written ({_itk_reason(err)}); check the folder is writable "
                             "and has space") from None
    except OSError as err:
        raise InputFileError(f"{path}: cannot be written ({err.strerror or err}); "
                             "check the folder is writable and has space") from None
    return path


def check_same_grid(image: Volume, label: Volume, atol: float = 1e-3) -> None:
    """Raise :class:`GeometryMismatchError` unless ``label`` lies on ``image``'s voxel grid."""
    a, b = image.geometry, label.geometry
    name = f"{label.path or 'label'}"
    if a.size != b.size:
        raise GeometryMismatchError(f"{name}: size {b.size} differs from its image's {a.size} "
                                    f"({image.path}); resample the label onto the image grid")
    for what, x, y in (("spacing", a.spacing, b.spacing), ("origin", a.origin, b.origin),
                       ("direction", a.direction, b.direction)):
        if not np.allclose(x, y, atol=atol, rtol=1e-4):
            raise GeometryMismatchError(
                f"{name}: {what} {tuple(round(v, 4) for v in y)} differs from its image's "
                f"{tuple(round(v, 4) for v in x)} ({image.path}); resample the label onto the image grid"
            )
