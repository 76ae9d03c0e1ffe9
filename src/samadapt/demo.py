"""``samadapt demo``: the whole pipeline from nothing, on CT phantoms, into one report folder.

Steps: generate CT phantoms -> prepare -> embed with the foundation model -> zero-shot box-prompt
evaluation (against a box-filling baseline) -> each adaptation method available -> evaluation -> report
(``report/summary.md`` with tables, plots and overlays). Each step resumes: a second run over the same
folder reuses the phantoms, the prepared data and the embedding cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samadapt.config import PrepareConfig
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.evaluation.box_protocol import (
    SlicePrediction,
    box_fill_predictions,
    predict_with_boxes,
    score_predictions,
)
from samadapt.evaluation.overlays import as_rgb, overlay, save_side_by_side
from samadapt.evaluation.report import MethodResult, write_report
from samadapt.models.embedding_cache import compute_embeddings
from samadapt.models.sam import load_sam

# A progress bar factory: (description, total) -> a context manager whose value has ``update(n)``
# (tqdm fits). The library never prints; the CLI hands tqdm in.
BarFactory = Callable[[str, int | None], AbstractContextManager]

METHODS_PENDING = (
    "multi-prompt fine-tuning (issue: multi-prompt), PHPG + CBDP (issues: PHPG, CBDP) and ProMISe (issue: "
    "ProMISe) join this demo as they land"
)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo run: ``fast`` trades statistical weight for time."""

    cases: int
    seed: int = 0

    @classmethod
    def for_mode(cls, fast: bool) -> DemoPlan:
        return cls(cases=8 if fast else 16)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _no_bars(desc: str, total: int | None) -> AbstractContextManager:
    return nullcontext(_NoBar())


def _counter(bar) -> Callable[[int, int], None]:
    """Adapt a bar to ``progress(done, total)`` callbacks."""
    state = {"done": 0}

    def progress(done: int, total: int) -> None:
        if getattr(bar, "total", None) != total and hasattr(bar, "total"):
            bar.total = total
        bar.update(done - state["done"])
        state["done"] = done

    return progress


def _overlays(
    prepared, predictions: list[SlicePrediction], out: Path, classes: list[str], count: int = 3
) -> list[Path]:
    """Side-by-side PNGs (slice | zero-shot prediction with true outlines) of the slices with most objects."""
    chosen = sorted(predictions, key=lambda p: (-len(p.objects), p.case_id, p.slice))[:count]
    paths = []
    for item in chosen:
        image = np.asarray(prepared.images(item.case_id)[item.slice])
        colours = [classes.index(obj.class_name) for obj in item.objects]
        panel = overlay(image, item.predicted, item.truth, colours)
        paths.append(save_side_by_side(out / f"overlay_{item.case_id}_s{item.slice:03d}.png", [as_rgb(image), panel]))
    return paths


def run_demo(
    out: Path,
    fast: bool = False,
    device: str = "cpu",
    model: str = "tiny",
    bars: BarFactory = _no_bars,
    plan: DemoPlan | None = None,
) -> Path:
    """Run the demo into ``out``; returns the path of ``report/summary.md``.

    ``plan`` overrides the sizes that ``fast`` picks (tests use a few cases).
    """
    plan = plan or DemoPlan.for_mode(fast)
    started = time.time()
    loaded = load_sam(model, device=device)
    with bars("phantoms", plan.cases) as bar:
        source = write_phantom_dataset(out / "data" / "phantoms", n_cases=plan.cases, seed=plan.seed,
                                       progress=_counter(bar))
    with bars("prepare", plan.cases) as bar:
        prepared = prepare_dataset(source, out / "data" / "prepared",
                                   PrepareConfig(image_size=loaded.spec.image_size, seed=plan.seed),
                                   progress=_counter(bar))
    with bars("embed", None) as bar:
        cache = compute_embeddings(prepared, loaded, device=device, progress=_counter(bar))
    classes = [c["name"] for c in prepared.classes]
    test_slices = sum(1 for case in prepared.case_ids("test") for _ in {o.slice for o in prepared.objects(case)})

    with bars("zero-shot eval", test_slices) as bar:
        t0 = time.time()
        zero_shot = list(predict_with_boxes(loaded.sam, prepared, cache, "test", progress=bar.update))
        zero_rows = score_predictions(prepared, iter(zero_shot))
        zero_wall = time.time() - t0
    fill_rows = score_predictions(prepared, box_fill_predictions(prepared, "test"))
    model_label = Path(model).stem if Path(model).suffix else model
    methods = [
        MethodResult(f"zero-shot {model_label} (box)", zero_rows, iterations=0, wall_s=zero_wall,
                     notes="tight ground-truth boxes, single-mask output"),
        MethodResult("box-fill baseline", fill_rows, iterations=0, notes="the prompt box itself as the mask"),
    ]
    report_dir = out / "report"
    overlays = _overlays(prepared, zero_shot, report_dir / "overlays", classes)
    n_test = len(prepared.case_ids("test"))
    context = [
        f"CT phantoms: {plan.cases} cases (seed {plan.seed}), prepared at {prepared.image_size} px; evaluated on "
        f"the {n_test} test case(s), every object of every slice, 2D metrics (NSD at 2 mm, HD95 in mm).",
        f"Model: `{model}` ({loaded.checkpoint or 'random weights'}). Device: {device}. "
        f"Total wall time: {time.time() - started:.0f} s.",
        f"Adaptation methods: {METHODS_PENDING}.",
        "Overlays: left the slice, right the zero-shot prediction (filled) with the ground truth (outline).",
    ]
    return write_report(report_dir, "samadapt demo: SAM adaptation on CT phantoms", methods, context, overlays)
