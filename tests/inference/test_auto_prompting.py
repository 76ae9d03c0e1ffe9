"""predict_auto and IPS-shifted prompts through a real (untrained) ProMISe adapter on a micro SAM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from samadapt.data.frame import frame_shape, to_model_frame_image
from samadapt.errors import CheckpointError, ConfigError
from samadapt.inference.segmenter import Segmenter
from samadapt.inference.volume_segmentation import AutoSettings, segment_volume_auto
from samadapt.models.decoder import SamDecoder
from samadapt.models.embedding_cache import encode_slices

H, W = 48, 64


@pytest.fixture(scope="module")
def adapter_run(micro_run, tmp_path_factory, write_adapter_run) -> Path:
    loaded = Segmenter.from_model(micro_run).loaded
    return write_adapter_run(tmp_path_factory.mktemp("adapter"), micro_run / "model.pth", loaded, has_apm=True)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (H, W), dtype=np.uint8)


def test_predict_auto_is_the_apm_points_decoded_with_the_ips_shift(adapter_run, micro_run, image):
    segmenter = Segmenter.from_model(None, adapter=adapter_run)  # the adapter's own base model
    assert segmenter.loaded.checkpoint == micro_run / "model.pth"
    assert segmenter.has_auto and segmenter.classes == ["liver", "spleen"]
    segmenter.set_image(image)
    got = segmenter.predict_auto("spleen", presence_threshold=None)

    adapter, sam, size = segmenter.adapter, segmenter.sam, segmenter.image_size
    valid = frame_shape(H, W, size)
    emb, feats = encode_slices(segmenter.loaded, to_model_frame_image(image, size)[None], valid, with_features=True)
    emb, feats = torch.from_numpy(emb).float(), torch.from_numpy(feats).float()
    with torch.inference_mode():
        points, labels = adapter.auto_points(feats, 1)
        low, iou = SamDecoder(sam, adapter.token_shift(emb))(emb, points=(points, labels), multimask=adapter.multimask)
        masks = sam.postprocess_masks(low[:, :1], valid, (H, W)) > 0
    assert got.masks.shape == (1, 1, H, W)
    np.testing.assert_array_equal(got.masks, masks.numpy())
    np.testing.assert_allclose(got.scores, iou[:, :1].numpy(), atol=1e-5)
    scale = np.array([W / valid[1], H / valid[0]])
    np.testing.assert_allclose(got.points, points.numpy() * scale, atol=1e-4)  # back in the original frame
    assert got.presence is not None and got.presence.shape == (1,)


def test_prompted_masks_use_the_adapters_shift(adapter_run, micro_run, image):
    adapted = Segmenter.from_model(micro_run, adapter=adapter_run)
    plain = Segmenter.from_model(micro_run)
    for segmenter in (adapted, plain):
        segmenter.set_image(image)
    shifted = adapted.predict(boxes=[5, 5, 40, 30]).low_res_logits
    emb = torch.from_numpy(adapted.embedding().embedding).float()
    box = torch.tensor([[5.0, 5.0, 40.0, 30.0]])
    with torch.inference_mode():
        expected, _ = SamDecoder(adapted.sam, adapted.adapter.token_shift(emb))(emb, boxes=box)
        unshifted, _ = SamDecoder(plain.sam)(emb, boxes=box)
    np.testing.assert_allclose(shifted.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(plain.predict(boxes=[5, 5, 40, 30]).low_res_logits.numpy(), unshifted.numpy(), atol=1e-5)
    assert not torch.allclose(shifted, unshifted)


def test_an_adapter_refuses_another_sam(adapter_run):
    with pytest.raises(CheckpointError, match="not the SAM"):
        Segmenter.from_model("test_micro", adapter=adapter_run)  # same architecture, other weights


def test_automatic_mode_needs_an_adapter_with_an_apm(micro_run, tmp_path, image, write_adapter_run):
    plain = Segmenter.from_model(micro_run)
    plain.set_image(image)
    with pytest.raises(ConfigError, match="adapter"):
        plain.predict_auto()
    loaded = plain.loaded
    ips_only = Segmenter.from_model(None, adapter=write_adapter_run(tmp_path, micro_run / "model.pth", loaded, False))
    ips_only.set_image(image)
    assert not ips_only.has_auto
    with pytest.raises(ConfigError, match="APM"):
        ips_only.predict_auto("liver")
    with pytest.raises(ConfigError, match="APM"):
        segment_volume_auto(ips_only)


def test_automatic_volume_segmentation_paints_each_kept_class_mask(adapter_run, phantom_volume):
    segmenter = Segmenter.from_model(None, adapter=adapter_run)
    slices = segmenter.set_volume(phantom_volume)
    result = segment_volume_auto(segmenter, settings=AutoSettings(presence_threshold=None, min_area=1))
    assert result.labels.shape == phantom_volume.array.shape and result.slices_decoded == slices.n_slices
    for k in (0, slices.n_slices // 2):
        expected = np.zeros(slices.slice_hw, np.uint8)
        for value, name in enumerate(segmenter.classes, start=1):
            mask = segmenter.predict_auto(name, slice_index=k, presence_threshold=None).masks[0, 0]
            if mask.sum() >= 1:
                expected[mask] = value
        np.testing.assert_array_equal(slices.labels_slice(result.labels, k), expected)
    assert [o["class"] for o in result.objects] == ["liver", "spleen"]


def test_segment_cli_runs_the_adapter_without_prompts(adapter_run, phantom_files, tmp_path):
    from typer.testing import CliRunner

    from samadapt.cli import app
    from samadapt.io.volume import read_volume

    out = tmp_path / "auto"
    result = CliRunner().invoke(app, ["segment", str(phantom_files[0]), "--auto", "--adapter", str(adapter_run),
                                      "--out", str(out), "--set", "auto.presence_threshold=null"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "phantom_000.json").read_text())
    assert sidecar["mode"] == "auto" and sidecar["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    written = read_volume(out / "phantom_000.nii.gz")
    assert written.geometry == read_volume(phantom_files[0]).geometry and set(np.unique(written.array)) <= {0, 1, 2}
    bad = CliRunner().invoke(app, ["segment", str(phantom_files[0]), "--auto", "--adapter", str(adapter_run),
                                   "--out", str(out), "--set", "auto.colour=red"])
    assert bad.exit_code == 2 and "unknown setting" in bad.stderr


def test_predict_auto_and_the_evaluations_automatic_masks_follow_one_rule(adapter_run):
    """Segmenter.predict_auto (segment --auto, the web app) and promise.predict.automatic_masks (adapt's
    validation, eval --prompts auto) give the same masks and the same presence gate. On an image of the model's
    own size both frames coincide; pixels whose logit is within 1e-4 of the threshold may differ by float
    rounding between one batched and one single-prompt decoder pass, and are not compared."""
    from samadapt.promise.predict import automatic_masks

    segmenter = Segmenter.from_model(None, adapter=adapter_run)
    adapter, sam, size = segmenter.adapter, segmenter.sam, segmenter.image_size
    segmenter.set_image(np.random.default_rng(3).integers(0, 255, (size, size), dtype=np.uint8))
    cached = segmenter.embedding()
    emb, feats = torch.from_numpy(cached.embedding).float(), torch.from_numpy(cached.features).float()
    _, presence = automatic_masks(adapter, sam, emb, feats, (size, size), None)
    assert presence is not None and presence.shape == (2,) and presence[0] != presence[1]
    between = float(presence.mean())  # one class kept, the other emptied by the presence gate
    for threshold in (None, between):
        masks, _ = automatic_masks(adapter, sam, emb, feats, (size, size), threshold)
        for k, name in enumerate(adapter.classes):
            got = segmenter.predict_auto(name, presence_threshold=threshold)
            assert got.presence[0] == pytest.approx(float(presence[k]), abs=1e-6)
            logits = sam.postprocess_masks(got.low_res_logits[:, :1], (size, size), (size, size))[0, 0]
            clear = logits.abs().numpy() > 1e-4
            np.testing.assert_array_equal(got.masks[0, 0][clear], masks[k].numpy()[clear])
            emptied = threshold is not None and float(presence[k]) < threshold
            assert emptied == (not masks[k].any()) == (not got.masks.any())
    assert masks[0].any() != masks[1].any()
