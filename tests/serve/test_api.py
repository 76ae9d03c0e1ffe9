"""The web app's API through FastAPI's TestClient: segmentation round trip, security, validation, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from samadapt.io.volume import read_volume
from samadapt.serve.app import create_app
from samadapt.serve.encoding import from_run_lengths, run_lengths
from samadapt.serve.sessions import ServeSettings, VolumeSession

LIMIT = 110_000  # bytes: the phantom (about 80 kB gzipped) fits, its uncompressed form (131 kB) does not


@pytest.fixture()
def client(tiny, data_dir):
    app = create_app(tiny, ServeSettings(data_dir=data_dir, max_upload_bytes=LIMIT, max_sessions=2),
                     allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


VOLUME = "ct/phantom_007.nii.gz"  # see conftest.data_dir


def _open(client) -> dict:
    response = client.post("/api/volumes", json={"path": VOLUME})
    assert response.status_code == 200, response.text
    return response.json()


def _liver_box(data_dir: Path, k: int) -> list[float]:
    mask = np.load(data_dir / "ct" / "liver_mask.npy")[k]
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())]


def test_box_to_mask_to_downloaded_nifti(client, data_dir):
    assert "script-src 'sha256-" in client.get("/").headers["content-security-policy"]
    assert client.get("/api/volumes").json()["volumes"] == [VOLUME]  # the link out of the folder is not listed
    volume = _open(client)
    assert (volume["n_slices"], volume["height"], volume["width"], volume["modality"]) == (16, 64, 64, "CT")
    sid, k = volume["id"], 9
    png = client.get(f"/api/volumes/{sid}/slices/{k}.png?window=liver")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    box = _liver_box(data_dir, k)
    first = client.post(f"/api/volumes/{sid}/predict", json={"slice": k, "box": box}).json()
    click = {"slice": k, "box": box, "points": [[box[0] + 8, box[1] + 8]], "labels": [1]}
    again = client.post(f"/api/volumes/{sid}/predict", json=click).json()
    assert first["embedded_now"] and not again["embedded_now"]  # one encoder pass, then decoder only
    mask = from_run_lengths(first["mask"]).astype(bool)
    assert mask.shape == (64, 64) and mask.sum() == first["area"] > 0

    committed = client.post(f"/api/volumes/{sid}/commit", json={"prediction_id": first["prediction_id"],
                                                                "class_name": "liver"}).json()
    assert committed["classes"] == {"background": 0, "liver": 1}
    np.testing.assert_array_equal(from_run_lengths(committed["labels"]), mask.astype(int))
    download = client.get(f"/api/volumes/{sid}/labels.nii.gz")
    assert download.status_code == 200
    assert 'filename="phantom_007_labels.nii.gz"' in download.headers["content-disposition"]
    path = data_dir.parent / "downloaded.nii.gz"
    path.write_bytes(download.content)
    labels, source = read_volume(path), read_volume(data_dir / VOLUME)
    assert labels.geometry == source.geometry  # the exact grid of the opened volume
    np.testing.assert_array_equal(labels.array[k], mask.astype(np.uint8))  # identity direction: no display flips
    assert labels.array.sum() == mask.sum()
    assert client.get(f"/api/volumes/{sid}/labels.json").json() == {"background": 0, "liver": 1}

    undone = client.post(f"/api/volumes/{sid}/undo").json()
    assert undone["slice"] == k and not from_run_lengths(undone["labels"]).any()
    nothing = client.post(f"/api/volumes/{sid}/undo")
    assert nothing.status_code == 409 and nothing.json() == {"detail": "nothing to undo"}


def test_onnx_decoding_serves_the_same_masks(client, tiny, data_dir):
    pytest.importorskip("onnxruntime")
    app = create_app(tiny, ServeSettings(data_dir=data_dir, decoder="onnx"), allowed_hosts=["testserver"])
    assert app.state.onnx.exported == (False, True)  # both graphs ready before the first click
    box, k = _liver_box(data_dir, 9), 9
    click = {"slice": k, "box": box, "points": [[box[0] + 8, box[1] + 8]], "labels": [1]}
    masks = []
    for test_client in (client, TestClient(app, raise_server_exceptions=False)):
        sid = _open(test_client)["id"]
        assert test_client.post(f"/api/volumes/{sid}/embed", json={"slice": k}).json()["embedded_now"]
        answer = test_client.post(f"/api/volumes/{sid}/predict", json=click)
        assert answer.status_code == 200, answer.text
        masks.append(from_run_lengths(answer.json()["mask"]).astype(bool))
    assert masks[0].sum() > 0 and (masks[0] != masks[1]).sum() <= 2  # float noise may flip a boundary pixel
    assert app.state.onnx.image_part_runs == 1  # the slice's per-image decoder terms: at /embed, not per click


@pytest.mark.parametrize("path", ["../secret.nii.gz", "ct/../../secret.nii.gz", "/etc/passwd", "ct/escape.nii.gz",
                                  "..\\secret.nii.gz"])
def test_paths_outside_the_data_folder_are_refused(client, path, data_dir):
    response = client.post("/api/volumes", json={"path": path})
    assert response.status_code == 403
    assert set(response.json()) == {"detail"} and str(data_dir) not in response.text


def test_unknown_volumes_and_sessions_are_404(client, data_dir):
    missing = client.post("/api/volumes", json={"path": "ct/none.nii.gz"})
    assert missing.status_code == 404 and str(data_dir) not in missing.text
    assert client.get("/api/volumes/" + "0" * 32).status_code == 404
    assert client.get("/api/volumes/not-an-id").status_code == 422


def test_uploads_open_within_the_size_limit(client, data_dir):
    payload = (data_dir / VOLUME).read_bytes()
    assert len(payload) < LIMIT
    volume = client.post("/api/uploads?filename=mine.nii.gz", content=payload).json()
    assert volume["name"] == "mine.nii.gz" and volume["n_slices"] == 16
    uploads = client.app.state.upload_dir
    assert len(list(uploads.iterdir())) == 1
    client.delete(f"/api/volumes/{volume['id']}")
    assert not list(uploads.iterdir())  # a closed session's upload is deleted
    too_big = gzip.decompress(payload)
    declared = client.post("/api/uploads?filename=big.nii", content=too_big)
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]
    streamed = client.post("/api/uploads?filename=big.nii", content=(too_big[i : i + 65536]
                                                                     for i in range(0, len(too_big), 65536)))
    assert streamed.status_code == 413  # no Content-Length: counted while streaming
    assert client.post("/api/uploads?filename=notes.txt", content=b"hello").status_code == 400
    broken = client.post("/api/uploads?filename=broken.nii.gz", content=payload[: len(payload) // 2])
    assert broken.status_code == 400 and "broken.nii.gz" in broken.json()["detail"]
    assert "samadapt-uploads" not in broken.text  # the server's temporary path stays private


@pytest.mark.parametrize("body", [
    {"slice": 3},
    {"slice": 3, "box": [10, 10, 5, 20]},
    {"slice": 3, "box": [1, 2, 3]},
    {"slice": -1, "box": [1, 2, 3, 4]},
    {"slice": 3, "box": [1, 2, 3, 4], "extra": True},
    {"slice": 3, "points": [[1, 2]], "labels": [1, 0]},
    {"slice": 3, "points": [[1, 2]], "labels": [5]},
    {"slice": "three", "box": [1, 2, 3, 4]},
    {"slice": 3, "box": [1, 2, 3, 4], "window": "../x"},
    {"slice": 3, "points": [[1, 2]] * 65, "labels": [1] * 65},
])
def test_invalid_bodies_are_422_with_json(client, body):
    sid = _open(client)["id"]
    response = client.post(f"/api/volumes/{sid}/predict", json=body)
    assert response.status_code == 422 and isinstance(response.json()["detail"], list)
    assert "Traceback" not in response.text


def test_prompts_off_the_volume_are_refused_with_a_message(client):
    sid = _open(client)["id"]
    outside = client.post(f"/api/volumes/{sid}/predict", json={"slice": 3, "box": [10, 10, 80, 20]})
    assert outside.status_code == 422 and "outside" in outside.json()["detail"]
    no_slice = client.post(f"/api/volumes/{sid}/predict", json={"slice": 40, "box": [1, 2, 3, 4]})
    assert no_slice.status_code == 400 and "slice 40" in no_slice.json()["detail"]
    stale = client.post(f"/api/volumes/{sid}/commit", json={"prediction_id": "f" * 32, "class_name": "liver"})
    assert stale.status_code == 422
    bad_name = client.post(f"/api/volumes/{sid}/commit", json={"prediction_id": "f" * 32, "class_name": "<b>x"})
    assert bad_name.status_code == 422
    mr_window = client.get(f"/api/volumes/{sid}/slices/2.png?window=percentiles")
    assert mr_window.status_code == 200
    auto = client.post(f"/api/volumes/{sid}/auto", json={"slice": 2, "class_name": "liver"})
    assert auto.status_code == 409 and "adapter" in auto.json()["detail"]


def test_unexpected_failures_answer_500_without_a_traceback(client, monkeypatch):
    sid = _open(client)["id"]

    def broken(self, index):
        raise RuntimeError("secret internals /root/whatever")

    monkeypatch.setattr(VolumeSession, "label_slice", broken)
    response = client.get(f"/api/volumes/{sid}/labels/3")
    assert response.status_code == 500 and response.json() == {"detail": "internal error; see the server log"}


def test_foreign_hosts_and_origins_are_refused(client):
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400
    sid = _open(client)["id"]
    cross = client.post(f"/api/volumes/{sid}/undo", headers={"origin": "http://evil.example"})
    assert cross.status_code == 403
    same = client.post(f"/api/volumes/{sid}/undo", headers={"origin": "http://testserver"})
    assert same.status_code == 409  # passed the origin check; nothing to undo yet


def test_old_sessions_make_room_for_new_ones(client):
    first, second, third = (_open(client)["id"] for _ in range(3))
    assert client.get(f"/api/volumes/{first}").status_code == 404  # max_sessions=2: the oldest went
    assert client.get(f"/api/volumes/{third}").status_code == 200
    assert client.delete(f"/api/volumes/{second}").json() == {"closed": second}
    assert client.get(f"/api/volumes/{second}").status_code == 404


def test_run_lengths_round_trip():
    labels = np.random.default_rng(0).integers(0, 3, (7, 9))
    encoded = run_lengths(labels)
    assert sum(encoded["lengths"]) == 63
    np.testing.assert_array_equal(from_run_lengths(encoded), labels)


def test_automatic_mode_previews_the_adapters_mask_and_points(data_dir, tmp_path):
    import torch

    from samadapt.models.registry import REGISTRY
    from samadapt.models.sam import build_sam, load_sam, sam_digest, save_sam
    from samadapt.promise import AdapterSpec, PromiseAdapter

    spec = REGISTRY["test_micro"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checkpoint = save_sam(build_sam(spec), spec, tmp_path / "model.pth")
        loaded = load_sam(str(checkpoint))
        adapter = PromiseAdapter(AdapterSpec(
            ("liver",), spec.image_size, spec.encoder_embed_dim, 3, spec.embedding_size, spec.prompt_embed_dim, 4,
            has_apm=True, has_ips=True), str(checkpoint), sam_digest(loaded.sam)).eval()
    app = create_app(loaded, ServeSettings(data_dir=data_dir), adapter, allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/api/info").json()["auto"] is True
        volume = _open(client)
        assert volume["auto"] and volume["auto_classes"] == ["liver"]
        answer = client.post(f"/api/volumes/{volume['id']}/auto", json={"slice": 8, "class_name": "liver"}).json()
        assert len(answer["points"]) == 16 and from_run_lengths(answer["mask"]).shape == (64, 64)
        unknown = client.post(f"/api/volumes/{volume['id']}/auto", json={"slice": 8, "class_name": "spleen"})
        assert unknown.status_code == 400 and "known: liver" in unknown.json()["detail"]


def test_serve_refuses_a_missing_data_folder(tmp_path):
    from typer.testing import CliRunner

    from samadapt.cli import app

    result = CliRunner().invoke(app, ["serve", "--data", str(tmp_path / "nowhere"), "--model", "test_micro"])
    assert result.exit_code == 2 and "data folder does not exist" in result.stderr


@pytest.mark.parametrize("args", [["--decoder", "tensorrt"], ["--decoder", "onnx", "--device", "cuda"]])
def test_serve_refuses_decoders_it_cannot_run(tmp_path, args):
    from typer.testing import CliRunner

    from samadapt.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", "test_micro", *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--decoder" in result.stderr
