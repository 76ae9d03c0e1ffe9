"""Interactive (Dice after k clicks, NoC) and robustness (Dice per behaviour, spread) protocols, and eval --protocol."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.errors import ConfigError
from samadapt.evaluation.interactive_protocol import (
    InteractiveSettings,
    click_session,
    clicks_to_reach,
    interactive_rows,
    interactive_summary,
)
from samadapt.evaluation.prompt_protocols import parse_protocols
from samadapt.evaluation.protocol_slices import protocol_slices
from samadapt.evaluation.robustness_protocol import ROBUSTNESS_BEHAVIOURS, robustness_rows, robustness_summary
from samadapt.models.embedding_cache import compute_embeddings
from samadapt.models.sam import load_sam


def test_noc_is_the_first_click_reaching_the_level_capped():
    ious = np.array([
        [0.5, 0.86, 0.91, 0.95],  # 85 at click 2, 90 at click 3
        [0.95, 0.2, 0.3, 0.3],  # reached at once (later clicks do not matter)
        [0.1, 0.2, 0.3, 0.89],  # 85 at click 4, never 90
        [0.1, 0.1, 0.1, 0.1],  # never
    ])
    assert clicks_to_reach(ious, 0.85, cap=20).tolist() == [2, 1, 4, 20]
    assert clicks_to_reach(ious, 0.90, cap=20).tolist() == [3, 1, 20, 20]
    assert clicks_to_reach(ious, 0.90, cap=2).tolist() == [2, 1, 2, 2]  # clicks beyond the cap are not counted


def test_summary_averages_per_class_then_over_classes():
    settings = InteractiveSettings(dice_clicks=2, max_clicks=4, thresholds=(0.9,))
    rows = [{"class": "a", "dice_1": 0.2, "dice_2": 0.4, "noc_90": 2, "fail_90": False},
            {"class": "a", "dice_1": 0.4, "dice_2": 0.6, "noc_90": 4, "fail_90": True},
            {"class": "b", "dice_1": 1.0, "dice_2": 1.0, "noc_90": 1, "fail_90": False}]
    summary = interactive_summary(rows, settings)
    assert summary["per_class"]["a"] == {"n": 2, "dice_at": pytest.approx([0.3, 0.5]), "noc_90": 3.0, "fail_90": 0.5}
    assert summary["mean_over_classes"]["dice_at"] == pytest.approx([0.65, 0.75])
    assert summary["mean_over_classes"]["noc_90"] == 2.0 and summary["mean_over_classes"]["fail_90"] == 0.25


@pytest.fixture(scope="module")
def micro(micro_models, phantom_prepared):
    loaded = load_sam(str(micro_models[0]))
    return loaded, compute_embeddings(phantom_prepared, loaded)


def test_click_sessions_follow_the_simulated_user_and_noc_agrees_with_the_curve(micro, phantom_prepared):
    loaded, cache = micro
    settings = InteractiveSettings(dice_clicks=3, max_clicks=5)
    item = next(protocol_slices(phantom_prepared, cache, "test"))
    dices, ious = click_session(loaded.sam, item, settings)
    assert dices.shape == ious.shape == (len(item.objects), 5)  # a random model reaches nothing: all 5 clicks
    assert ((0 <= dices) & (dices <= 1)).all() and (dices >= ious - 1e-9).all()  # Dice >= IoU always
    again = click_session(loaded.sam, item, settings)
    assert np.array_equal(dices, again[0])  # the simulated user is deterministic
    rows = interactive_rows(loaded.sam, phantom_prepared, cache, "test", settings)
    first = [r for r in rows if (r["case_id"], r["slice"]) == (item.case_id, item.slice)]
    assert [r["dice_3"] for r in first] == pytest.approx(dices[:, 2].tolist())
    for row, curve in zip(first, ious, strict=True):
        assert row["noc_90"] == clicks_to_reach(curve[None], 0.9, 5)[0] and row["noc_85"] <= row["noc_90"]


def test_robustness_prompts_are_the_same_for_every_model_and_spread_is_per_class(micro, phantom_prepared):
    loaded, cache = micro
    rows = robustness_rows(loaded.sam, phantom_prepared, cache, "test", seed=3)
    objects = sum(len(item.objects) for item in protocol_slices(phantom_prepared, cache, "test"))
    assert len(rows) == objects * len(ROBUSTNESS_BEHAVIOURS)
    assert rows == robustness_rows(loaded.sam, phantom_prepared, cache, "test", seed=3)
    summary = robustness_summary(rows)
    for name, entry in summary["per_class"].items():
        values = np.array(list(entry["dice"].values()))
        assert entry["std"] == pytest.approx(values.std()) and entry["range"] == pytest.approx(np.ptp(values))
        by_hand = np.mean([r["dice"] for r in rows if r["class"] == name and r["behaviour"] == "box_tight"])
        assert entry["dice"]["box_tight"] == pytest.approx(by_hand)
    assert set(summary["mean_over_classes"]["dice"]) == set(ROBUSTNESS_BEHAVIOURS)


def test_protocol_names_are_checked():
    assert parse_protocols("interactive") == ("box", "interactive")
    assert parse_protocols("robustness,box,interactive") == ("box", "interactive", "robustness")
    with pytest.raises(ConfigError, match="unknown protocol"):
        parse_protocols("box,clicks")


def test_eval_cli_adds_the_interactive_and_robustness_reports(tmp_path, phantom_prepared, micro_models):
    out = tmp_path / "report"
    a, b = map(str, micro_models)
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", a, "--model", b, "--jitter",
                                      "0", "--protocol", "box,interactive,robustness", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "summary.md").read_text()
    assert "## Interactive" in text and "NoC@90" in text and "## Human-factor robustness" in text
    assert (out / "interactive_curves.png").stat().st_size > 1000
    table = list(csv.DictReader((out / "interactive.csv").open()))
    assert {r["method"] for r in table} == {"a/model", "b/model"} and "noc_90" in table[0]
    assert "std" in next(csv.DictReader((out / "robustness.csv").open()))
    per_object = list(csv.DictReader((out / "robustness_per_object.csv").open()))
    assert {r["behaviour"] for r in per_object} == set(ROBUSTNESS_BEHAVIOURS)
    protocols = json.loads((out / "evaluation.json").read_text())["protocols"]
    assert protocols["run"] == ["box", "interactive", "robustness"]
    assert set(protocols["interactive"]) == {"a/model", "b/model"}
    assert len(protocols["interactive"]["a/model"]["mean_over_classes"]["dice_at"]) == 10
    plain = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--model", a, "--jitter", "0",
                                     "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0 and not (tmp_path / "plain" / "interactive.csv").exists()


def test_eval_cli_bad_protocol_is_one_line_exit_2(tmp_path, phantom_prepared):
    result = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--protocol", "box,noc",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown protocol(s) noc" in lines[0]
    assert not (tmp_path / "r").exists()


def test_eval_interactive_settings_group(tmp_path, phantom_prepared, micro_models):
    """``--set interactive.*`` reaches the protocol: 3 clicks scored, NoC capped at 4 at IoU 0.5; recorded."""
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "eval", str(phantom_prepared.root), "--model", str(micro_models[0]), "--jitter", "0", "--protocol",
        "interactive", "--max-slices", "3", "--out", str(out), "--set", "interactive.dice_clicks=3",
        "--set", "interactive.max_clicks=4", "--set", "interactive.thresholds=[0.5]"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["interactive"] == {"dice_clicks": 3, "max_clicks": 4, "thresholds": [0.5]}
    means = evaluation["protocols"]["interactive"]["a/model"]["mean_over_classes"]
    assert len(means["dice_at"]) == 3
    assert 1 <= means["noc_50"] <= 4
    table = next(csv.DictReader((out / "interactive.csv").open()))
    assert "noc_50" in table and "noc_90" not in table
    bad = CliRunner().invoke(app, ["eval", str(phantom_prepared.root), "--out", str(tmp_path / "bad"),
                                   "--set", "interactive.dice_clicks=5", "--set", "interactive.max_clicks=4"])
    assert bad.exit_code == 2 and "dice_clicks <= max_clicks" in bad.stderr
    assert not (tmp_path / "bad").exists()
