"""SAM model layer: registry, official-format checkpoints, sidecars, and errors for wrong checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from segment_anything import sam_model_registry

from samadapt.errors import CheckpointError
from samadapt.io.checksums import file_sha256
from samadapt.models import registry as registry_module
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import (
    build_sam,
    infer_spec,
    load_sam,
    read_state_dict,
    resolve_checkpoint,
    save_sam,
    sidecar_path,
)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_architectures_are_read_off_official_state_dicts(name):
    # segment_anything's own builder, on the meta device: real shapes, no memory.
    with torch.device("meta"):
        official = sam_model_registry[name]()
    inferred = infer_spec(official.state_dict(), name=name)
    assert inferred.architecture() == REGISTRY[name].architecture()


def test_build_sam_matches_segment_anything_parameter_for_parameter():
    with torch.device("meta"):
        official = sam_model_registry["vit_b"]()
        ours = build_sam(REGISTRY["vit_b"])
    assert {k: v.shape for k, v in official.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


@pytest.fixture(scope="module")
def official_vit_b_file(tmp_path_factory):
    """A checkpoint in the official format: segment_anything's vit_b, saved as a plain state dict."""
    path = tmp_path_factory.mktemp("official") / "sam_vit_b_01ec64.pth"
    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def test_official_vit_b_loads_from_the_cache_with_a_verified_checksum(official_vit_b_file, monkeypatch):
    monkeypatch.setenv("SAMADAPT_CACHE", str(official_vit_b_file.parent))
    # the real sha256 cannot match a file made here: register this file's checksum instead of the official one
    this_file = dataclasses.replace(REGISTRY["vit_b"], sha256=file_sha256(official_vit_b_file))
    monkeypatch.setitem(registry_module.REGISTRY, "vit_b", this_file)
    loaded = load_sam("vit_b")
    reference = read_state_dict(official_vit_b_file)
    assert loaded.spec.name == "vit_b"
    assert all(torch.equal(v, reference[k]) for k, v in loaded.sam.state_dict().items())


def test_official_checksum_mismatch_is_a_clear_error(official_vit_b_file, monkeypatch):
    monkeypatch.setenv("SAMADAPT_CACHE", str(official_vit_b_file.parent))
    with pytest.raises(CheckpointError, match="sha256 does not match") as err:
        load_sam("vit_b")
    assert str(official_vit_b_file) in str(err.value)


def test_medsam_and_any_path_load_with_architecture_from_shapes(official_vit_b_file, tmp_path, monkeypatch):
    medsam = tmp_path / "medsam_vit_b.pth"
    medsam.write_bytes(official_vit_b_file.read_bytes())
    monkeypatch.setenv("SAMADAPT_CACHE", str(tmp_path))
    assert load_sam("medsam_vit_b").spec.architecture() == REGISTRY["vit_b"].architecture()
    by_path = load_sam(str(official_vit_b_file))
    assert by_path.spec.architecture() == REGISTRY["vit_b"].architecture()


def test_missing_official_checkpoint_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMADAPT_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("vit_h", download=False)
    message = str(err.value)
    assert str(tmp_path / "sam_vit_h_4b8939.pth") in message and "sam_vit_h_4b8939.pth" in message
    assert "\n" not in message


def test_saved_model_is_a_plain_sam_state_dict_that_segment_anything_loads(tmp_path):
    torch.manual_seed(1)
    sam = build_sam(REGISTRY["vit_b"])
    path = save_sam(sam, REGISTRY["vit_b"], tmp_path / "finetuned.pth", {"classes": ["liver"]})
    reloaded = sam_model_registry["vit_b"](checkpoint=str(path))
    assert all(torch.equal(v, sam.state_dict()[k]) for k, v in reloaded.state_dict().items())
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["classes"] == ["liver"] and sidecar["architecture"]["encoder_depth"] == 12


def test_sidecar_round_trip_for_non_official_architectures(tmp_path):
    spec = REGISTRY["test_micro"]
    sam = build_sam(spec)
    path = save_sam(sam, spec, tmp_path / "micro.pth")
    loaded = load_sam(str(path))
    assert loaded.spec.architecture() == spec.architecture()
    assert loaded.sidecar["name"] == "test_micro"
    x = torch.randn(1, 3, spec.image_size, spec.image_size)
    with torch.inference_mode():
        assert torch.equal(loaded.sam.image_encoder(x), sam.image_encoder(x))


def test_checkpoint_of_another_architecture_is_named_not_dumped(tmp_path):
    micro = REGISTRY["test_micro"]
    path = save_sam(build_sam(micro), micro, tmp_path / "model.pth")
    other = dataclasses.replace(micro, encoder_embed_dim=64, encoder_num_heads=2)
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar["architecture"] = other.architecture()
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="ViT width 32") as err:
        load_sam(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is not a checkpoint", "not a loadable"),
        ("state", "not a SAM state dict"),
        ("pickled_object", "not a loadable"),
    ],
)
def test_bad_checkpoint_files_raise_checkpoint_error(tmp_path, content, expected):
    path = tmp_path / "bad.pth"
    if content == "state":
        torch.save({"encoder.weight": torch.zeros(2)}, path)
    elif content == "pickled_object":
        torch.save({"weights": torch.nn.Linear(2, 2)}, path)  # a module, refused by weights_only
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as err:
        load_sam(str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_unknown_model_name_lists_the_registry():
    with pytest.raises(CheckpointError, match="vit_b"):
        load_sam("vit_z")


def test_a_tensor_of_another_shape_is_named_with_both_shapes(tmp_path):
    """Same keys and architecture fields, one tensor cut short: the line names it and both shapes in full."""
    micro = REGISTRY["test_micro"]
    path = save_sam(build_sam(micro), micro, tmp_path / "model.pth")
    state = read_state_dict(path)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    width = state[key].shape
    state[key] = state[key][:, :-1].clone()
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_sam(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: tensor shapes do not fit 'test_micro' ({key}: "
                              f"{(width[0], width[1] - 1)} in the file, {tuple(width)} in the model; 1 differ in all)")
    assert "\n" not in message
