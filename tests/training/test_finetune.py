"""``samadapt train`` end to end on CT phantoms with a micro SAM: learning, exact resume, outputs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import FinetuneConfig, make_config, merge_settings
from samadapt.errors import ConfigError
from samadapt.models.sam import load_sam, read_state_dict
from samadapt.training.finetune import finetune, prepare_run_folder


class KilledError(RuntimeError):
    pass


def _config(prepared, base, **kw) -> FinetuneConfig:
    """A short run's settings; ``kw`` as in a config file (groups as dicts, e.g. ``engine={"steps": 4}``)."""
    values = dict(data=str(prepared.root), model=str(base),
                  engine=dict(steps=6, batch_size=2, checkpoint_every=2, eval_every=3, warmup_steps=2, lr=1e-3))
    return make_config(FinetuneConfig, merge_settings(values, kw, FinetuneConfig))


def _run(run_dir: Path, config: FinetuneConfig, **kw):
    prepare_run_folder(run_dir, config, resume=False)
    return finetune(run_dir, config, **kw)


def test_only_the_decoder_changes_and_checkpoints_load(micro_prepared, base, run_dir):
    result = _run(run_dir, _config(micro_prepared, base))
    before, after = read_state_dict(base), read_state_dict(result.model)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"mask_decoder"}
    loaded = load_sam(str(result.model))
    assert loaded.spec.image_size == 64
    sidecar = json.loads(result.model.with_suffix(".json").read_text())
    assert sidecar["base_model"] == str(base) and sidecar["data"]["hash"] == micro_prepared.hash
    assert result.best is not None and result.best.is_file()
    assert [s for s, _ in result.curve] == [3, 6] and result.best_val_dice == max(v for _, v in result.curve)
    # model.pth is the selected model: the best validation step, said in its sidecar; last.pth the last step
    best_step = max(result.curve, key=lambda point: point[1])[0]
    assert sidecar["selection"] == {"rule": "best", "step": best_step, "val_dice": result.best_val_dice,
                                    "last_step": 6, "last_val_dice": result.curve[-1][1],
                                    "stopped_early": False}
    assert sidecar["training"]["steps"] == best_step and sidecar["training"]["wall_s"] > 0
    assert read_state_dict(result.model).keys() == read_state_dict(result.best).keys()
    assert all(torch.equal(v, read_state_dict(result.best)[k]) for k, v in read_state_dict(result.model).items())
    last = json.loads((run_dir / "last.json").read_text())
    assert last["training"]["steps"] == 6


def test_select_last_keeps_the_last_step(micro_prepared, base, run_dir):
    result = _run(run_dir, _config(micro_prepared, base, select_model="last", engine={"steps": 4, "eval_every": 2}))
    sidecar = json.loads(result.model.with_suffix(".json").read_text())
    assert sidecar["selection"]["rule"] == "last" and sidecar["selection"]["step"] == 4
    assert all(torch.equal(v, read_state_dict(run_dir / "last.pth")[k])
               for k, v in read_state_dict(result.model).items())
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "tensorboard").iterdir())


def test_prompt_encoder_trains_when_asked(micro_prepared, base, run_dir):
    config = _config(micro_prepared, base, train_prompt_encoder=True, engine={"steps": 2, "eval_every": 10})
    result = _run(run_dir, config)
    before, after = read_state_dict(base), read_state_dict(result.model)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"mask_decoder", "prompt_encoder"}


def _straight_and_resumed(tmp_path: Path, config: FinetuneConfig, kill_at: int):
    """The same run twice: uninterrupted, and killed after step ``kill_at`` then resumed."""
    straight = _run(tmp_path / "straight", config)

    def kill(record):
        if record["step"] == kill_at:
            raise KilledError

    with pytest.raises(KilledError):
        _run(tmp_path / "killed", config, on_step=kill)
    resumed = finetune(tmp_path / "killed", prepare_run_folder(tmp_path / "killed", config, resume=True))
    a, b = read_state_dict(straight.model), read_state_dict(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    return straight, resumed


def test_killed_run_resumes_to_the_same_weights(micro_prepared, base, tmp_path):
    config = _config(micro_prepared, base, box_noise={"style": "sam"})
    straight, resumed = _straight_and_resumed(tmp_path, config, kill_at=5)
    assert resumed.curve == straight.curve


def test_multi_prompt_training_learns(micro_prepared, base, run_dir):
    records = []
    config = _config(micro_prepared, base, engine={"steps": 40, "lr": 3e-3, "eval_every": 40})
    _run(run_dir, config, on_step=records.append)
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.8 * first
    assert min(r["prompts"] for r in records) >= 2  # all objects of each slice, not one


def test_a_used_folder_needs_resume_and_resume_needs_a_run(micro_prepared, base, run_dir):
    (run_dir).mkdir()
    (run_dir / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="--resume"):
        prepare_run_folder(run_dir, _config(micro_prepared, base), resume=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare_run_folder(run_dir, _config(micro_prepared, base), resume=True)


@pytest.mark.parametrize("args, expected", [
    (["--set", "prompting=several"], "prompting='several'"),
    (["--set", "engine.lr=0"], "engine setting lr=0"),
    (["--set", "model=tiny"], "prepared at 64 px"),
    (["--set", "stepz=3"], "unknown setting"),
    (["--set", "engine.patience=-1"], "engine setting patience=-1"),
    (["--set", "engine.lr=abc"], "engine.lr must be a number, got 'abc'"),
    (["--set", "engine.stepz=3"], "unknown setting(s) engine.stepz; known: engine.steps"),
    (["--set", "lr=1e-4"], "lr is now engine.lr"),
    (["--set", "pruning=class"], "pruning is a group of settings"),
    (["--set", "pruning.ratio=2"], "pruning setting ratio=2.0: use a fraction between 0 and 1"),
    (["--set", "box_noise.style=wobbly"], "box_noise setting style='wobbly'"),
    (["--set", "engine=3"], "engine is a group of settings"),
    (["--set", "engine.lr"], "write it as key=value"),
])
def test_cli_bad_settings_exit_2_with_one_line(micro_prepared, tmp_path, args, expected):
    result = CliRunner().invoke(app, ["train", str(micro_prepared.root), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and expected in lines[0]


def test_cli_patience_stops_a_run_that_no_longer_improves(micro_prepared, base, tmp_path):
    """At lr 1e-12 the weights do not move, so every validation scores the same: with patience 2 the run
    stops at the third validation (step 3 of 20), keeps the first as its model and says so."""
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["train", str(micro_prepared.root), "--out", str(out), "--set", f"model={base}",
                                      "--set", "engine.steps=20", "--set", "engine.eval_every=1",
                                      "--set", "engine.patience=2", "--set", "engine.lr=1e-12",
                                      "--set", "engine.batch_size=2", "--set", "engine.warmup_steps=0"])
    assert result.exit_code == 0, result.output
    selection = json.loads((out / "model.json").read_text())["selection"]
    assert (selection["step"], selection["last_step"], selection["stopped_early"]) == (1, 3, True)
    assert result.stdout.strip().splitlines()[-1].endswith("stopped early at step 3 (patience 2)")


def test_cli_resume_refuses_changed_settings(micro_prepared, base, tmp_path):
    out = tmp_path / "r"
    common = ["train", str(micro_prepared.root), "--out", str(out), "--set", f"model={base}"]
    first = CliRunner().invoke(app, [*common, "--set", "engine.steps=2", "--set", "engine.eval_every=5"])
    assert first.exit_code == 0, first.output
    assert "model written to" in first.stdout.strip().splitlines()[-1]
    again = CliRunner().invoke(app, [*common, "--resume"])
    assert again.exit_code == 2 and "saved config.yaml" in again.stderr
    plain = CliRunner().invoke(app, ["train", str(micro_prepared.root), "--out", str(out), "--resume"])
    assert plain.exit_code == 0, plain.output


def test_lora_adapts_the_encoder_and_saves_a_plain_sam(micro_prepared, base, run_dir):
    config = _config(micro_prepared, base, lora_rank=2, lora_alpha=4.0, engine={"steps": 4, "eval_every": 4})
    result = _run(run_dir, config)
    before, after = read_state_dict(base), read_state_dict(result.model)
    assert set(after) == set(before)  # adapters merged: no lora_a / lora_b keys, loadable as plain SAM
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("image_encoder.blocks.") and k.endswith("attn.qkv.weight") for k in changed)
    assert not any(k.startswith("image_encoder.") and "qkv" not in k for k in changed)  # only qkv moves
    assert "LoRA rank 2" in json.loads(result.model.with_suffix(".json").read_text())["description"]
    assert result.curve and result.curve[-1][0] == 4
    load_sam(str(result.model))


def test_lora_resumes_to_the_same_weights(micro_prepared, base, tmp_path):
    config = _config(micro_prepared, base, lora_rank=2, engine={"steps": 4, "eval_every": 10})
    _straight_and_resumed(tmp_path, config, kill_at=3)


def test_cbdp_run_takes_fewer_steps_and_resumes_exactly(micro_prepared, base, tmp_path):
    config = _config(micro_prepared, base, pruning={"policy": "class", "min_class_share": 0.0},
                     engine={"batch_size": 4, "steps": 32, "eval_every": 100, "checkpoint_every": 3})
    straight, resumed = _straight_and_resumed(tmp_path, config, kill_at=13)
    report = json.loads((tmp_path / "straight" / "pruning.json").read_text())
    assert report["iterations"] == straight.steps < report["iterations_full_data"] == 32
    assert len(report["epochs"]) == 4 and report["epochs"][0]["slices"] > report["epochs"][1]["slices"]
    assert report["epochs"][-1]["slices"] == report["epochs"][0]["slices"]  # the annealed last epoch is whole
    assert resumed.steps == straight.steps
