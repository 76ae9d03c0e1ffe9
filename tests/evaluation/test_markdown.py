"""One Markdown-table writer, and the one rule for a mean over classes or cases (groups without a value, e.g.
HD95 when only one mask is empty, are left out)."""

from __future__ import annotations

import math

import pytest

from samadapt.evaluation.markdown import markdown_table
from samadapt.evaluation.report import MethodResult, class_mean, mean_of_groups, per_case_table, summary_table


def test_a_table_line_by_line():
    assert markdown_table(["model", "0 px", "notes"], [["a/b", 91.5, ""], ["x|y", "-", "SAM frozen"]]) == [
        "| model | 0 px | notes |",
        "|---|---|---|",
        "| a/b | 91.5 | |",
        "| x\\|y | - | SAM frozen |",  # a pipe in a name stays in its column
    ]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]


def test_a_row_of_another_width_is_refused():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def _row(case: str, name: str, hd95: float) -> dict:
    return {"case_id": case, "class": name, "dice": 0.5, "iou": 0.4, "nsd": 0.6, "hd95": hd95}


def test_groups_without_a_value_are_left_out_of_the_mean():
    groups = {"liver": {"n": 1, "hd95": 2.0}, "tumour": {"n": 1, "hd95": math.nan}, "spleen": {"n": 2, "hd95": 4.0}}
    assert mean_of_groups(groups, "hd95") == 3.0
    assert mean_of_groups({"tumour": {"n": 1, "hd95": math.nan}}, "hd95") is None
    assert mean_of_groups({}, "dice") is None


def test_class_and_case_tables_follow_one_rule():
    """The class table once took np.mean (nan as soon as one class had none) and the case table np.nanmean;
    both now leave such groups out."""
    rows = [_row("c1", "liver", 2.0), _row("c2", "tumour", math.nan), _row("c3", "spleen", 4.0)]
    methods = [MethodResult("m", rows)]
    by_class = summary_table(methods, "hd95").splitlines()
    by_case = per_case_table(methods, "hd95").splitlines()
    assert by_class[0] == "| class | n | m |" and by_class[3] == "| tumour | 1 | - |"
    assert by_class[-1] == by_case[-1].replace("cases", "classes") == "| **mean over classes** | | 300.0 |"
    assert summary_table(methods, "dice").splitlines()[-1] == "| **mean over classes** | | 50.0 |"
    assert class_mean(rows, "hd95") == 3.0 and class_mean(rows, "dice") == 0.5  # the JSON's figure: the same rule
    assert math.isnan(class_mean(rows[1:2], "hd95")) and math.isnan(class_mean([], "dice"))
