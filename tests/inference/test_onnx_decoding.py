"""Decoding in onnxruntime answers what torch answers: the same prompts, the same masks and logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samadapt.errors import ConfigError
from samadapt.inference.onnx_decoding import OnnxDecoding
from samadapt.inference.segmenter import Segmenter

pytest.importorskip("onnxruntime")


def _pair(loaded, image, adapter=None) -> tuple[Segmenter, Segmenter]:
    plain = Segmenter(loaded, adapter=adapter)
    fast = Segmenter(loaded, adapter=adapter, onnx=OnnxDecoding(loaded, adapter))
    for segmenter in (plain, fast):
        segmenter.set_image(image)
    return plain, fast


def _same(a, b) -> None:
    np.testing.assert_allclose(b.low_res_logits.numpy(), a.low_res_logits.numpy(), atol=2e-3)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    assert (a.masks != b.masks).mean() < 1e-3  # only pixels with a logit within float noise of 0 may flip


def test_tiny_boxes_clicks_masks_and_multimask_match_torch(tiny, two_discs):
    plain, fast = _pair(tiny, two_discs)
    boxes = [[20, 20, 60, 60], [95, 45, 125, 75]]
    points, labels = [[[40, 40], [110, 60]], [[100, 50], [5, 5]]], [[1, 0], [1, -1]]
    first = plain.predict(boxes=boxes)
    assert 0 < first.masks[0, 0].sum() < two_discs.size
    _same(first, fast.predict(boxes=boxes))
    _same(plain.predict(points=points, labels=labels), fast.predict(points=points, labels=labels))
    _same(plain.predict(boxes=boxes, points=points, labels=labels),
          fast.predict(boxes=boxes, points=points, labels=labels))
    previous = first.low_res_logits
    _same(plain.predict(boxes=boxes, mask_input=previous), fast.predict(boxes=boxes, mask_input=previous))
    three = plain.predict(points=points[:1], labels=labels[:1], multimask=True)
    assert three.masks.shape[1] == 3
    _same(three, fast.predict(points=points[:1], labels=labels[:1], multimask=True))


def test_the_adapters_ips_shift_is_inside_the_graph(micro_run, tmp_path, two_discs, write_adapter_run):
    base = Segmenter.from_model(micro_run).loaded
    run = write_adapter_run(tmp_path, micro_run / "model.pth", base, has_apm=False)
    adapted = Segmenter.from_model(None, adapter=run)
    plain, fast = _pair(adapted.loaded, two_discs, adapted.adapter)
    unshifted = Segmenter(adapted.loaded)
    unshifted.set_image(two_discs)
    boxes = [[10, 10, 50, 40]]
    shifted = plain.predict(boxes=boxes)
    assert not np.allclose(shifted.low_res_logits.numpy(), unshifted.predict(boxes=boxes).low_res_logits.numpy())
    _same(shifted, fast.predict(boxes=boxes))


def test_image_terms_are_computed_once_per_image(tiny, two_discs):
    onnx = OnnxDecoding(tiny, cached_images=1)
    fast = Segmenter(tiny, onnx=onnx)
    fast.set_image(two_discs)
    for box in ([20, 20, 60, 60], [90, 40, 130, 80], [10, 10, 140, 90]):
        fast.predict(boxes=[box], points=[[[40, 40]]], labels=[[1]])
    assert onnx.image_part_runs == 1  # clicks on one image: its prompt-independent terms once
    previous = fast.predict(boxes=[[20, 20, 60, 60]]).low_res_logits
    fast.predict(boxes=[[20, 20, 60, 60]], mask_input=previous)
    assert onnx.image_part_runs == 2  # a mask prompt changes them: computed for that call, not kept
    fast.predict(boxes=[[20, 20, 60, 60]])
    assert onnx.image_part_runs == 2
    fast.set_image(two_discs[::-1].copy())  # another image evicts the first (one kept)
    fast.predict(boxes=[[20, 20, 60, 60]])
    fast.set_image(two_discs)
    fast.predict(boxes=[[20, 20, 60, 60]])
    assert onnx.image_part_runs == 4
    embedding = fast.embedding().embedding
    onnx(embedding, boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]]), image_key="k")
    onnx(embedding.copy(), boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]]), image_key="k")  # another array: not trusted
    assert onnx.image_part_runs == 6
    with pytest.raises(ConfigError, match="cached_images"):
        OnnxDecoding(tiny, cached_images=-1)


def test_onnx_decoding_refuses_a_gpu_device(tiny):
    with pytest.raises(ConfigError, match="CPU"):
        Segmenter(tiny, device="meta", onnx=OnnxDecoding(tiny))
