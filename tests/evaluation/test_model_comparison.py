"""``samadapt eval``: models side by side, 2D + 3D, jitter levels, one atomic report folder, CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.errors import ConfigError
from samadapt.evaluation.box_protocol import predict_with_boxes
from samadapt.evaluation.model_comparison import (
    BOX_FILL,
    check_jitters,
    evaluate_models,
    model_labels,
    parse_jitters,
)
from samadapt.models.embedding_cache import compute_embeddings
from samadapt.models.sam import load_sam


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_model_labels_are_readable_and_unique() -> None:
    assert model_labels(["tiny", "runs/mp/model.pth", "runs/x/model.pth"]) == ["tiny", "mp/model", "x/model"]
    assert model_labels(["a/mp/model.pth", "b/mp/model.pth"]) == ["a/mp/model", "b/mp/model"]
    assert model_labels(["tiny", "tiny"]) == ["tiny", "tiny #2"]
    assert model_labels(["model.pth"]) == ["model"]


def test_jitter_levels_are_checked() -> None:
    assert parse_jitters("20, 0,5,5") == (0, 5, 20)
    assert parse_jitters("2.5") == (2.5,)
    for text in ("0,five", "", "0,-5", "nan"):
        with pytest.raises(ConfigError, match="jitter"):
            parse_jitters(text)
    with pytest.raises(ConfigError, match="64 px"):
        check_jitters([0, 64], image_size=64)


class _Bar:
    """Records each bar: its description, its total and how far it got."""

    def __init__(self, shown: list, desc: str, total: int | None) -> None:
        self.desc, self.total, self.n = desc, total, 0
        shown.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture(scope="module")
def report(tmp_path_factory, phantom_prepared, micro_models) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("eval") / "report"
    shown: list[_Bar] = []
    summary = evaluate_models(phantom_prepared, [str(p) for p in micro_models], out, jitters=(0, 20),
                              bars=lambda desc, total: _Bar(shown, desc, total))
    assert summary == out / "summary.md"
    for bar in shown:  # every counted bar ends exactly at its total
        assert bar.total is None or bar.n == bar.total, bar.desc
    return out, [bar.desc for bar in shown]


def test_two_models_side_by_side(report, phantom_prepared) -> None:
    out, stages = report
    # an embed bar shows only while a cache is computed (the models may share a finished one)
    assert [s for s in stages if not s.startswith("embed ")] == [
        "eval a/model jitter 0", "eval a/model jitter 20", "eval b/model jitter 0", "eval b/model jitter 20",
        BOX_FILL, "report"]
    text = (out / "summary.md").read_text()
    assert f"| class | n | a/model | b/model | {BOX_FILL} |" in text
    assert f"| case | n | a/model | b/model | {BOX_FILL} |" in text
    for heading in ("## Dice per class", "## NSD per class", "## Dice per case", "## 3D Dice per class",
                    "## 3D NSD per class", "## Jitter sensitivity"):
        assert heading in text
    assert "| model | 0 px | 20 px |" in text

    rows = _rows(out / "per_object.csv")
    [case] = phantom_prepared.case_ids("test")
    n_objects = len(phantom_prepared.objects(case))
    keys = {(r["method"], r["jitter_px"]) for r in rows}
    assert keys == {("a/model", "0"), ("a/model", "20"), ("b/model", "0"), ("b/model", "20"), (BOX_FILL, "0")}
    for key in keys:
        assert sum((r["method"], r["jitter_px"]) == key for r in rows) == n_objects

    n_classes = len({o.class_name for o in phantom_prepared.objects(case)})
    volume = _rows(out / "volume_scores.csv")
    assert len(volume) == 5 * n_classes
    assert {"n_slices", "voxels", "dice", "nsd", "hd95"} <= set(volume[0])
    fill_3d = [r for r in volume if r["method"] == BOX_FILL]
    assert all(0 < float(r["dice"]) <= 1 for r in fill_3d)

    sensitivity = _rows(out / "jitter_sensitivity.csv")
    assert [(r["method"], r["jitter_px"]) for r in sensitivity] == [
        ("a/model", "0"), ("a/model", "20"), ("b/model", "0"), ("b/model", "20")]

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [m["label"] for m in evaluation["models"]] == ["a/model", "b/model"]
    assert set(evaluation["results"]["a/model"]["3d"]) == {"0", "20"}
    assert set(json.loads((out / "summary.json").read_text())) == {"a/model", "b/model", BOX_FILL}

    overlays = sorted((out / "overlays").glob("*.png"))
    assert 1 <= len(overlays) <= 3
    for path in overlays:
        assert f"overlays/{path.name}" in text
        width, height = Image.open(path).size  # slice | a/model | b/model, 64 px drawn 8x, a legend below
        assert width == 3 * 512 and height > 512


def test_jitter_changes_predictions_reproducibly(phantom_prepared, micro_models) -> None:
    loaded = load_sam(str(micro_models[0]))
    cache = compute_embeddings(phantom_prepared, loaded)  # finished by the report fixture or now: cheap

    def predicted(jitter: float, seed: int = 0) -> list[np.ndarray]:
        return [p.predicted for p in predict_with_boxes(loaded.sam, phantom_prepared, cache, "test", jitter, seed)]

    tight, moved = predicted(0), predicted(20)
    assert any(not np.array_equal(a, b) for a, b in zip(tight, moved, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(moved, predicted(20), strict=True))


# ----------------------------------------------------------------------------- the command line


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:"), result.output
    return lines[0]


def test_cli_bad_model_path(tmp_path, phantom_prepared) -> None:
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", "tiny", "--model",
                                      str(tmp_path / "no.pth"), "--out", str(out)])
    assert "no.pth" in _one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("jitter", ["0,five", "-5", "0,,20"])
def test_cli_bad_jitter_list(tmp_path, phantom_prepared, jitter) -> None:
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--jitter", jitter, "--out", str(out)])
    line = _one_error_line(result)
    assert "jitter" in line and jitter in line
    assert not out.exists()


def test_cli_unknown_split_and_missing_dataset(tmp_path, phantom_prepared) -> None:
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--split", "holdout",
                                      "--out", str(tmp_path / "r")])
    assert "holdout" in _one_error_line(result)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert "nowhere" in _one_error_line(result)
    assert not (tmp_path / "r").exists()


def test_cli_refuses_a_folder_that_is_not_a_report(tmp_path, phantom_prepared, micro_models) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", str(micro_models[0]),
                                      "--out", str(out)])
    assert "not a samadapt eval report" in _one_error_line(result)
    assert (out / "notes.txt").read_text() == "keep me"


def test_failure_midway_writes_nothing(tmp_path, phantom_prepared, micro_models) -> None:
    broken = tmp_path / "broken" / "model.pth"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint")
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", str(micro_models[0]),
                                      "--model", str(broken), "--jitter", "0", "--out", str(out)])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]  # progress bars of the first model come before it
    assert last.startswith("samadapt: error:") and str(broken) in last
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_cli_rerun_replaces_the_report(tmp_path, phantom_prepared, micro_models) -> None:
    out = tmp_path / "report"
    a, b = (str(p) for p in micro_models)
    first = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", a, "--model", b,
                                     "--jitter", "0", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().splitlines()[-1] == str(out / "summary.md")
    assert "b/model" in (out / "summary.md").read_text()
    (out / "overlays" / "stale.png").write_bytes(b"old")

    second = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", a, "--jitter", "0",
                                      "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert second.stdout.strip().splitlines()[-1] == str(out / "summary.md")
    assert "b/model" not in (out / "summary.md").read_text()
    assert {r["method"] for r in _rows(out / "per_object.csv")} == {"a/model", BOX_FILL}
    assert not (out / "overlays" / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folders left behind


def test_no_embed_bar_when_the_cache_exists(tmp_path, phantom_prepared, micro_models) -> None:
    model = str(micro_models[0])
    compute_embeddings(phantom_prepared, load_sam(model))  # finished by the report fixture or now
    calls: list[tuple[int, int]] = []
    compute_embeddings(phantom_prepared, load_sam(model), progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # nothing to compute: no progress at all
    shown: list[_Bar] = []
    evaluate_models(phantom_prepared, [model], tmp_path / "r", jitters=(0,),
                    bars=lambda desc, total: _Bar(shown, desc, total))
    assert [bar.desc for bar in shown] == ["eval a/model jitter 0", BOX_FILL, "report"]
