"""One-line messages for bad settings: a --config file's setting names the file, a non-number where a
number belongs says so, and a checkpoint of random bytes fails without a torch warning first."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.errors import CheckpointError, ConfigError
from samadapt.inference.segment_cases import segment_settings
from samadapt.models.sam import load_sam
from support import one_line_error


@pytest.mark.parametrize("command", ["train", "adapt"])
def test_a_bad_setting_of_a_config_file_names_the_file(micro_prepared, tmp_path, command):
    config = tmp_path / "settings.yaml"
    config.write_text("engine:\n  steps: 0\n  lr: 1e-4\n")
    out = tmp_path / "run"
    line = one_line_error(CliRunner().invoke(app, [command, str(micro_prepared.root), "--out", str(out),
                                          "--config", str(config)]))
    assert line.startswith(f"samadapt: error: {config}: engine setting steps=0: use an integer >= 1"), line
    assert not out.exists()


def test_prepare_and_pretrain_name_their_config_file_too(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("image_size: 3\n")
    line = one_line_error(CliRunner().invoke(app, ["prepare", str(tmp_path / "raw"), str(tmp_path / "out"),
                                          "--config", str(config)]))
    assert line.startswith(f"samadapt: error: {config}: "), line
    config.write_text("steps: 0\n")
    line = one_line_error(CliRunner().invoke(app, ["pretrain", str(tmp_path / "pre"), "--config", str(config)]))
    assert line.startswith(f"samadapt: error: {config}: "), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "pre").exists()


def test_a_bad_set_over_a_good_config_file_does_not_blame_the_file(micro_prepared, tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("engine:\n  steps: 3\n")
    line = one_line_error(CliRunner().invoke(app, ["train", str(micro_prepared.root), "--out", str(tmp_path / "run"),
                                          "--config", str(config), "--set", "engine.steps=0"]))
    assert line == "samadapt: error: engine setting steps=0: use an integer >= 1"


@pytest.mark.parametrize("key, value", [("propagation.min_area", "abc"), ("propagation.max_slices", "many"),
                                        ("propagation.margin_px", [1]), ("auto.min_area", "abc")])
def test_a_word_where_a_number_belongs_is_one_plain_message(key, value):
    with pytest.raises(ConfigError) as caught:
        segment_settings(overrides={key: value})
    group, name = key.split(".")
    assert str(caught.value) == f"{group} setting {name}={value!r}: must be a number"


def test_segment_set_min_area_abc_is_oneone_line_error(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text("{}")
    line = one_line_error(CliRunner().invoke(app, ["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--model",
                                          "test_micro", "--boxes", str(prompts),
                                          "--set", "propagation.min_area=abc"]))
    assert line == "samadapt: error: propagation setting min_area='abc': must be a number"


def test_random_bytes_as_a_checkpoint_fail_without_a_warning(tmp_path: Path):
    path = tmp_path / "random.pth"
    path.write_bytes(b"\x80\x35" + bytes(range(256)))  # pickle protocol 53: torch would warn before failing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="not a loadable weights-only checkpoint"):
            load_sam(str(path))
    assert [str(w.message) for w in caught] == []
