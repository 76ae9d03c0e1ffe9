"""Evaluation reports: a Markdown summary, CSV and JSON tables, plots and overlay images.

A report compares *methods* (zero-shot SAM, a baseline, fine-tuned models...) on the same objects. Each
method contributes per-object score rows (from :mod:`samadapt.evaluation.box_protocol`), and optionally
its training cost (iterations, wall time) and a validation curve (Dice vs iterations).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samadapt.evaluation.figures import pyplot, save_figure
from samadapt.evaluation.markdown import markdown_table
from samadapt.evaluation.metrics import METRICS, mean_scores, per_case_mean, per_class_mean
from samadapt.io.atomic import atomic_path, write_json_atomic


@dataclass
class MethodResult:
    """What one method contributes to a report."""

    name: str
    rows: list[dict]
    iterations: int | None = None
    wall_s: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    notes: str = ""


def _fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def mean_of_groups(groups: Mapping[object, Mapping[str, float]], metric: str) -> float | None:
    """The mean of ``metric`` over the groups (classes or cases) where it is defined, ``None`` where it is in
    none: groups whose value is ``nan`` (HD95 when only one mask is empty) are left out, as
    :func:`~samadapt.evaluation.metrics.mean_scores` leaves out such objects within a group."""
    values = np.array([float(v[metric]) for v in groups.values()], dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def class_mean(rows: Sequence[Mapping[str, object]], metric: str) -> float:
    """Mean over classes of the per-class means of ``metric`` (the summary tables' last row; :func:`mean_of_groups`),
    ``nan`` when no class has a value."""
    mean = mean_of_groups(per_class_mean(rows, metrics=(metric,)), metric)
    return math.nan if mean is None else mean


def _group_table(methods: list[MethodResult], key: str, metric: str, means: Mapping[str, dict]) -> str:
    """One row per group of ``key`` (and their mean), one column per method, ``metric`` x 100."""
    groups = list(dict.fromkeys(row[key] for m in methods for row in m.rows))
    rows = []
    for name in groups:
        n = next((means[m.name][name]["n"] for m in methods if name in means[m.name]), 0)
        rows.append([name, n, *(_fmt(means[m.name].get(name, {}).get(metric)) for m in methods)])
    label = "**mean over classes**" if key == "class" else "**mean over cases**"
    rows.append([label, "", *(_fmt(mean_of_groups(means[m.name], metric)) for m in methods)])
    header = ["class" if key == "class" else "case", "n", *(m.name for m in methods)]
    return "\n".join(markdown_table(header, rows))


def summary_table(methods: list[MethodResult], metric: str = "dice") -> str:
    """Markdown table: one row per class (and the mean over classes, :func:`mean_of_groups`), one column per
    method, ``metric`` x 100."""
    return _group_table(methods, "class", metric, {m.name: per_class_mean(m.rows) for m in methods})


def per_case_table(methods: list[MethodResult], metric: str = "dice") -> str:
    """Markdown table: one row per case (and the mean over cases, :func:`mean_of_groups`), one column per
    method, ``metric`` x 100.

    Each case averages all its objects with equal weight (:func:`~samadapt.evaluation.metrics.per_case_mean`).
    """
    return _group_table(methods, "case_id", metric, {m.name: per_case_mean(m.rows) for m in methods})


def write_csv_atomic(path: Path, rows: Sequence[Mapping[str, object]], fields: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV atomically; columns are ``fields`` or every key of the rows in first-seen order."""
    if fields is None:
        fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def _plot_per_class(methods: list[MethodResult], path: Path, metric: str = "dice") -> None:
    plt = pyplot()
    classes = list(dict.fromkeys(row["class"] for m in methods for row in m.rows))
    per_class = {m.name: per_class_mean(m.rows) for m in methods}
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(classes) + 2), 4))
    for i, m in enumerate(methods):
        values = [per_class[m.name].get(c, {}).get(metric, math.nan) for c in classes]
        ax.bar(np.arange(len(classes)) + i * width, values, width, label=m.name)
    ax.set_xticks(np.arange(len(classes)) + width * (len(methods) - 1) / 2, classes, rotation=35, ha="right")
    ax.set_ylabel(metric.upper() if metric != "dice" else "Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def _plot_curves(methods: list[MethodResult], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for m in methods:
        if m.curve:
            its, values = zip(*m.curve, strict=True)
            ax.plot(its, values, marker="o", label=m.name)
    ax.set_xlabel("iterations")
    ax.set_ylabel("validation Dice (mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_report(out: Path, title: str, methods: list[MethodResult], context: list[str] | None = None,
                 overlays: list[Path] | None = None, sections: list[str] | None = None,
                 tables: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
                 per_object: Sequence[Mapping[str, object]] | None = None) -> Path:
    """Write ``summary.md``, ``per_object.csv``, ``summary.json`` and plots into ``out``; returns summary.md.

    Optional extras, for reports that score more than the summary methods:

    - ``sections``: Markdown lines placed after the per-class tables (before the cost table).
    - ``tables``: ``{name: rows}`` written as ``<name>.csv`` (columns: the rows' keys, first-seen order).
    - ``per_object``: rows for ``per_object.csv`` instead of the methods' rows (each with a ``method`` key);
      columns are the standard ones followed by any other keys of the rows, e.g. a jitter level.
    """
    out.mkdir(parents=True, exist_ok=True)
    fields = ["method", "case_id", "slice", "class", "instance", "area", *METRICS]
    if per_object is None:
        write_csv_atomic(out / "per_object.csv", [{"method": m.name, **row} for m in methods for row in m.rows],
                         fields)
    else:
        extra = [key for key in dict.fromkeys(k for row in per_object for k in row) if key not in fields]
        write_csv_atomic(out / "per_object.csv", per_object, [*fields, *extra])
    for name, rows in (tables or {}).items():
        write_csv_atomic(out / f"{name}.csv", rows)
    summary = {m.name: {"overall": mean_scores(m.rows), "per_class": per_class_mean(m.rows),
                        "iterations": m.iterations, "wall_s": m.wall_s, "curve": m.curve, "notes": m.notes}
               for m in methods}
    write_json_atomic(out / "summary.json", summary)
    _plot_per_class(methods, out / "dice_per_class.png")
    has_curves = any(m.curve for m in methods)
    if has_curves:
        _plot_curves(methods, out / "dice_vs_iterations.png")
    lines = [f"# {title}", ""]
    lines += [*(context or []), ""]
    lines += ["## Dice per class (x100)", "", summary_table(methods, "dice"), ""]
    lines += ["## NSD per class (x100)", "", summary_table(methods, "nsd"), ""]
    if sections:
        lines += [*sections, ""]
    cost = [[m.name, m.iterations if m.iterations is not None else "-", f"{m.wall_s:.1f}" if m.wall_s is not None
             else "-", m.notes] for m in methods]
    lines += ["## Cost", "", *markdown_table(["method", "iterations", "wall time (s)", "notes"], cost)]
    lines += ["", "![Dice per class](dice_per_class.png)", ""]
    if has_curves:
        lines += ["![Dice vs iterations](dice_vs_iterations.png)", ""]
    for path in overlays or []:
        lines += [f"![{path.stem}]({path.relative_to(out).as_posix()})", ""]
    with atomic_path(out / "summary.md", suffix=".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out / "summary.md"
