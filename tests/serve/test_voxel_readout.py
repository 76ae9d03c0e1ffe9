"""The readout under the mouse: ``GET /api/volumes/{sid}/voxels/{k}?x=&y=`` gives the raw voxel value (HU for CT)
and its patient position in mm, for the pixel the page shows, whatever the volume's orientation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from fastapi.testclient import TestClient

from samadapt.data.orientation import AXES, slice_flips, take_slice
from samadapt.data.windowing import parse_window
from samadapt.inference.volume_slices import VolumeSlices
from samadapt.io.volume import Geometry, Volume, read_volume, write_volume
from samadapt.serve.app import create_app
from samadapt.serve.sessions import ServeSettings

# Flips every in-plane axis of an axial slice (x runs to patient right, y to anterior), plus an oblique tilt.
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
OBLIQUE = (0.96, -0.28, 0.0, 0.28, 0.96, 0.0, 0.0, 0.0, 1.0)


def _coded(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """int16 voxels whose value names their index: ``value = 100 z + 10 y + x - 1024`` (CT-like, reaches air)."""
    z, y, x = np.indices(shape_zyx)
    return (100 * z + 10 * y + x - 1024).astype(np.int16)


@pytest.mark.parametrize("direction", [FLIPPED, OBLIQUE], ids=["flipped", "oblique"])
@pytest.mark.parametrize("axis", list(AXES))
def test_voxel_index_undoes_the_display_flips(axis, direction):
    array = _coded((4, 5, 6))
    geometry = Geometry((6, 5, 4), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction)
    slices = VolumeSlices.from_volume(Volume(array, geometry), parse_window("abdomen"), axis)
    flips = slice_flips(geometry, axis)
    for index in range(slices.n_slices):
        shown = take_slice(array, axis, index, flips)
        for row, col in itertools.product(range(shown.shape[0]), range(shown.shape[1])):
            assert array[slices.voxel_index(index, row, col)] == shown[row, col]


def test_physical_point_matches_simpleitk():
    geometry = Geometry((6, 5, 4), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), OBLIQUE)
    image = sitk.Image(6, 5, 4, sitk.sitkInt16)
    geometry.apply_to(image)
    for index in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        # the same affine map, evaluated by numpy and by SimpleITK: equal up to float64 rounding (~1e-13 mm)
        assert geometry.physical_point(index) == pytest.approx(image.TransformIndexToPhysicalPoint(index), abs=1e-9)


@pytest.fixture()
def flipped_client(tiny, tmp_path):
    data = tmp_path / "data"
    array = _coded((4, 20, 24))
    write_volume(array, Geometry((24, 20, 4), (0.75, 0.8, 3.0), (-5.0, 12.0, 40.0), FLIPPED), data / "coded.nii.gz")
    app = create_app(tiny, ServeSettings(data_dir=data), allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, data / "coded.nii.gz"


def test_readout_names_the_value_and_position_of_the_pixel_shown(flipped_client):
    client, path = flipped_client
    opened = client.post("/api/volumes", json={"path": "coded.nii.gz"}).json()
    assert opened["modality"] == "CT" and (opened["height"], opened["width"]) == (20, 24)
    volume = read_volume(path)
    image = sitk.ReadImage(str(path))
    k, x, y = 2, 3, 15  # column 3, row 15 of the displayed slice 2
    answer = client.get(f"/api/volumes/{opened['id']}/voxels/{k}", params={"x": x, "y": y})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # FLIPPED runs both in-plane axes the other way, so the page shows them mirrored: row 15 of 20 is array
    # row 4, column 3 of 24 is array column 20
    assert body["index_xyz"] == [20, 4, 2]
    assert body["value"] == int(volume.array[2, 4, 20]) == 100 * 2 + 10 * 4 + 20 - 1024 and body["unit"] == "HU"
    assert body["position_mm"] == pytest.approx(image.TransformIndexToPhysicalPoint((20, 4, 2)), abs=1e-9)
    assert body["value"] == int(np.asarray(take_slice(volume.array, "axial", k, slice_flips(volume.geometry,
                                                                                        "axial")))[y, x])


def test_readout_refuses_pixels_off_the_slice(flipped_client):
    client, _ = flipped_client
    sid = client.post("/api/volumes", json={"path": "coded.nii.gz"}).json()["id"]
    off = client.get(f"/api/volumes/{sid}/voxels/0", params={"x": 24, "y": 0})
    assert off.status_code == 400 and "outside the 24x20 slice" in off.json()["detail"]
    assert client.get(f"/api/volumes/{sid}/voxels/4", params={"x": 0, "y": 0}).status_code == 400
    assert client.get(f"/api/volumes/{sid}/voxels/0", params={"x": -1, "y": 0}).status_code == 422
    assert client.get(f"/api/volumes/{sid}/voxels/0").status_code == 422  # x and y are required
    assert client.get(f"/api/volumes/{'0' * 32}/voxels/0", params={"x": 0, "y": 0}).status_code == 404
