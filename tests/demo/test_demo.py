"""``samadapt demo`` end to end on a micro model: every stage runs, the report grows stage by stage and is
complete at the end, reruns resume (an interrupted stage from its checkpoint), the duration is estimated."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import FinetuneConfig
from samadapt.data.prepared import PreparedDataset
from samadapt.demo import DemoPlan, MachineSpeed, _fine_tune, estimate_seconds, run_demo
from samadapt.models.embedding_cache import open_cache
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, load_sam, save_sam
from samadapt.training.engine import EngineSettings


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = REGISTRY["test_micro"]
    return save_sam(build_sam(spec), spec, tmp_path_factory.mktemp("model") / "micro.pth")


PLAN = DemoPlan(cases=4, train_steps=4, eval_every=2)
SEEN: dict = {}  # what the demo fixture's run showed: the report as each stage began, its status lines


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, micro_checkpoint) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("demo")
    stages: list[str] = []
    reports: dict[str, str | None] = {}  # summary.md as each stage begins
    lines: list[str] = []

    class Bar:
        def __init__(self, desc: str) -> None:
            stages.append(desc)
            summary = out / "report" / "summary.md"
            reports[desc] = summary.read_text() if summary.is_file() else None
            self.total = None

        def update(self, n: int = 1) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    summary = run_demo(out, model=str(micro_checkpoint), plan=PLAN, bars=lambda d, t: Bar(d), status=lines.append)
    assert stages == ["phantoms", "prepare", "box-fill baseline", "report", "embed", "zero-shot eval", "report",
                      "zero-shot validation", "single-prompt FT", "single-prompt FT: test", "report",
                      "multi-prompt FT", "multi-prompt FT: test", "report", "PHPG + CBDP FT", "PHPG + CBDP FT: test",
                      "report", "embed features", "ProMISe APM+IPS (auto)", "ProMISe APM+IPS (auto): test",
                      "ProMISe APM+IPS (auto): scores", "report"]
    SEEN.update(reports=reports, lines=lines)
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
    # PHPG with its defaults: no error head (off by default, docs/phpg.md), and the notes say so
    assert not (out / "runs" / "phpg-cbdp" / "error_head.pth").exists() and "error head off" in phpg["notes"]
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


def test_report_is_written_from_the_zero_shot_stage_on_and_grows(demo_run):
    out, summary = demo_run
    reports = SEEN["reports"]
    for stage in ("phantoms", "prepare", "box-fill baseline"):
        assert reports[stage] is None
    first = reports["embed"]  # the first page, before any model runs: the box-fill baseline
    assert first is not None and "**Partial report**" in first
    assert "| class | n | box-fill baseline |" in first and "## Cost" in first
    assert ("still to come: zero-shot micro (box), single-prompt FT, multi-prompt FT, PHPG + CBDP FT, "
            "ProMISe APM+IPS (auto)") in first
    zero = reports["zero-shot validation"]  # the zero-shot column comes first, as in the final report
    assert "| class | n | zero-shot micro (box) | box-fill baseline |" in zero
    assert "still to come: single-prompt FT, multi-prompt FT" in zero
    assert "| zero-shot micro (box) | 0 |" in zero  # its cost row
    grown = reports["multi-prompt FT"]
    assert "| zero-shot micro (box) | box-fill baseline | single-prompt FT |" in grown
    assert "still to come: multi-prompt FT, PHPG + CBDP FT" in grown
    last_partial = reports["embed features"]
    assert "PHPG + CBDP FT |" in last_partial and "still to come: ProMISe APM+IPS (auto)." in last_partial
    final = summary.read_text()
    assert "Partial report" not in final and "Total wall time" in final
    assert any(line.startswith("report so far: ") and str(summary) in line for line in SEEN["lines"])


def test_expected_duration_comes_first_with_the_fast_hint(demo_run):
    first = SEEN["lines"][0]
    assert first.startswith("expected duration of a fresh run: about ")
    assert "s per slice" in first and "`samadapt demo --fast` takes about" in first
    speed = MachineSpeed(encoder_s=0.2, step_s=1.5)
    full, fast = estimate_seconds(DemoPlan.for_mode(False), speed), estimate_seconds(DemoPlan.for_mode(True), speed)
    assert full > 1.5 * fast > 0
    slower = estimate_seconds(DemoPlan.for_mode(False), MachineSpeed(encoder_s=0.4, step_s=3.0))
    assert slower == pytest.approx(2 * full)


class StoppedError(Exception):
    pass


def test_an_interrupted_stage_continues_from_its_checkpoint(demo_run, micro_checkpoint, tmp_path):
    """A fine-tuning stage stopped after step 3 (checkpoint at 2) continues at step 3 on the next run and ends
    with the very model of the uninterrupted stage."""
    out, _ = demo_run
    prepared = PreparedDataset(out / "data" / "prepared")
    cache = open_cache(prepared, load_sam(str(micro_checkpoint)))
    engine = EngineSettings(steps=PLAN.train_steps, eval_every=PLAN.eval_every, checkpoint_every=PLAN.eval_every,
                            seed=PLAN.seed)
    config = FinetuneConfig(data=str(prepared.root), model=str(micro_checkpoint), prompting="multi", engine=engine)
    shown: dict[str, list[int]] = {}

    class Bar:
        def __init__(self, desc: str, stop_at: int | None) -> None:
            self.desc, self.n, self.stop_at, self.total = desc, 0, stop_at, None

        def update(self, n: int = 1) -> None:
            self.n += n
            shown.setdefault(self.desc, []).append(self.n)
            if self.n == self.stop_at:
                raise StoppedError

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    run_dir = tmp_path / "multi-prompt"
    with pytest.raises(StoppedError):
        _fine_tune(run_dir, config, prepared, cache, lambda d, t: Bar(d, 3), "multi-prompt FT", 0.5)
    assert torch.load(run_dir / "state.pt", weights_only=True)["step"] == 2
    shown.clear()
    lines: list[str] = []
    method, _ = _fine_tune(run_dir, config, prepared, cache, lambda d, t: Bar(d, None), "multi-prompt FT", 0.5,
                           lines.append)
    assert lines == [f"multi-prompt FT: continuing the interrupted run in {run_dir} from its last checkpoint"]
    assert shown["multi-prompt FT"][:2] == [3, 4]  # the bar picks up at step 3: steps 1-2 were not redone
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert method.iterations == 4 and [step for step, _ in method.curve] == [0, 2, 4]
    resumed = torch.load(run_dir / "model.pth", weights_only=True)
    straight = torch.load(out / "runs" / "multi-prompt" / "model.pth", weights_only=True)
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
