"""``samadapt eval --prompts auto`` on micro phantoms: every (slice, class) pair scored, false positives on
absent classes, the promptable check agreeing with the box protocol, one-line CLI errors."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.evaluation.box_protocol import predict_with_boxes
from samadapt.evaluation.model_comparison import model_label
from samadapt.models.embedding_cache import open_cache
from samadapt.models.sam import load_sam
from samadapt.overlap import dice
from samadapt.promise.adapt import adapt, prepare_adapt_folder
from samadapt.promise.auto_protocol import CENTRE, GT_BOXES, PRIOR, evaluate_automatic


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, promise_prepared, micro_base) -> Path:
    from samadapt.config import PromiseConfig

    run = tmp_path_factory.mktemp("auto_eval") / "run"
    engine = replace(PromiseConfig().engine, steps=2, batch_size=2, eval_every=5)
    config = PromiseConfig(data=str(promise_prepared.root), model=str(micro_base), engine=engine)
    prepare_adapt_folder(run, config, resume=False)
    adapt(run, config)
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory, promise_prepared, adapter_run, micro_base) -> Path:
    out = tmp_path_factory.mktemp("auto_report") / "report"
    evaluate_automatic(promise_prepared, [str(adapter_run)], out, references=[str(micro_base)],
                       presence_threshold=0.0, nsd_tolerance_mm=None)
    return out


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_every_slice_and_class_is_scored_with_false_positives(report, promise_prepared, micro_base):
    evaluation = json.loads((report / "evaluation.json").read_text())
    classes = evaluation["classes"]
    assert classes == promise_prepared.class_names
    n_slices = sum(promise_prepared.images(c).shape[0] for c in promise_prepared.case_ids("test"))
    pairs = _rows(report / "automatic_pairs.csv")
    by_method: dict[str, list[dict]] = {}
    for row in pairs:
        by_method.setdefault(row["method"], []).append(row)
    adapter_label = "ProMISe apm+ips (run)"
    assert set(by_method) == {adapter_label, CENTRE, PRIOR, GT_BOXES, f"{model_label(str(micro_base))} + GT boxes"}
    assert all(len(rows) == n_slices * len(classes) for rows in by_method.values())
    present = {(r["case_id"], r["slice"], r["class"]) for r in pairs if r["present"] == "True"}
    objects = {(o.case_id, str(o.slice), o.class_name) for c in promise_prepared.case_ids("test")
               for o in promise_prepared.objects(c)}
    assert present == objects
    absent = [r for r in by_method[CENTRE] if r["present"] == "False"]
    assert absent and all(r["false_positive"] == "True" for r in absent)  # a click always gives a mask
    assert all(r["false_positive"] == "False" for r in by_method[GT_BOXES] if r["present"] == "False")
    for row in by_method[adapter_label]:  # the empty convention on absent pairs
        if row["present"] == "False":
            assert float(row["dice"]) == (0.0 if row["false_positive"] == "True" else 1.0)
    assert 0 <= evaluation["automatic"][adapter_label]["false_positive_rate"] <= 1
    text = (report / "summary.md").read_text()
    for heading in ("## Dice per class", "## False positives on slices without the class",
                    "## Promptable check: box prompts", "## Promptable check: 8 + 8 point prompts",
                    "## Adapters: what trains and what it costs", "## Cost"):
        assert heading in text
    assert "trainable parameters" in text and "s per epoch" in text
    assert list((report / "overlays").glob("*.png"))


def test_promptable_frozen_sam_boxes_agree_with_the_box_protocol(report, promise_prepared, micro_base):
    rows = [r for r in _rows(report / "promptable.csv") if r["method"] == "frozen SAM, box"]
    loaded = load_sam(str(micro_base))
    cache = open_cache(promise_prepared, loaded)
    expected = {}
    for item in predict_with_boxes(loaded.sam, promise_prepared, cache, "test"):
        for obj, pred, gt in zip(item.objects, item.predicted, item.truth, strict=True):
            expected[(item.case_id, str(item.slice), obj.class_name, str(obj.instance))] = dice(pred, gt)
    got = {(r["case_id"], r["slice"], r["class"], r["instance"]): float(r["dice"]) for r in rows}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-9)
    methods = {r["method"] for r in _rows(report / "promptable.csv")}
    assert methods == {"frozen SAM, box", "frozen SAM, points", "ProMISe apm+ips (run), box",
                       "ProMISe apm+ips (run), points"}


def test_presence_threshold_one_leaves_every_class_empty(tmp_path, promise_prepared, adapter_run):
    out = tmp_path / "report"
    evaluate_automatic(promise_prepared, [str(adapter_run)], out, presence_threshold=1.0, nsd_tolerance_mm=None)
    rows = [r for r in _rows(out / "automatic_pairs.csv") if r["method"].startswith("ProMISe")]
    assert rows and all(r["predicted_area"] == "0" for r in rows)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


@pytest.mark.parametrize("extra, expected", [
    (["--prompts", "auto"], "--adapter"),
    (["--adapter", "somewhere"], "--prompts auto"),
    (["--prompts", "guess"], "--prompts 'guess'"),
    (["--prompts", "auto", "--adapter", "no/such/run"], "no such adapter"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, promise_prepared, extra, expected):
    result = _invoke(str(promise_prepared.root), "--out", str(tmp_path / "r"), *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and expected in lines[0]
    assert not (tmp_path / "r").exists()


def test_cli_writes_the_report(tmp_path, promise_prepared, adapter_run):
    result = _invoke(str(promise_prepared.root), "--prompts", "auto", "--adapter", str(adapter_run),
                     "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("summary.md") and (tmp_path / "r" / "evaluation.json").is_file()
    automatic = json.loads((tmp_path / "r" / "evaluation.json").read_text())["automatic"]
    assert 0 <= automatic[GT_BOXES]["present"]["per_class"]["liver"]["nsd"] <= 1  # surface metrics computed


def test_an_interrupted_automatic_eval_resumes_on_its_sample(tmp_path, monkeypatch, promise_prepared, adapter_run):
    from samadapt.evaluation.slice_store import SLICES_DIR
    from samadapt.promise import auto_protocol

    real = auto_protocol._promptable
    calls: list[tuple[str, int]] = []

    def counted(setup, case_id, index, *args):
        calls.append((case_id, index))
        return real(setup, case_id, index, *args)

    def killed_at_the_third_slice(setup, case_id, index, *args):
        if len(calls) == 2:
            raise RuntimeError("killed")
        return counted(setup, case_id, index, *args)

    def run(out: Path) -> None:
        evaluate_automatic(promise_prepared, [str(adapter_run)], out, nsd_tolerance_mm=None, max_slices=5, seed=2)

    out = tmp_path / "report"
    monkeypatch.setattr(auto_protocol, "_promptable", killed_at_the_third_slice)
    with pytest.raises(RuntimeError, match="killed"):
        run(out)
    first = list(calls)
    monkeypatch.setattr(auto_protocol, "_promptable", counted)
    calls.clear()
    run(out)
    assert len(calls) == 3 and not set(calls) & set(first)  # the two finished slices read back
    monkeypatch.setattr(auto_protocol, "_promptable", real)
    run(tmp_path / "fresh")
    for name in ("automatic_pairs.csv", "promptable.csv", "false_positives.csv", "all_slices_and_3d.csv"):
        assert (out / name).read_text() == (tmp_path / "fresh" / name).read_text(), name
    resumed, fresh = (json.loads((folder / "evaluation.json").read_text()) for folder in (out, tmp_path / "fresh"))
    assert json.dumps({**resumed, "eval_s": 0}) == json.dumps({**fresh, "eval_s": 0})  # text: nan != nan
    sampled = {(r["case_id"], r["slice"]) for r in _rows(out / "automatic_pairs.csv")}
    n_slices = sum(promise_prepared.images(c).shape[0] for c in promise_prepared.case_ids("test"))
    assert len(sampled) == 5 and resumed["estimates"]["sample"] == {
        "evaluated": 5, "total": n_slices, "max_slices": 5, "seed": 2, "unit": "slices"}
    assert all(math.isnan(r["dice_3d"]) for r in resumed["all_slices_and_3d"])  # no 3D on a sample
    assert len(list((out / SLICES_DIR).glob("automatic-*.jsonl"))) == 1
    text = (out / "summary.md").read_text()
    assert "## Means with 95% confidence intervals" in text and "false-positive rate" in text
