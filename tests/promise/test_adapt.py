"""``samadapt adapt`` on CT phantoms with a micro SAM: SAM stays bit-identical, only APM/IPS train, the loss
falls, a killed run resumes to the same weights, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PromiseConfig
from samadapt.models.sam import load_sam, sam_digest
from samadapt.promise import load_adapter
from samadapt.promise.adapt import adapt, prepare_adapt_folder
from samadapt.training.engine import EngineSettings


class KilledError(RuntimeError):
    pass


def _run(run_dir: Path, config: PromiseConfig, **kw):
    prepare_adapt_folder(run_dir, config, resume=False)
    return adapt(run_dir, config, **kw)


@pytest.mark.parametrize("mode, kind", [("apm+ips", "resnet"), ("ips", "resnet"), ("apm", "cross_attention")])
def test_sam_is_bit_identical_and_only_the_adapter_is_optimised(promise_config, micro_base, tmp_path, mode, kind):
    loaded = load_sam(str(micro_base))
    before = {k: v.clone() for k, v in loaded.sam.state_dict().items()}
    config = promise_config(mode=mode, apm_kind=kind, engine={"steps": 3, "eval_every": 3})
    result = _run(tmp_path / "run", config, loaded=loaded)
    after = loaded.sam.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in loaded.sam.parameters())
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    adapter = load_adapter(result.adapter)
    names = {n for n, _ in adapter.named_parameters()}
    assert set(state["parameters"]) == names
    assert all(n.startswith(("apm.", "ips.")) for n in names)
    assert any(n.startswith("apm.") for n in names) == ("apm" in mode)
    assert any(n.startswith("ips.") for n in names) == ("ips" in mode)
    assert adapter.multimask == ("apm" in mode)  # the mode's default decoder output, recorded in the adapter
    optimised = [p for group in state["optimizer"]["param_groups"] for p in group["params"]]
    assert len(optimised) == len(names) == len(state["optimizer"]["state"])
    assert sum(p.numel() for p in adapter.parameters()) == result.trainable_parameters
    sidecar = json.loads(result.adapter.with_suffix(".json").read_text())
    assert sidecar["base_digest"] == sam_digest(loaded.sam) == sam_digest(load_sam(str(micro_base)).sam)
    assert sidecar["base_model"] == str(micro_base) and sidecar["mode"] == mode
    assert sidecar["training"]["steps"] == 3 and sidecar["training"]["seconds_per_epoch"] > 0
    assert not list((tmp_path / "run").glob("*.pth"))  # no SAM weights written
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "best_adapter.pt").is_file()


def test_decoder_output_default_follows_the_mode_and_can_be_set():
    assert PromiseConfig(mode="apm+ips").multimask_output is True
    assert PromiseConfig(mode="apm").multimask_output is True
    assert PromiseConfig(mode="ips").multimask_output is False
    assert PromiseConfig(mode="ips", multimask_output=True).multimask_output is True
    assert PromiseConfig(mode="apm+ips", multimask_output=False).multimask_output is False


def test_a_short_run_lowers_the_loss(tiny_prepared, tmp_path):
    """On the packaged small foundation model (a random micro SAM gives APM and IPS nothing to steer)."""
    engine = EngineSettings(steps=24, batch_size=2, lr=3e-3, warmup_steps=2, eval_every=24, checkpoint_every=24)
    config = PromiseConfig(data=str(tiny_prepared.root), model="tiny", engine=engine, promptable_weight=0.0)
    records: list[dict] = []
    _run(tmp_path / "run", config, on_step=records.append)
    for key in ("mask_loss", "presence_loss"):
        first = sum(r[key] for r in records[:6]) / 6
        last = sum(r[key] for r in records[-6:]) / 6
        assert last < 0.9 * first, (key, first, last)
    assert records[-1]["prompts"] >= 2 and "val_score" in records[-1]


def test_a_killed_run_resumes_to_the_same_weights(promise_config, tmp_path):
    config = promise_config(engine={"steps": 5, "checkpoint_every": 2, "eval_every": 3})
    straight = _run(tmp_path / "straight", config)

    def kill(record: dict) -> None:
        if record["step"] == 3:
            raise KilledError

    with pytest.raises(KilledError):
        _run(tmp_path / "killed", config, on_step=kill)
    resumed = adapt(tmp_path / "killed", prepare_adapt_folder(tmp_path / "killed", config, resume=True))
    a = torch.load(straight.adapter, weights_only=True)
    b = torch.load(resumed.adapter, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.curve == straight.curve and resumed.steps == 5


@pytest.mark.parametrize("args, expected", [
    (["--set", "mode=sam"], "mode='sam'"),
    (["--set", "num_positive=20"], "num_positive=20"),
    (["--set", "stepz=3"], "unknown setting"),
    (["--set", "model=tiny"], "prepared at 64 px"),
    (["--set", "classes=[liver,brain]"], "brain"),
])
def test_cli_bad_settings_exit_2_with_one_line(promise_prepared, micro_base, tmp_path, args, expected):
    result = CliRunner().invoke(app, ["adapt", str(promise_prepared.root), "--out", str(tmp_path / "r"),
                                      "--set", f"model={micro_base}", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and expected in lines[0]
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_cli_runs_resumes_and_refuses_changes(promise_prepared, micro_base, tmp_path):
    out = tmp_path / "r"
    common = ["adapt", str(promise_prepared.root), "--out", str(out)]
    first = CliRunner().invoke(app, [*common, "--set", f"model={micro_base}", "--set", "engine.steps=2",
                                     "--set", "engine.batch_size=2", "--set", "engine.eval_every=5"])
    assert first.exit_code == 0, first.output
    assert "adapter written to" in first.stdout and (out / "adapter.pt").is_file()
    used = CliRunner().invoke(app, [*common, "--set", f"model={micro_base}"])
    assert used.exit_code == 2 and "--resume" in used.stderr
    changed = CliRunner().invoke(app, [*common, "--resume", "--set", "engine.steps=3"])
    assert changed.exit_code == 2 and "saved config.yaml" in changed.stderr
    again = CliRunner().invoke(app, [*common, "--resume"])
    assert again.exit_code == 0, again.output
    missing = CliRunner().invoke(app, ["adapt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "nowhere" in missing.stderr
