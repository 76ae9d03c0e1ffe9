"""The Segmenter against SAM's own pipeline: same masks as a direct decode, embeddings computed once, LRU bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from samadapt.data.frame import frame_shape, to_model_frame_image
from samadapt.errors import CheckpointError, ConfigError, PromptError
from samadapt.inference.embedding_lru import EmbeddingLRU, SliceEmbedding
from samadapt.inference.segmenter import Segmenter
from samadapt.models.decoder import SamDecoder
from samadapt.models.embedding_cache import encode_slices

H, W = 100, 150  # non-square: the model frame pads rows


@pytest.fixture(scope="module")
def image(two_discs) -> np.ndarray:
    assert two_discs.shape == (H, W)
    return two_discs


def direct(tiny, image: np.ndarray, boxes=None, points=None, labels=None, multimask=False):
    """SAM by hand: resize + pad, encode, scale the prompts, decode, postprocess to the original size."""
    framed = to_model_frame_image(image, tiny.spec.image_size)[None]
    valid = frame_shape(H, W, tiny.spec.image_size)
    emb, _ = encode_slices(tiny, framed, valid)
    transform = ResizeLongestSide(tiny.spec.image_size)
    b = None if boxes is None else torch.from_numpy(transform.apply_boxes(np.asarray(boxes, float), (H, W))).float()
    p = None if points is None else (
        torch.from_numpy(transform.apply_coords(np.asarray(points, float), (H, W))).float(),
        torch.as_tensor(labels).long())
    with torch.inference_mode():
        low, iou = SamDecoder(tiny.sam)(torch.from_numpy(emb).float(), points=p, boxes=b, multimask=multimask)
        logits = tiny.sam.postprocess_masks(low, valid, (H, W))
    return (logits > 0).numpy(), iou.numpy(), low


def test_predict_matches_a_direct_decode_for_boxes_and_clicks(tiny, image):
    segmenter = Segmenter(tiny)
    segmenter.set_image(image)
    boxes = [[20, 20, 60, 60], [95, 45, 125, 75], [0, 0, 149, 99]]
    got = segmenter.predict(boxes=boxes)
    masks, iou, low = direct(tiny, image, boxes=boxes)
    assert got.masks.shape == (3, 1, H, W) and got.masks.dtype == bool
    np.testing.assert_array_equal(got.masks, masks)
    np.testing.assert_allclose(got.scores, iou, atol=1e-5)
    np.testing.assert_allclose(got.low_res_logits.numpy(), low.numpy(), atol=1e-5)
    assert 0 < got.masks[0, 0].sum() < H * W

    points, labels = [[[40, 40], [110, 60]]], [[1, 0]]
    got = segmenter.predict(points=points, labels=labels, multimask=True)
    masks, iou, _ = direct(tiny, image, points=points, labels=labels, multimask=True)
    assert got.masks.shape == (1, 3, H, W)
    np.testing.assert_array_equal(got.masks, masks)
    np.testing.assert_allclose(got.scores, iou, atol=1e-5)


def batch_tolerance(logits: torch.Tensor) -> float:
    """Tolerance for the same prompt decoded in batches of different sizes: 1e-4 of the largest |logit|.

    Other batch sizes run other float32 GEMM kernels, whose sums round differently on each CPU: here they
    differ by a few ulps of the largest logit (5e-5 at logits up to 88). 1e-4 of the scale is ~100x that,
    and still far below any difference that matters (masks threshold logits of order 10 at 0).
    """
    return 1e-4 * float(logits.abs().max())


def test_many_prompts_in_one_call_equal_one_call_each(tiny, image):
    segmenter = Segmenter(tiny)
    segmenter.set_image(image)
    boxes = np.array([[20, 20, 60, 60], [95, 45, 125, 75], [10, 5, 140, 95], [30, 30, 31, 31]], dtype=float)
    together = segmenter.predict(boxes=boxes)
    for i, box in enumerate(boxes):
        alone = segmenter.predict(boxes=box)  # a single 4-vector is one prompt
        np.testing.assert_allclose(alone.low_res_logits.numpy(), together.low_res_logits[i : i + 1].numpy(),
                                   atol=batch_tolerance(together.low_res_logits))
    assert segmenter.encoder_calls == 1  # set_image embedded once; five predicts only decoded


def test_mask_input_and_padded_clicks_reach_the_decoder(tiny, image):
    segmenter = Segmenter(tiny)
    segmenter.set_image(image)
    first = segmenter.predict(boxes=[20, 20, 60, 60])
    refined = segmenter.predict(boxes=[20, 20, 60, 60], points=[[40, 40]], labels=[1],
                                mask_input=first.low_res_logits[:, :1])
    assert not torch.allclose(refined.low_res_logits, first.low_res_logits)
    # ragged click counts: label -1 pads a row, and SAM ignores a padding point's coordinates
    padded = segmenter.predict(points=[[[40, 40], [0, 0]], [[110, 60], [100, 60]]], labels=[[1, -1], [1, 1]])
    elsewhere = segmenter.predict(points=[[40, 40], [140, 90]], labels=[1, -1])
    np.testing.assert_allclose(padded.low_res_logits[:1].numpy(), elsewhere.low_res_logits.numpy(),
                               atol=batch_tolerance(elsewhere.low_res_logits))


@pytest.mark.parametrize("kwargs, message", [
    ({"boxes": [[0, 0, 200, 50]]}, "outside"),
    ({"boxes": [[50, 0, 10, 50]]}, "x1 < x0"),
    ({"boxes": [[0, 0, 10, 10], [0, 0, 20, 20]], "points": [[[5, 5]]], "labels": [[1]]}, "prompts"),
    ({"points": [[5, 5]]}, "labels"),
    ({"points": [[5, 5]], "labels": [2]}, "labels"),
    ({"points": [[float("nan"), 5]], "labels": [1]}, "NaN"),
    ({"mask_input": np.zeros((1, 1, 8, 8))}, "shape"),
    ({}, "no prompt"),
])
def test_malformed_prompts_raise_prompt_errors(tiny, image, kwargs, message):
    segmenter = Segmenter(tiny)
    segmenter.set_image(image)
    with pytest.raises(PromptError, match=message):
        segmenter.predict(**kwargs)


def test_images_must_be_windowed_uint8(tiny):
    with pytest.raises(ConfigError, match="uint8"):
        Segmenter(tiny).set_image(np.zeros((10, 10), np.float32))
    with pytest.raises(ConfigError, match="set_image"):
        Segmenter(tiny).predict(boxes=[0, 0, 1, 1])


def test_volume_slices_are_embedded_on_first_use_and_kept_lru_bounded(tiny, phantom_volume):
    segmenter = Segmenter(tiny, max_cached_slices=3)
    slices = segmenter.set_volume(phantom_volume)
    assert segmenter.encoder_calls == 0  # nothing encoded before the first prompt
    box = [10, 10, 50, 50]
    for k in range(6):
        segmenter.predict(boxes=box, slice_index=k)
        segmenter.predict(boxes=box, slice_index=k)
    assert segmenter.encoder_calls == 6  # one encoder pass per slice, the second click reused it
    assert segmenter.cache.keys() == [f"{slices.key}:{k}" for k in (3, 4, 5)]
    segmenter.predict(boxes=box, slice_index=5)
    assert segmenter.encoder_calls == 6
    segmenter.predict(boxes=box, slice_index=0)  # evicted: encoded again, and slice 3 drops out
    assert segmenter.encoder_calls == 7 and segmenter.cache.keys()[0].endswith(":4")
    assert segmenter.embed(range(6, 9)) == 3 and segmenter.encoder_calls == 8  # one batch for three slices


def test_lru_drops_the_least_recently_used_entry():
    cache = EmbeddingLRU(2)
    item = SliceEmbedding(np.zeros((1, 1, 1, 1), np.float16))
    cache.put("a", item)
    cache.put("b", item)
    assert cache.get("a") is item  # "a" is now the most recent
    cache.put("c", item)
    assert cache.keys() == ["a", "c"] and cache.get("b") is None
    assert cache.info() == {"size": 2, "max_items": 2, "hits": 1, "misses": 1}
    with pytest.raises(ConfigError):
        EmbeddingLRU(0)


def test_models_come_from_run_folders_files_and_names(micro_run: Path, tmp_path: Path):
    from_folder = Segmenter.from_model(micro_run)
    from_file = Segmenter.from_model(micro_run / "model.pth")
    assert from_folder.loaded.checkpoint == from_file.loaded.checkpoint == micro_run / "model.pth"
    assert from_folder.classes == ["liver", "spleen"]  # from the sidecar of a fine-tuned model
    assert Segmenter.from_model("test_micro").image_size == 64
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "best.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="best.pth"):
        Segmenter.from_model(unfinished)
