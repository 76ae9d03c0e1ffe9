"""Evaluating a sample of a split's slices (``--max-slices N``), and the confidence intervals of the means.

**The sample.** :func:`sample_slices` keeps ``N`` slices of the split: a seeded random permutation of the
split's slices (``numpy.random.default_rng(seed)``), its first ``N`` in split order. Every model of an
evaluation is scored on the same sample, so models stay comparable, and samples nest: for one seed, the
slices of ``--max-slices 50`` are among those of ``--max-slices 100`` (a larger sample reuses the smaller
one's stored slices, :mod:`samadapt.evaluation.slice_store`).

**The intervals.** The headline numbers are means over classes of per-class means over objects (or over
(slice, class) pairs). Objects of one slice are not independent, so :func:`bootstrap_estimate` resamples
*slices*: a percentile bootstrap, :data:`BOOTSTRAP_RESAMPLES` resamples of the evaluated slices with
replacement, the whole statistic recomputed on each (a class missing from a resample drops out of that
resample's mean over classes, as it would from the tables). It is seeded, so a report and its rerun give
the same interval. With ``--max-slices`` it covers the error of the sampled estimate (conservatively: no
finite-population correction, which would shrink it by ``sqrt((total - N) / (total - 1))``); on the whole
split it is the spread of the mean over slices like these. Slices of one patient are correlated too, so it
understates the uncertainty about new patients.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from samadapt.errors import ConfigError
from samadapt.evaluation.markdown import markdown_table

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
INTERVAL_METHOD = (f"{round(100 * CONFIDENCE)}% percentile bootstrap over slices ({BOOTSTRAP_RESAMPLES} resamples "
                   "of the evaluated slices with replacement, the statistic recomputed on each)")

T = TypeVar("T")


def parse_max_slices(text: str | int | None) -> int | None:
    """``--max-slices``: None (every slice) or an int >= 1; :class:`ConfigError` (one line) otherwise."""
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"--max-slices {text}: give a number of slices >= 1 (or leave it out to evaluate "
                          "every slice)")
    return value


def sample_slices(slices: Sequence[T], max_slices: int | None, seed: int = 0) -> list[T]:
    """``max_slices`` of ``slices`` drawn at random with ``seed``, in their original order (all of them for
    None or a number at least their count). See the module docstring: the same for every model, nested."""
    if max_slices is None or max_slices >= len(slices):
        return list(slices)
    order = np.random.default_rng(seed).permutation(len(slices))
    return [slices[i] for i in sorted(order[:max_slices].tolist())]


def describe_sample(evaluated: int, total: int, max_slices: int | None, seed: int, what: str = "slices") -> str:
    """One sentence on which slices were evaluated."""
    if evaluated < total:
        return (f"Sample: {evaluated} of the split's {total} {what}, drawn at random with seed {seed} "
                f"(`--max-slices {max_slices}`); every model scored on the same slices.")
    return f"All {total} {what} of the split evaluated."


@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval; ``slices`` and ``rows`` (objects or pairs) it rests on.
    ``scale`` and ``digits`` say how to show it (Dice x100 with 1 digit, a click count as is with 2)."""

    mean: float
    low: float
    high: float
    slices: int
    rows: int
    scale: float = 100.0
    digits: int = 1

    def format(self) -> str:
        """``"71.2 [68.0, 74.1]"`` (``"-"`` without data)."""
        if math.isnan(self.mean):
            return "-"
        s, d = self.scale, self.digits
        return f"{self.mean * s:.{d}f} [{self.low * s:.{d}f}, {self.high * s:.{d}f}]"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        return cls(**{k: data[k] for k in ("mean", "low", "high", "slices", "rows", "scale", "digits")})


Statistic = Callable[[np.ndarray, list], np.ndarray]
"""``(means KxG, groups) -> K`` values: a statistic of per-group means (rows: resamples)."""


def mean_over_groups(means: np.ndarray, groups: list) -> np.ndarray:
    """The tables' statistic: the mean over groups (classes) present."""
    return np.nanmean(means, axis=1)


def bootstrap_estimate(
    rows: Sequence[Mapping[str, Any]],
    value: str | Callable[[Mapping[str, Any]], float],
    group: Callable[[Mapping[str, Any]], Hashable] = lambda row: row["class"],
    statistic: Statistic = mean_over_groups,
    scale: float = 100.0,
    digits: int = 1,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """``statistic`` of the per-group means of ``value`` over ``rows``, with a bootstrap-over-slices interval.

    Args:
        rows: score rows, each with ``case_id`` and ``slice`` (the resampled unit).
        value: the row key of the number (or a function of the row); rows where it is None or nan are left out.
        group: the group of a row (default its class); the statistic sees the mean of each group.
        statistic: of the ``KxG`` group means (default :func:`mean_over_groups`).
        seed: of the resampling (fixed, so reports reproduce).
    """
    get = (lambda row: row.get(value)) if isinstance(value, str) else value
    kept = []
    for row in rows:
        number = get(row)
        if number is not None and not (isinstance(number, float) and math.isnan(number)):
            kept.append(((row["case_id"], row["slice"]), group(row), float(number)))
    if not kept:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, scale, digits)
    slices = {key: i for i, key in enumerate(dict.fromkeys(k for k, _, _ in kept))}
    groups = list(dict.fromkeys(g for _, g, _ in kept))
    group_index = {g: i for i, g in enumerate(groups)}
    s_idx = np.array([slices[k] for k, _, _ in kept])
    g_idx = np.array([group_index[g] for _, g, _ in kept])
    sums = np.zeros((len(slices), len(groups)))
    counts = np.zeros_like(sums)
    np.add.at(sums, (s_idx, g_idx), [v for _, _, v in kept])
    np.add.at(counts, (s_idx, g_idx), 1.0)
    weights = np.random.default_rng(seed).multinomial(len(slices), np.full(len(slices), 1 / len(slices)),
                                                      size=resamples).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group absent from a resample: nan, dropped
        point = float(statistic((sums.sum(0) / counts.sum(0))[None], groups)[0])
        values = statistic((weights @ sums) / (weights @ counts), groups)
        tail = 100 * (1 - CONFIDENCE) / 2
        low, high = (float(v) for v in np.nanpercentile(values, [tail, 100 - tail]))
    return Estimate(point, low, high, len(slices), len(kept), scale, digits)


def estimates_table(estimates: Mapping[str, Mapping[str, Estimate]]) -> list[str]:
    """Markdown lines: one row per model, one column per estimate (``mean [low, high]``)."""
    columns = list(dict.fromkeys(name for by_name in estimates.values() for name in by_name))
    return markdown_table(["model", *columns], [[label, *(by_name[c].format() if c in by_name else "-"
                                                          for c in columns)] for label, by_name in estimates.items()])


def estimates_json(estimates: Mapping[str, Mapping[str, Estimate]], sample: Mapping[str, Any]) -> dict:
    """``evaluation.json["estimates"]``: the interval method, the sample and every estimate."""
    return {"interval": INTERVAL_METHOD, "confidence": CONFIDENCE, "sample": dict(sample),
            "models": {label: {name: e.to_dict() for name, e in by_name.items()}
                       for label, by_name in estimates.items()}}


def estimate_lines(evaluation: Mapping[str, Any]) -> list[str]:
    """The command's summary: one line per model with each estimate, from ``evaluation.json``."""
    found = evaluation.get("estimates")
    if not found:
        return []
    sample = found["sample"]
    where = (f"{sample['evaluated']} of {sample['total']} {sample.get('unit', 'slices')}"
             if sample["evaluated"] < sample["total"] else f"all {sample['total']} {sample.get('unit', 'slices')}")
    lines = []
    for label, by_name in found["models"].items():
        cells = [f"{name} {Estimate.from_dict(e).format()}" for name, e in by_name.items()]
        lines.append(f"{label}: " + ", ".join(cells))
    lines.append(f"(mean [{round(100 * found['confidence'])}% CI], bootstrap over slices; {where})")
    return lines
