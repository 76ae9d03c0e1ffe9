"""The web app's limits, through the real app: path lookups, hidden files, body size, voxel and byte budgets."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import numpy as np
import pytest
import SimpleITK
from fastapi.testclient import TestClient

from samadapt.errors import InputFileError
from samadapt.io.volume import read_volume, write_volume
from samadapt.serve.app import create_app
from samadapt.serve.decompress import gunzip_within
from samadapt.serve.sessions import HEADER_BYTES, ServeSettings, volume_byte_budget

VOLUME = "ct/phantom_007.nii.gz"  # see conftest.data_dir: 16 x 64 x 64 int16 voxels
VOXELS = 16 * 64 * 64


def _client(tiny, data_dir, **settings) -> TestClient:
    app = create_app(tiny, ServeSettings(data_dir=data_dir, **settings), allowed_hosts=["testserver"])
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture()
def client(tiny, data_dir):
    with _client(tiny, data_dir) as test_client:
        yield test_client


def test_a_path_too_long_for_the_file_system_is_a_400_with_a_message(client, data_dir):
    response = client.post("/api/volumes", json={"path": "a" * 1024})  # one name over NAME_MAX: ENAMETOOLONG
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "name too long" in detail and len(detail) < 250 and str(data_dir) not in detail


@pytest.mark.parametrize("path", [".hidden.nii.gz", ".cache/phantom.nii.gz", "linked/phantom_007.nii.gz",
                                  "ct/liver_mask.npy", "ct"])
def test_what_the_listing_hides_cannot_be_opened_by_name(client, path):
    assert client.get("/api/volumes").json()["volumes"] == [VOLUME]
    response = client.post("/api/volumes", json={"path": path})
    missing = client.post("/api/volumes", json={"path": "ct/none.nii.gz"})
    assert response.status_code == missing.status_code == 404  # told apart from a missing file by nothing
    assert response.json()["detail"] == f"{path}: no such volume in the data folder"
    assert client.post("/api/volumes", json={"path": VOLUME}).status_code == 200


def test_request_bodies_over_the_limit_are_413_and_uploads_keep_their_own_limit(client, data_dir):
    limit = ServeSettings().max_body_bytes
    padded = b'{"path": "' + VOLUME.encode() + b'"' + b" " * limit + b"}"  # valid JSON, padded with blanks
    declared = client.post("/api/volumes", content=padded, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and f"limit of {limit} bytes" in declared.json()["detail"]
    chunks = (padded[i : i + 4096] for i in range(0, len(padded), 4096))  # no Content-Length: counted
    streamed = client.post("/api/volumes", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and f"limit of {limit} bytes" in streamed.json()["detail"]
    assert client.post("/api/volumes", json={"path": VOLUME}).status_code == 200
    upload = (data_dir / VOLUME).read_bytes()
    assert len(upload) > limit  # uploads are counted against max_upload_bytes instead
    assert client.post("/api/uploads?filename=mine.nii.gz", content=upload).status_code == 200


def test_a_chunked_body_is_refused_before_it_is_read_in_full(tiny, data_dir):
    """Drive the app as an ASGI server would: the 413 must come after the chunk that crosses the limit."""
    app = create_app(tiny, ServeSettings(data_dir=data_dir, max_body_bytes=10_000), allowed_hosts=["testserver"])
    chunks = [b'{"path": "ct/phantom_007.nii.gz"'] + [b" " * 4096] * 100 + [b"}"]
    handed, sent = 0, []

    async def receive() -> dict:
        nonlocal handed
        handed += 1
        return {"type": "http.request", "body": chunks[handed - 1], "more_body": handed < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/volumes", "raw_path": b"/api/volumes", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")], "server": ("testserver", 80), "client": ("t", 1)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert handed == 4  # 33 + 3 x 4096 bytes pass 10,000: the other 98 chunks were never asked for


def test_volumes_over_the_voxel_limit_are_413_from_their_header(tiny, data_dir):
    assert ServeSettings().max_voxels == 2**27  # a 512^3 CT; the 190 M-voxel upload is refused
    with _client(tiny, data_dir, max_voxels=VOXELS - 1) as small:
        opened = small.post("/api/volumes", json={"path": VOLUME})
        assert opened.status_code == 413 and f"{VOXELS} voxels exceed" in opened.json()["detail"]
        uploaded = small.post("/api/uploads?filename=mine.nii.gz", content=(data_dir / VOLUME).read_bytes())
        assert uploaded.status_code == 413
        assert not list(small.app.state.upload_dir.iterdir())


def test_voxel_types_wider_than_four_bytes_count_against_the_byte_budget(tiny, data_dir, tmp_path):
    geometry = read_volume(data_dir / VOLUME).geometry
    wide = np.zeros((16, 64, 64), dtype=np.float64)
    payload = write_volume(wide, geometry, tmp_path / "wide.nii.gz").read_bytes()
    with _client(tiny, data_dir, max_voxels=VOXELS) as exact:
        refused = exact.post("/api/uploads?filename=wide.nii.gz", content=payload)
        assert refused.status_code == 413 and f"{8 * VOXELS} bytes of voxels" in refused.json()["detail"]
    with _client(tiny, data_dir, max_voxels=2 * VOXELS) as roomy:
        assert roomy.post("/api/uploads?filename=wide.nii.gz", content=payload).status_code == 200


def test_an_upload_is_decompressed_only_up_to_the_byte_budget(tiny, data_dir):
    payload = (data_dir / VOLUME).read_bytes()
    bomb = payload + gzip.compress(bytes(8 << 20))  # a second gzip member: 8 MiB of zeros in ~8 kB
    assert len(bomb) < len(payload) + 20_000
    with _client(tiny, data_dir, max_voxels=VOXELS) as client:  # budget 4 * VOXELS + 1 MiB header room
        assert volume_byte_budget(VOXELS) + HEADER_BYTES < 8 << 20
        refused = client.post("/api/uploads?filename=bomb.nii.gz", content=bomb)
        assert refused.status_code == 413 and "decompresses to more than" in refused.json()["detail"]
        assert not list(client.app.state.upload_dir.iterdir())  # neither the upload nor a partial output
        volume = client.post("/api/uploads?filename=mine.nii.gz", content=payload).json()
        assert volume["n_slices"] == 16
        kept = list(client.app.state.upload_dir.iterdir())
        assert [p.name.endswith(".nii") for p in kept] == [True]  # the session owns the decompressed file
        client.delete(f"/api/volumes/{volume['id']}")
        assert not list(client.app.state.upload_dir.iterdir())


def test_gunzip_within_reads_what_gzip_reads(tmp_path):
    data = np.random.default_rng(0).integers(0, 4, 3_000_000, dtype=np.uint8).tobytes()
    members = gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + bytes(512)  # two members, zero padding
    path = tmp_path / "x.nii.gz"
    path.write_bytes(members)
    assert gzip.decompress(members) == data
    out = gunzip_within(path, len(data), "x.nii.gz")
    assert out == tmp_path / "x.nii" and out.read_bytes() == data and not path.exists()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(data)[:-100])
    with pytest.raises(InputFileError, match="cut.nii.gz: is truncated"):
        gunzip_within(cut, len(data), "cut.nii.gz")
    assert sorted(tmp_path.iterdir()) == sorted([out, cut])  # no partial output left
    raw = tmp_path / "raw.nii"
    raw.write_bytes(zlib.compress(data))
    assert gunzip_within(raw, 10, "raw.nii") == raw  # not named .gz: read as it is


def test_a_2d_upload_is_413_from_its_header_before_its_voxels_are_read(tiny, data_dir, tmp_path):
    """A 2D file is judged by its header too: 300 x 300 px over a limit of 16 x 64 x 64 voxels, with the data cut
    off after the header (reading it would fail as a broken file instead)."""
    flat = tmp_path / "flat.nii"
    SimpleITK.WriteImage(SimpleITK.Image(300, 300, SimpleITK.sitkUInt8), str(flat))
    payload = gzip.compress(flat.read_bytes()[:1024])
    with _client(tiny, data_dir, max_voxels=VOXELS) as client:
        refused = client.post("/api/uploads?filename=flat.nii.gz", content=payload)
        assert refused.status_code == 413 and f"{300 * 300} voxels exceed" in refused.json()["detail"]
        assert not list(client.app.state.upload_dir.iterdir())
