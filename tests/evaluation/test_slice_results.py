"""Long evaluations: per-slice results on disk (resume), ``--max-slices`` samples with confidence intervals,
worker processes."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.errors import ConfigError
from samadapt.evaluation import interactive_protocol
from samadapt.evaluation.box_protocol import slices_with_objects
from samadapt.evaluation.interactive_protocol import InteractiveSettings, interactive_rows
from samadapt.evaluation.model_comparison import BOX_FILL, evaluate_models
from samadapt.evaluation.prompt_protocols import run_protocols
from samadapt.evaluation.slice_sample import bootstrap_estimate, parse_max_slices, sample_slices
from samadapt.evaluation.slice_store import SLICES_DIR, SliceStore, check_workers
from samadapt.models.embedding_cache import compute_embeddings
from samadapt.models.sam import load_sam


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the store


def test_store_reads_back_finished_slices_and_drops_a_line_cut_short(tmp_path):
    folder = tmp_path / "slice_results"
    store = SliceStore(folder, "interactive", {"model": "a"})
    assert store.done == {} and not folder.exists()  # nothing written before the first slice
    stored = store.append(("case_1", 3), [{"dice": np.float32(0.5), "noc": np.int64(2), "hd95": math.nan}])
    assert stored[0]["dice"] == 0.5 and type(stored[0]["noc"]) is int and math.isnan(stored[0]["hd95"])
    store.append(("case_1", 4), [])
    with store.path.open("ab") as handle:
        handle.write(b'{"case_id": "case_2", "sli')  # killed while writing a line

    again = SliceStore(folder, "interactive", {"model": "a"})
    assert set(again.done) == {("case_1", 3), ("case_1", 4)} and again.done[("case_1", 4)] == []
    again.append(("case_2", 0), [{"dice": 1.0}])
    lines = again.path.read_text().splitlines()
    assert len(lines) == 4 and [json.loads(line).get("slice") for line in lines[1:]] == [3, 4, 0]
    assert json.loads(lines[0])["identity"] == {"format": 1, "protocol": "interactive", "model": "a"}

    other = SliceStore(folder, "interactive", {"model": "b"})  # another model: another file, nothing read back
    assert other.path != store.path and other.done == {}
    (folder / other.path.name).write_text(lines[0] + "\n" + lines[1] + "\n")  # a foreign header under its name
    assert SliceStore(folder, "interactive", {"model": "b"}).done == {}


# ----------------------------------------------------------------------------- sample and intervals


def test_the_sample_is_seeded_nested_and_in_split_order():
    slices = [("case", i) for i in range(50)]
    ten = sample_slices(slices, 10, seed=3)
    assert len(ten) == 10 and ten == sorted(ten) and ten == sample_slices(slices, 10, seed=3)
    assert set(ten) < set(sample_slices(slices, 20, seed=3))  # a larger sample keeps the smaller one's slices
    assert ten != sample_slices(slices, 10, seed=4)
    assert sample_slices(slices, None) == slices == sample_slices(slices, 80)


@pytest.mark.parametrize("value", ["0", "-3", "many", 0, "2.5"])
def test_bad_sample_sizes_are_config_errors(value):
    with pytest.raises(ConfigError, match="--max-slices"):
        parse_max_slices(value)
    assert parse_max_slices(" 7") == 7 and parse_max_slices(None) is None
    with pytest.raises(ConfigError, match="--workers 0"):
        check_workers(0)
    with pytest.raises(ConfigError, match="--workers 1 on a GPU"):
        check_workers(2, "cuda:0")


def test_bootstrap_interval_resamples_slices_around_the_tables_mean():
    rng = np.random.default_rng(0)
    rows = [{"case_id": "c", "slice": s, "class": name, "dice": float(rng.uniform(low, low + 0.3))}
            for s in range(40) for name, low in (("liver", 0.6), ("lesion", 0.1))]
    rows.append({"case_id": "c", "slice": 0, "class": "liver", "dice": math.nan})  # left out
    estimate = bootstrap_estimate(rows, "dice")
    by_class = [np.nanmean([r["dice"] for r in rows if r["class"] == c]) for c in ("liver", "lesion")]
    assert estimate.mean == pytest.approx(np.mean(by_class)) and (estimate.slices, estimate.rows) == (40, 80)
    per_slice = [np.mean([r["dice"] for r in rows[2 * s : 2 * s + 2]]) for s in range(40)]
    normal = 1.96 * np.std(per_slice, ddof=1) / np.sqrt(40)  # the textbook interval of this paired design
    assert estimate.high - estimate.low == pytest.approx(2 * normal, rel=0.25)
    assert estimate.low < estimate.mean < estimate.high and estimate == bootstrap_estimate(rows, "dice")
    few = bootstrap_estimate([r for r in rows if r["slice"] < 8], "dice")
    assert few.high - few.low > estimate.high - estimate.low
    one = bootstrap_estimate([r for r in rows if r["slice"] == 1], "dice")
    assert one.low == pytest.approx(one.mean) == pytest.approx(one.high)
    assert re.fullmatch(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", estimate.format())


# ----------------------------------------------------------------------------- resume


def test_an_interrupted_eval_resumes_from_its_finished_slices(tmp_path, monkeypatch, phantom_prepared, micro_models):
    a, b = map(str, micro_models)
    every = [(c, s) for c, s, _ in sample_slices(list(slices_with_objects(phantom_prepared, "test")), 5, seed=0)]
    real = interactive_protocol.click_session
    calls: list[tuple[str, int]] = []

    def killed_at_the_third_slice(sam, item, settings):
        if len(calls) == 2:
            raise RuntimeError("killed")
        return counted(sam, item, settings)

    def counted(sam, item, settings):
        calls.append((item.case_id, item.slice))
        return real(sam, item, settings)

    def run(out: Path, models: list[str]) -> None:
        evaluate_models(phantom_prepared, models, out, jitters=(0,), protocols=("interactive", "robustness"),
                        max_slices=5)  # a sample, to be quick

    out = tmp_path / "report"
    monkeypatch.setattr(interactive_protocol, "click_session", killed_at_the_third_slice)
    with pytest.raises(RuntimeError, match="killed"):
        run(out, [a])
    [stored] = (out / SLICES_DIR).glob("interactive-*.jsonl")
    assert len(stored.read_text().splitlines()) == 1 + 2 and not (out / "evaluation.json").exists()

    monkeypatch.setattr(interactive_protocol, "click_session", counted)
    calls.clear()
    run(out, [a, b])  # the folder holds only slice results: accepted as an unfinished report
    assert calls == every[2:] + every  # a: its first two slices read back; b, another model: nothing read back

    monkeypatch.setattr(interactive_protocol, "click_session", real)
    run(tmp_path / "fresh", [a, b])
    for name in ("per_object.csv", "interactive.csv", "interactive_per_object.csv", "robustness.csv",
                 "robustness_per_object.csv", "evaluation.json"):
        assert (out / name).read_text() == (tmp_path / "fresh" / name).read_text(), name
    kept = sorted(p.name for p in (out / SLICES_DIR).iterdir())
    assert len(kept) == 4 and kept == sorted(p.name for p in (tmp_path / "fresh" / SLICES_DIR).iterdir())


def test_other_settings_get_their_own_slice_results(tmp_path, phantom_prepared, micro_models):
    loaded = load_sam(str(micro_models[0]))
    cache = compute_embeddings(phantom_prepared, loaded)
    sample = sample_slices(list(slices_with_objects(phantom_prepared, "test")), 2, seed=0)
    folder, short = tmp_path / SLICES_DIR, InteractiveSettings(dice_clicks=2, max_clicks=3)

    def run(seed: int, settings: InteractiveSettings = short) -> dict:
        return run_protocols(("interactive", "robustness"), loaded.sam, phantom_prepared, cache, "test", seed, "a",
                             settings=settings, sample=sample, store_folder=folder, identity={"model": "a"})

    first = run(0)
    assert run(0)["robustness"]["rows"] == first["robustness"]["rows"]
    assert len(list(folder.iterdir())) == 2
    reseeded = run(1)  # new robustness prompts; the interactive user has no randomness: its file is reused
    assert reseeded["interactive"]["store"].path == first["interactive"]["store"].path
    assert reseeded["robustness"]["store"].path != first["robustness"]["store"].path
    assert reseeded["robustness"]["rows"] != first["robustness"]["rows"]
    longer = run(0, InteractiveSettings(dice_clicks=2, max_clicks=4))
    assert longer["interactive"]["store"].path != first["interactive"]["store"].path
    assert len(list(folder.iterdir())) == 4


def test_worker_processes_score_the_same_rows(tmp_path, phantom_prepared, micro_models):
    loaded = load_sam(str(micro_models[0]))
    cache = compute_embeddings(phantom_prepared, loaded)
    settings = InteractiveSettings(dice_clicks=2, max_clicks=3)
    sample = sample_slices(list(slices_with_objects(phantom_prepared, "test")), 4, seed=0)
    alone = interactive_rows(loaded.sam, phantom_prepared, cache, "test", settings, slices=sample)
    store = SliceStore(tmp_path, "interactive", {"test": 1})
    done = []
    two = interactive_rows(loaded.sam, phantom_prepared, cache, "test", settings,
                           lambda finished, total: done.append((finished, total)), slices=sample, store=store,
                           workers=2)
    assert two == alone and done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(store.done) == {(c, s) for c, s, _ in sample}


# ----------------------------------------------------------------------------- the command line


def test_max_slices_scores_one_sample_for_every_model_and_prints_intervals(tmp_path, phantom_prepared,
                                                                            micro_models):
    out = tmp_path / "report"
    a, b = map(str, micro_models)
    total = len(list(slices_with_objects(phantom_prepared, "test")))
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", a, "--model", b,
                                      "--jitter", "0,10", "--protocol", "box,interactive", "--max-slices", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(out / "summary.md")
    for label in ("a/model", "b/model", BOX_FILL):
        line = next(line for line in lines if line.startswith(f"{label}: "))
        assert re.search(r"box Dice \d+\.\d \[\d+\.\d, \d+\.\d\]", line), line
        # robustness beside it: the same Dice at the largest jitter (the box-fill baseline has no jitter)
        jittered = re.search(r"box Dice at 10 px jitter \d+\.\d \[\d+\.\d, \d+\.\d\]", line)
        assert (jittered is None) == (label == BOX_FILL), line
    assert "interactive NoC@90" in next(line for line in lines if line.startswith("a/model: "))
    assert f"3 of {total} slices with objects" in lines[-2] and "95% CI" in lines[-2]

    per_object = _rows(out / "per_object.csv")
    chosen = {m: {(r["case_id"], r["slice"]) for r in per_object if r["method"] == m} for m in ("a/model", "b/model")}
    assert len(chosen["a/model"]) == 3 and chosen["a/model"] == chosen["b/model"] == {
        (r["case_id"], r["slice"]) for r in per_object if r["method"] == BOX_FILL}
    clicked = {(r["case_id"], r["slice"]) for r in _rows(out / "interactive_per_object.csv")}
    assert clicked == chosen["a/model"]
    text = (out / "summary.md").read_text()
    assert "## Means with 95% confidence intervals" in text and "percentile bootstrap over slices" in text
    assert f"Sample: 3 of the split's {total} slices with objects" in text and "a case's volume needs" in text
    estimates = json.loads((out / "evaluation.json").read_text())["estimates"]
    assert estimates["sample"]["evaluated"] == 3 and estimates["sample"]["total"] == total
    dice = estimates["models"]["a/model"]["box Dice"]
    assert dice["low"] <= dice["mean"] <= dice["high"] and dice["slices"] == 3


@pytest.mark.parametrize("option, value", [("--max-slices", "0"), ("--max-slices", "-4"), ("--max-slices", "all"),
                                           ("--workers", "0"), ("--workers", "-2")])
def test_cli_bad_sample_or_worker_count_is_one_line_exit_2(tmp_path, phantom_prepared, option, value):
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), option, value, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and f"{option} {value}" in lines[0]
    assert not out.exists()
