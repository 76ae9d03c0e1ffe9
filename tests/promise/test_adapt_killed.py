"""``samadapt adapt`` killed with SIGKILL mid-run, then resumed: the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
import textwrap

import torch
from typer.testing import CliRunner

from samadapt.cli import app
from support import killed_midway

SETTINGS = ["--set", "engine.steps=6", "--set", "engine.batch_size=2", "--set", "engine.checkpoint_every=2",
            "--set", "engine.eval_every=3", "--set", "engine.warmup_steps=1", "--set", "engine.lr=3e-3"]


def _curve(run) -> list[tuple]:
    """Step, loss and validation score of every step (not the timings)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("val_score")) for r in records]


def test_adapt_killed_mid_run_resumes_to_the_same_adapter(promise_prepared, micro_base, tmp_path):
    common = ["adapt", str(promise_prepared.root), "--set", f"model={micro_base}", *SETTINGS]
    straight = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output

    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys, time
        import torch
        from samadapt import cli
        torch.set_num_threads(1)  # as this test process (tests/conftest.py): the same floating-point sums
        shown = cli._RunBars.on_step
        def slowly(self, record):  # 0.3 s after each step: room to kill it between step 3 and the end
            shown(self, record)
            time.sleep(0.3)
        cli._RunBars.on_step = slowly
        sys.argv = ["samadapt", *{[*common, "--out", str(run)]!r}]
        cli.app()
    """)
    metrics = run / "metrics.jsonl"
    killed_midway(script, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3,
                  tmp_path / "killed.log")
    assert not (run / "adapter.pt").exists()  # killed before the end: state.pt of step 2 is what it left

    resumed = CliRunner().invoke(app, ["adapt", str(promise_prepared.root), "--out", str(run), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(tmp_path / "straight" / "adapter.pt", weights_only=True)
    b = torch.load(run / "adapter.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _curve(run) == _curve(tmp_path / "straight")
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
