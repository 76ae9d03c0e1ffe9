"""``samadapt demo`` end to end on a micro model: every stage runs, the report is complete, reruns resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.demo import DemoPlan, run_demo
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, save_sam


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = REGISTRY["test_micro"]
    return save_sam(build_sam(spec), spec, tmp_path_factory.mktemp("model") / "micro.pth")


PLAN = DemoPlan(cases=4, train_steps=4, eval_every=2)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, micro_checkpoint) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("demo")
    stages: list[str] = []

    class Bar:
        def __init__(self, desc: str) -> None:
            stages.append(desc)
            self.total = None

        def update(self, n: int = 1) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    summary = run_demo(out, model=str(micro_checkpoint), plan=PLAN, bars=lambda d, t: Bar(d))
    assert stages == ["phantoms", "prepare", "embed", "zero-shot eval", "single-prompt FT", "multi-prompt FT",
                      "PHPG + CBDP FT", "ProMISe APM+IPS (auto)"]
    return out, summary


def test_report_has_tables_plots_and_overlays(demo_run):
    out, summary = demo_run
    text = summary.read_text()
    assert "## Dice per class" in text and "## NSD per class" in text and "box-fill baseline" in text
    assert "zero-shot micro (box)" in text
    report = out / "report"
    assert (report / "dice_per_class.png").stat().st_size > 1000
    overlays = sorted((report / "overlays").glob("*.png"))
    assert 1 <= len(overlays) <= 3
    for overlay in overlays:
        assert f"overlays/{overlay.name}" in text
    rows = list(csv.DictReader((report / "per_object.csv").open()))
    methods = {row["method"] for row in rows}
    assert methods == {"zero-shot micro (box)", "box-fill baseline", "single-prompt FT", "multi-prompt FT",
                       "PHPG + CBDP FT", "ProMISe APM+IPS (auto)"}
    # both methods scored the very same objects
    per_method = {m: sorted((r["case_id"], r["slice"], r["class"]) for r in rows if r["method"] == m) for m in methods}
    assert len(set(map(tuple, per_method.values()))) == 1
    summary_json = json.loads((report / "summary.json").read_text())
    fill = summary_json["box-fill baseline"]["overall"]
    assert 0.3 < fill["dice"] < 1.0  # a filled box overlaps a convex organ substantially, never perfectly
    multi = summary_json["multi-prompt FT"]
    assert multi["iterations"] == 4 and [step for step, _ in multi["curve"]] == [0, 2, 4]
    assert multi["overall"]["dice"] != summary_json["zero-shot micro (box)"]["overall"]["dice"]
    assert (report / "dice_vs_iterations.png").stat().st_size > 1000
    phpg = summary_json["PHPG + CBDP FT"]
    assert phpg["iterations"] >= 1 and "CBDP" in phpg["notes"]
    pruning = json.loads((out / "runs" / "phpg-cbdp" / "pruning.json").read_text())
    assert len(pruning["epochs"]) == PLAN.cbdp_epochs and pruning["iterations"] == phpg["iterations"]
    assert pruning["iterations"] < pruning["iterations_full_data"]  # the middle epoch was pruned
    assert (out / "runs" / "phpg-cbdp" / "error_head.pth").is_file()
    promise = summary_json["ProMISe APM+IPS (auto)"]
    assert promise["iterations"] == PLAN.promise_steps and "SAM frozen" in promise["notes"]
    assert (out / "runs" / "promise" / "adapter.pt").is_file() and not list((out / "runs" / "promise").glob("*.pth"))


def test_rerun_reuses_data_cache_and_finished_runs(demo_run, micro_checkpoint):
    out, _ = demo_run
    kept = sorted(p for p in (out / "data" / "prepared" / "embeddings").rglob("*.npy"))
    kept += sorted((out / "runs").rglob("*.pth"))
    before = {p: p.stat().st_mtime_ns for p in kept}
    manifest = (out / "data" / "prepared" / "manifest.json").read_text()
    run_demo(out, model=str(micro_checkpoint), plan=PLAN)
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert (out / "data" / "prepared" / "manifest.json").read_text() == manifest


def test_demo_cli_bad_model_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "no.pth")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and "no.pth" in lines[0]
    assert not (tmp_path / "d").exists()
