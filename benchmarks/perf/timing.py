"""Wall-clock timing shared by the suite's measurements: medians of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from perf.machine_bound import synchronize


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1,
                   device: torch.device = torch.device("cpu")) -> tuple[float, list[float]]:
    """(median, all) seconds of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures."""
    return float(f"{value:.{digits}g}")
