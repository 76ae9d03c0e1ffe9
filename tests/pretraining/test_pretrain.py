"""Pretraining runs end to end on the micro model: outputs, exact resume, settings guard, RNG hygiene, CLI."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PretrainConfig, config_to_dict, load_config, parse_overrides
from samadapt.errors import ConfigError
from samadapt.models.sam import load_sam, read_state_dict
from samadapt.pretraining.pretrain import learning_rate, pretrain

CONFIG = PretrainConfig(
    model="test_micro", steps=4, batch_size=2, objects_per_image=2, corpus_images=6, eval_images=2,
    checkpoint_every=2, eval_every=2, warmup_steps=1, box_warmup_fraction=0.5, full_recipe_fraction=0.25, threads=1,
)



@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """One uninterrupted run, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    rng_before = torch.get_rng_state()
    records: list[dict] = []
    path = pretrain(run_dir, CONFIG, on_step=records.append)
    return {"dir": run_dir, "path": path, "records": records, "rng_before": rng_before,
            "rng_after": torch.get_rng_state()}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "elapsed_s"}


def test_run_writes_a_loadable_model_with_its_sidecar(finished):
    run_dir, path = finished["dir"], finished["path"]
    assert path == run_dir / "model.pth" and path.is_file()
    for name in ("config.yaml", "state.pt", "metrics.jsonl", "model.json"):
        assert (run_dir / name).is_file(), name
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name or p.name.startswith(".")]
    sidecar = json.loads((run_dir / "model.json").read_text())
    training = sidecar["training"]
    assert training["steps"] == 4
    assert training["corpus_seed"] == CONFIG.corpus_seed and training["eval_seed"] == CONFIG.eval_seed
    assert training["config"] == config_to_dict(CONFIG)
    assert training["command"].startswith(f"samadapt pretrain {run_dir}")
    metrics = sidecar["metrics"]
    assert set(metrics) == {"heldout_box_iou", "heldout_point_iou", "heldout_objects"}
    assert 0 <= metrics["heldout_box_iou"] <= 1 and 0 <= metrics["heldout_point_iou"] <= 1
    assert metrics["heldout_objects"] > 0
    loaded = load_sam(str(path))
    assert loaded.spec.name == "test_micro" and loaded.spec.image_size == 64
    state = read_state_dict(path)
    assert all(torch.equal(v, state[k]) for k, v in loaded.sam.state_dict().items())


def test_recorded_command_reproduces_the_configuration(finished):
    command = json.loads((finished["dir"] / "model.json").read_text())["training"]["command"]
    words = shlex.split(command)
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    assert load_config(PretrainConfig, None, parse_overrides(pairs)) == CONFIG


def test_metrics_have_one_record_per_step_with_evaluations(finished):
    metrics = _metrics(finished["dir"])
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [_without_time(m) for m in metrics] == [_without_time(r) for r in finished["records"]]
    assert all("eval_box_iou" in m for m in metrics if m["step"] % 2 == 0)
    assert not any("eval_box_iou" in m for m in metrics if m["step"] % 2 == 1)
    bulk = 1 + CONFIG.correction_rounds + CONFIG.mask_only_rounds
    # the first half warms up on boxes alone (one round), the last quarter runs SAM's full recipe (8 + 2 + 1)
    assert [m["rounds"] for m in metrics] == [1, 1, bulk, 11]
    assert all(m["loss"] > 0 for m in metrics)


def test_pretrain_leaves_the_global_rng_untouched(finished):
    assert torch.equal(finished["rng_before"], finished["rng_after"])


def test_interrupted_run_resumes_to_bit_identical_weights(finished, tmp_path):
    class InterruptError(Exception):
        pass

    def stop_at_three(record: dict) -> None:
        if record["step"] == 3:
            raise InterruptError

    run_dir = tmp_path / "run"
    with pytest.raises(InterruptError):
        pretrain(run_dir, CONFIG, on_step=stop_at_three)
    assert not (run_dir / "model.pth").exists()
    assert int(torch.load(run_dir / "state.pt", weights_only=True)["step"]) == 2
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3]  # step 3 ran past the last checkpoint

    resumed_steps: list[int] = []
    path = pretrain(run_dir, CONFIG, on_step=lambda r: resumed_steps.append(r["step"]))
    assert resumed_steps == [3, 4]
    reference = read_state_dict(finished["path"])
    resumed = read_state_dict(path)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [_without_time(m) for m in metrics] == [_without_time(m) for m in _metrics(finished["dir"])]
    sidecar = json.loads((run_dir / "model.json").read_text())
    reference_sidecar = json.loads((finished["dir"] / "model.json").read_text())
    assert sidecar["metrics"] == reference_sidecar["metrics"]

    # starting a finished run again trains nothing more and rewrites the same model
    again_steps: list[int] = []
    pretrain(run_dir, CONFIG, on_step=lambda r: again_steps.append(r["step"]))
    assert again_steps == []
    assert all(torch.equal(resumed[k], v) for k, v in read_state_dict(path).items())
    assert len(_metrics(run_dir)) == 4


def test_folder_started_with_other_settings_is_refused(finished):
    other = dataclasses.replace(CONFIG, lr=CONFIG.lr / 2)
    with pytest.raises(ConfigError, match="config.yaml"):
        pretrain(finished["dir"], other)
    assert load_config(PretrainConfig, finished["dir"] / "config.yaml") == CONFIG  # left as it was


def test_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no_such_model"):
        pretrain(tmp_path / "run", dataclasses.replace(CONFIG, model="no_such_model"))
    assert not (tmp_path / "run").exists()


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = PretrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 9) == pytest.approx(1e-3)
    assert learning_rate(config, 10) == pytest.approx(1e-3)
    assert learning_rate(config, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(config, 100) == pytest.approx(1e-4)
    decay = [learning_rate(config, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_cli_pretrain_runs_and_reports_bad_settings(tmp_path):
    runner = CliRunner()
    settings = ["model=test_micro", "steps=2", "batch_size=1", "objects_per_image=1", "corpus_images=2",
                "eval_images=1", "warmup_steps=1", "threads=1"]
    tiny = [word for setting in settings for word in ("--set", setting)]
    result = runner.invoke(app, ["pretrain", str(tmp_path / "run"), *tiny])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.pth").is_file() and (tmp_path / "run" / "model.json").is_file()
    assert "model.pth" in result.stdout

    result = runner.invoke(app, ["pretrain", str(tmp_path / "bad"), "--set", "nonsense=1"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and "nonsense" in lines[0]
    assert not (tmp_path / "bad").exists()

    # the same folder with other settings: refused with a one-line message, not a traceback (the progress
    # bar is opened before the run starts, so its empty line may precede the message)
    result = runner.invoke(app, ["pretrain", str(tmp_path / "run"), *tiny, "--set", "steps=3"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("samadapt: error:")]
    assert len(errors) == 1 and "config.yaml" in errors[0]
    assert "Traceback" not in result.output


def test_a_second_phase_starts_from_the_given_checkpoint(finished, tmp_path):
    first = finished["path"]
    frozen = dataclasses.replace(CONFIG, steps=1, lr=0.0, init_from=str(first))  # lr 0: no update at all
    second = load_sam(str(pretrain(tmp_path / "phase2", frozen)))
    reference = load_sam(str(first))
    assert all(torch.equal(v, reference.sam.state_dict()[k]) for k, v in second.sam.state_dict().items())
    # the second stage's sidecar carries the first stage's record: every command that made the model
    training = second.sidecar["training"]
    assert training["steps"] == 1 and training["total_steps"] == 1 + CONFIG.steps
    origin = training["initialised_from"]
    assert origin["training"] == reference.sidecar["training"] and origin["metrics"] == reference.sidecar["metrics"]
    assert origin["training"]["command"].startswith("samadapt pretrain") and "init_from" in training["command"]

    third = load_sam(str(pretrain(tmp_path / "phase3", dataclasses.replace(frozen, init_from=str(second.checkpoint)))))
    assert third.sidecar["training"]["total_steps"] == 2 + CONFIG.steps
    assert third.sidecar["training"]["initialised_from"]["training"]["initialised_from"] == origin


def test_a_second_phase_refuses_another_architecture(finished, tmp_path):
    tiny_config = dataclasses.replace(CONFIG, model="tiny", init_from=str(finished["path"]))
    with pytest.raises(ConfigError, match="init_from"):
        pretrain(tmp_path / "phase2", tiny_config)


def test_box_warmup_steps_prompt_boxes_only_in_one_round(tmp_path):
    config = dataclasses.replace(CONFIG, box_warmup_fraction=0.5, full_recipe_fraction=0.0, eval_every=10)
    records: list[dict] = []
    pretrain(tmp_path / "run", config, on_step=records.append)
    assert [r["rounds"] for r in records] == [1, 1, 3, 3]
    assert all("iou_first_point" not in r for r in records[:2])


def test_phase_fractions_are_checked():
    with pytest.raises(ConfigError, match="exceed 1"):
        PretrainConfig(box_warmup_fraction=0.9, full_recipe_fraction=0.2)
    with pytest.raises(ConfigError, match="box_warmup_fraction"):
        PretrainConfig(box_warmup_fraction=1.5)
