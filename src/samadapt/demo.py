"""``samadapt demo``: the whole pipeline from nothing, on CT phantoms, into one report folder.

Steps: generate CT phantoms -> prepare -> embed with the foundation model -> zero-shot box-prompt
evaluation (against a box-filling baseline) -> each adaptation method available -> evaluation -> report
(``report/summary.md`` with tables, plots and overlays).

The report grows while the demo runs: it is written as soon as the data is prepared, with the box-fill
baseline (which needs no model), then again each time a method finishes, with that method's row (the page
says which methods are still to come).

Each step resumes: a second run over the same folder reuses the phantoms, the prepared data, the embedding
cache and finished fine-tuning runs, and continues an interrupted one (even after ``kill -9``) from its last
checkpoint, which the training engine writes at least once a minute (``checkpoint_seconds``).

Before any work, :func:`measure_speed` times the image encoder on two slices and two fine-tuning steps on
synthetic data, and :func:`estimate_seconds` extrapolates the plan from them; the caller hears the expected
duration through ``status``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from samadapt.config import FinetuneConfig, PrepareConfig, PromiseConfig, RunConfig, config_to_dict, load_config
from samadapt.data.phantoms import DEFAULT_SIZE, write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.errors import ConfigError
from samadapt.evaluation.box_protocol import (
    SlicePrediction,
    box_fill_predictions,
    predict_with_boxes,
    score_predictions,
)
from samadapt.evaluation.overlays import save_overlays
from samadapt.evaluation.report import MethodResult, write_report
from samadapt.models.embedding_cache import compute_embeddings, encode_slices, open_cache
from samadapt.models.onnx_encoder import use_encoder_runtime
from samadapt.models.sam import LoadedModel, load_sam
from samadapt.progress import BarFactory, as_progress, bar_on_demand, no_bars
from samadapt.promise import load_adapter
from samadapt.promise.adapt import adapt, prepare_adapt_folder
from samadapt.promise.predict import predict_automatic_split
from samadapt.runtime import resolve_device
from samadapt.training.engine import STATE_FILE, EngineSettings
from samadapt.training.finetune import CONFIG_FILE, finetune, prepare_run_folder, validation_dice
from samadapt.training.multi_prompt import MultiPromptObjective
from samadapt.training.phpg import PHPGSettings
from samadapt.training.pruning import PruningSettings
from samadapt.training.slice_data import SliceSample, training_slices

Status = Callable[[str], None]
"""``status(line)``: one readable line for the user (the expected duration, a resumed run, the report)."""

TINY_NOTE = (
    " The demo runs on `tiny`, samadapt's self-pretrained test model, so that it fits in minutes on a CPU. The "
    "real foundation, `medsam_lite` (the default of every other command), needs 40x the encoder FLOPs per slice "
    "(75 vs 1.8 GFLOP) and decodes on a 16x larger grid, which takes the demo well past 10 minutes on 2 cores "
    "(`samadapt demo --model medsam_lite` runs it; docs/medsam_lite.md has its figures on real scans)."
)
METHODS_PENDING = "all three are here: multi-prompt fine-tuning, PHPG + CBDP and ProMISe (SAM frozen)"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo run: ``fast`` trades statistical weight for time."""

    cases: int
    train_steps: int = 240
    eval_every: int = 40
    seed: int = 0
    # PHPG + CBDP: full-data epochs (CBDP needs three: the first is whole, the last anneals), one correction
    # round and no mask-only round (CPU-sized), every well-learned slice pruned (docs/training.md)
    cbdp_epochs: int = 3

    @classmethod
    def for_mode(cls, fast: bool) -> DemoPlan:
        return cls(cases=8, train_steps=80, eval_every=20) if fast else cls(cases=12)

    @property
    def promise_steps(self) -> int:
        """ProMISe's steps (8 slices each): 150 in the full demo, 50 with ``--fast``."""
        return max(2, self.train_steps * 5 // 8)


# ----------------------------------------------------------------------------- expected duration


@dataclass(frozen=True)
class MachineSpeed:
    """What :func:`measure_speed` found: seconds per slice of the image encoder (a batch of two), and per
    fine-tuning step (4 slices x 6 boxes, forward and backward through SAM's prompt encoder and mask
    decoder)."""

    encoder_s: float
    step_s: float


# Cost of the demo's stages in units of the measured step (``step_s``) or encoder slice (``encoder_s``):
# a `samadapt demo --fast` run on `tiny` (2 CPU cores shared with a benchmark) set against measure_speed()
# on the same machine and load. Coarse by nature: a machine's load moves step times by 2x within minutes.
_COST = {
    "data_per_case": 0.5,  # phantoms + prepare, per case
    "embed_per_slice": 0.5,  # the cache, in encoder slices (batches of 8 run faster than the timed two)
    "features_per_slice": 0.65,  # the ProMISe cache (embeddings + block features), in encoder slices
    "eval_per_slice": 0.5,  # box-prompt decoding and 2D scoring of one test slice
    "val_per_slice": 0.08,  # decoding one validation slice (Dice only)
    "single_step": 0.3,  # a single-prompt step
    "multi_step": 0.8,  # a multi-prompt step
    "phpg_step": 2.2,  # a PHPG step (one correction round, error head)
    "cbdp_kept": 0.8,  # share of the full-data steps CBDP keeps over three epochs
    "promise_step": 1.6,  # a ProMISe step (8 slices, APM + IPS)
    "report": 1.0,  # one report rewrite (tables, plots, overlays)
}


def measure_speed(loaded: LoadedModel, device: torch.device | str = "cpu", objects: int = 6,
                  batch: int = 4) -> MachineSpeed:
    """Time this machine on ``loaded``: the image encoder on two slices, and two fine-tuning steps on synthetic
    slices with ``objects`` boxes each (two slices per timed step, scaled to ``batch``), after one untimed
    slice of each (a few seconds in all, on a loaded CPU). The model's weights are left as they were (no
    optimiser step; the gradients are dropped)."""
    device = torch.device(device)
    size = loaded.spec.image_size
    images = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
    encode_slices(loaded, images[:1], device=device)
    t0 = time.perf_counter()
    encode_slices(loaded, images, device=device)
    encoder_s = (time.perf_counter() - t0) / 2

    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(objects, size, size, dtype=torch.bool)
    for i in range(objects):  # boxes of a few sizes across the frame
        y, x, side = (i * size) // (objects + 1), (i * 7 * size // 11) % (size // 2), size // (3 + i % 3)
        masks[i, y : y + side, x : x + side] = True
    channels, grid = loaded.spec.prompt_embed_dim, loaded.spec.embedding_size
    sample = SliceSample(torch.randn(1, channels, grid, grid, generator=generator), masks, ["organ"] * objects,
                         torch.zeros(objects, dtype=torch.bool))
    objective = MultiPromptObjective()
    parameters = list(loaded.sam.mask_decoder.parameters())
    trainable = [p.requires_grad for p in parameters]

    def step(slices: int) -> None:
        loss = sum(objective.slice_loss(loaded.sam, sample, generator)[0] for _ in range(slices)) / slices
        loss.backward()

    try:
        for param in parameters:
            param.requires_grad_(True)
        step(1)
        t0 = time.perf_counter()
        step(2)
        step(2)
        step_s = (time.perf_counter() - t0) / 2 * batch / 2
    finally:
        for param, flag in zip(parameters, trainable, strict=True):
            param.grad = None
            param.requires_grad_(flag)
    return MachineSpeed(encoder_s, step_s)


def _split_cases(cases: int) -> tuple[int, int, int]:
    """(train, val, test) case counts of the default 0.7 / 0.15 / 0.15 split, about as prepare draws them."""
    held = max(1, round(0.15 * cases))
    return max(1, cases - 2 * held), held, held


def estimate_seconds(plan: DemoPlan, speed: MachineSpeed) -> float:
    """Expected wall time of a fresh demo run of ``plan`` on a machine of ``speed`` (phantoms of the default
    size: every one of their slices holds objects)."""
    cost, step, slices_per_case = _COST, speed.step_s, DEFAULT_SIZE[0]
    train, val, test = (n * slices_per_case for n in _split_cases(plan.cases))
    slices = plan.cases * slices_per_case
    validations = math.ceil(plan.train_steps / plan.eval_every)
    evaluation = test * cost["eval_per_slice"] * step + cost["report"] * step
    fine_tune = validations * val * cost["val_per_slice"] * step + evaluation
    phpg_steps = plan.cbdp_epochs * math.ceil(train / EngineSettings().batch_size) * cost["cbdp_kept"]
    seconds = (plan.cases * cost["data_per_case"] * step + slices * cost["embed_per_slice"] * speed.encoder_s
               + 2 * evaluation + val * cost["val_per_slice"] * step
               + plan.train_steps * (cost["single_step"] + cost["multi_step"]) * step + 2 * fine_tune
               + phpg_steps * cost["phpg_step"] * step + fine_tune
               + slices * cost["features_per_slice"] * speed.encoder_s
               + plan.promise_steps * cost["promise_step"] * step + val * cost["val_per_slice"] * step + evaluation)
    return float(seconds)


def describe_seconds(seconds: float) -> str:
    """``42 s``, ``7 min``, ``1.8 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _estimate_line(plan: DemoPlan, fast: bool, speed: MachineSpeed, model: str) -> str:
    line = (f"expected duration of a fresh run: about {describe_seconds(estimate_seconds(plan, speed))} on this "
            f"machine (measured now: image encoder {speed.encoder_s:.2f} s per slice, a fine-tuning step "
            f"{speed.step_s:.2f} s); finished stages of an earlier run are reused")
    if not fast:
        quick = estimate_seconds(DemoPlan.for_mode(True), speed)
        line += f"; `samadapt demo --fast` takes about {describe_seconds(quick)}"
    if model != "tiny":
        line += "; `--model tiny` is the quickest foundation"
    return line


# ----------------------------------------------------------------------------- stages


def _score_each(prepared, predictions: Iterable[SlicePrediction], bar) -> tuple[list[SlicePrediction], list[dict]]:
    """Score ``predictions`` slice by slice, moving ``bar`` once a slice is predicted *and* scored."""
    kept, rows = [], []
    for item in predictions:
        rows += score_predictions(prepared, iter([item]))
        kept.append(item)
        bar.update(1)
    return kept, rows


def _reusable_run(run_dir: Path, cls: type[RunConfig], config: RunConfig) -> bool:
    """Whether ``run_dir`` holds the demo's own run with these settings (finished or interrupted); any
    other content of the folder (other settings, e.g. ``--fast`` before, or a run stopped before it saved
    its config) is removed, since the folder belongs to the demo."""
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        try:
            if config_to_dict(load_config(cls, saved)) == config_to_dict(config):
                return True
        except ConfigError:  # settings of another samadapt version
            pass
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def _steps_bar(bar) -> Callable[[dict], None]:
    """An ``on_step`` that sets ``bar`` to each record's step (a resumed run starts where it stopped)."""
    done = [0]

    def on_step(record: dict) -> None:
        bar.update(record["step"] - done[0])
        done[0] = record["step"]

    return on_step


def _start_run(run_dir: Path, cls: type[RunConfig], config: RunConfig, label: str, status: Status,
               prepare: Callable[..., RunConfig] = prepare_run_folder) -> RunConfig:
    """Set up ``run_dir`` with ``prepare`` (the run's own folder step: it checks the run's inputs first),
    resuming a run of the same settings found there."""
    resume = _reusable_run(run_dir, cls, config)
    if resume and (run_dir / STATE_FILE).is_file() and not (run_dir / "model.pth").is_file() and not (
            run_dir / "adapter.pt").is_file():
        status(f"{label}: continuing the interrupted run in {run_dir} from its last checkpoint")
    return prepare(run_dir, config, resume=resume)


def _fine_tune(
    run_dir: Path, config: FinetuneConfig, prepared, cache, bars: BarFactory, label: str,
    base_val: float | None, status: Status = lambda line: None,
) -> tuple[MethodResult, list[SlicePrediction]]:
    """Train one fine-tuning run (resuming a finished or interrupted one with the same settings) and score it.

    ``base_val``: the validation Dice of the base model, the curve's step 0 (None without a validation split).
    """
    config = _start_run(run_dir, FinetuneConfig, config, label, status)
    with bars(label, config.engine.steps) as bar:
        on_step = _steps_bar(bar)
        result = finetune(run_dir, config, on_step=on_step)
        on_step({"step": result.steps})  # a finished run reused shows its steps too
    tuned = load_sam(str(result.model), device=config.device)
    with bars(f"{label}: test", _count_slices(prepared)) as bar:
        predictions, rows = _score_each(prepared, predict_with_boxes(tuned.sam, prepared, cache, "test"), bar)
    curve = list(result.curve)
    if curve and base_val is not None:
        curve.insert(0, (0, base_val))
    prompts = "all objects of a slice at once" if config.prompting == "multi" else "one random object per slice"
    if config.objective == "phpg":
        head = "on" if config.phpg.error_head else "off"
        prompts = (f"simulated users on all regions of a slice, {config.phpg.correction_rounds} correction + "
                   f"{config.phpg.mask_only_rounds} mask-only rounds, error head {head}")
    if (run_dir / "pruning.json").is_file():
        pruning = json.loads((run_dir / "pruning.json").read_text())
        prompts += f", CBDP: {pruning['iterations']} of {pruning['iterations_full_data']} full-data iterations"
    notes = f"decoder fine-tuned, {config.engine.batch_size} slices/step, {prompts}; wall time of training"
    method = MethodResult(label, rows, iterations=result.steps, wall_s=result.wall_s, curve=curve, notes=notes)
    return method, predictions


def _promise_auto(run_dir: Path, config: PromiseConfig, loaded: LoadedModel, prepared, bars: BarFactory,
                  label: str, status: Status = lambda line: None) -> MethodResult:
    """Train ProMISe APM + IPS (resuming a finished or interrupted run with the same settings) and score it
    without prompts: each object's row compares its class's automatic mask with the class's ground truth."""
    config = _start_run(run_dir, PromiseConfig, config, label, status, prepare=prepare_adapt_folder)
    with bar_on_demand(bars, "embed features") as progress:  # the APM reads the encoder's block outputs
        compute_embeddings(prepared, loaded, with_features=True, device=config.device, progress=progress)
    with bars(label, config.engine.steps) as bar:
        on_step = _steps_bar(bar)
        result = adapt(run_dir, config, on_step=on_step, loaded=loaded)
        on_step({"step": result.steps})
    adapter = load_adapter(result.adapter, device=config.device)
    with bars(f"{label}: test", None) as bar:
        auto = predict_automatic_split(adapter, loaded.sam, prepared, open_cache(prepared, loaded, with_features=True))
        bar.update(len(auto.predictions))
    with bars(f"{label}: scores", len(auto.predictions)) as bar:
        rows = _score_each(prepared, auto.predictions, bar)[1]
    notes = (f"SAM frozen, no prompts: APM points + IPS shift, {result.trainable_parameters:,} trainable parameters, "
             f"{config.engine.batch_size} slices/step; scored against each class's mask; false positives on "
             f"{100 * auto.false_positive_rate:.0f}% of the test slices' absent classes")
    return MethodResult(label, rows, iterations=result.steps, wall_s=result.wall_s, notes=notes)


def _count_slices(prepared, split: str = "test") -> int:
    """Slices of ``split`` with objects (what the box protocol decodes)."""
    return sum(len({o.slice for o in prepared.objects(case)}) for case in prepared.case_ids(split))


# ----------------------------------------------------------------------------- the run


STAGES = ("zero-shot", "box-fill baseline", "single-prompt FT", "multi-prompt FT", "PHPG + CBDP FT",
          "ProMISe APM+IPS (auto)")
"""The report's methods in the order of its columns (the zero-shot one is labelled with the model)."""


def run_demo(
    out: Path,
    fast: bool = False,
    device: str = "cpu",
    model: str = "tiny",
    bars: BarFactory = no_bars,
    plan: DemoPlan | None = None,
    status: Status = lambda line: None,
) -> Path:
    """Run the demo into ``out``; returns the path of ``report/summary.md``.

    ``plan`` overrides the sizes that ``fast`` picks (tests use a few cases). ``status`` hears the expected
    duration first, then where the report is (first written with the box-fill baseline, which needs no model,
    then rewritten as each method finishes, the zero-shot model first) and when an interrupted run is
    continued.
    """
    plan = plan or DemoPlan.for_mode(fast)
    started = time.time()
    loaded = use_encoder_runtime(load_sam(model, device=device), "auto", resolve_device(device))
    status(_estimate_line(plan, fast, measure_speed(loaded, resolve_device(device)), model))
    with bars("phantoms", plan.cases) as bar:
        source = write_phantom_dataset(out / "data" / "phantoms", n_cases=plan.cases, seed=plan.seed,
                                       progress=as_progress(bar))
    with bars("prepare", plan.cases) as bar:
        prepared = prepare_dataset(source, out / "data" / "prepared",
                                   PrepareConfig(image_size=loaded.spec.image_size, seed=plan.seed),
                                   progress=as_progress(bar))
    classes = [c["name"] for c in prepared.classes]
    test_slices = _count_slices(prepared)
    model_label = Path(model).stem if Path(model).suffix else model
    report_dir = out / "report"
    labels = (f"zero-shot {model_label} (box)", *STAGES[1:])
    done: dict[str, MethodResult] = {}

    def report(columns: list[list[SlicePrediction]]) -> Path:
        """Write the report of the methods ``done`` so far, in the order of ``labels`` (all: the final one)."""
        pending = tuple(label for label in labels if label not in done)
        with bars("report", None) as bar:
            overlays = save_overlays(prepared, columns, report_dir / "overlays", classes) if columns else []
            path = write_report(report_dir, "samadapt demo: SAM adaptation on CT phantoms",
                                [done[label] for label in labels if label in done],
                                _context(plan, prepared, model, loaded, device, time.time() - started, pending,
                                         len(columns)), overlays)
            bar.update(1)
        return path

    with bars("box-fill baseline", test_slices) as bar:  # needs no model: the report's first row, early
        fill_rows = _score_each(prepared, box_fill_predictions(prepared, "test"), bar)[1]
    done[labels[1]] = MethodResult(labels[1], fill_rows, iterations=0, notes="the prompt box itself as the mask")
    summary = report([])
    status(f"report so far: {summary} (rewritten as each method finishes)")
    with bar_on_demand(bars, "embed") as progress:  # no bar when the cache is already there
        cache = compute_embeddings(prepared, loaded, device=device, progress=progress)
    with bars("zero-shot eval", test_slices) as bar:
        t0 = time.time()
        zero_shot, zero_rows = _score_each(prepared, predict_with_boxes(loaded.sam, prepared, cache, "test"), bar)
        zero_wall = time.time() - t0
    done[labels[0]] = MethodResult(labels[0], zero_rows, iterations=0, wall_s=zero_wall,
                                   notes="tight ground-truth boxes, single-mask output")
    columns = [zero_shot]
    report(columns)
    base_val = None
    if prepared.case_ids(FinetuneConfig.val_split):
        with bars("zero-shot validation", None) as bar:  # the fine-tuning curves' step 0
            base_val = validation_dice(loaded, prepared, cache, FinetuneConfig.val_split)
            bar.update(_count_slices(prepared, FinetuneConfig.val_split))
    for prompting in ("single", "multi"):
        engine = EngineSettings(steps=plan.train_steps, eval_every=plan.eval_every,
                                checkpoint_every=plan.eval_every, seed=plan.seed)
        config = FinetuneConfig(data=str(prepared.root), model=model, prompting=prompting, engine=engine,
                                device=device)
        method, predictions = _fine_tune(out / "runs" / f"{prompting}-prompt", config, prepared, cache, bars,
                                         f"{prompting}-prompt FT", base_val, status)
        done[method.name] = method
        if prompting == "multi":
            columns.append(predictions)
        report(columns)
    epoch_steps = math.ceil(len(training_slices(prepared, "train")) / EngineSettings().batch_size)
    engine = EngineSettings(steps=plan.cbdp_epochs * epoch_steps, eval_every=plan.eval_every,
                            checkpoint_every=plan.eval_every, seed=plan.seed)
    phpg = FinetuneConfig(data=str(prepared.root), model=model, objective="phpg", engine=engine, device=device,
                          pruning=PruningSettings("class", ratio=1.0),
                          phpg=PHPGSettings(correction_rounds=1, mask_only_rounds=0))
    done[labels[4]] = _fine_tune(out / "runs" / "phpg-cbdp", phpg, prepared, cache, bars, labels[4], base_val,
                                 status)[0]
    report(columns)
    engine = replace(PromiseConfig().engine, steps=plan.promise_steps, eval_every=plan.promise_steps,
                     checkpoint_every=plan.eval_every, seed=plan.seed)
    promise = PromiseConfig(data=str(prepared.root), model=model, engine=engine, device=device)
    done[labels[5]] = _promise_auto(out / "runs" / "promise", promise, loaded, prepared, bars, labels[5], status)
    return report(columns)


def _context(plan: DemoPlan, prepared, model: str, loaded: LoadedModel, device: str, wall_s: float,
             pending: tuple[str, ...], n_columns: int) -> list[str]:
    """The report's opening paragraphs; while ``pending`` methods remain, a first line says so."""
    n_test = len(prepared.case_ids("test"))
    lines = []
    if pending:
        lines += [f"**Partial report** ({wall_s:.0f} s into the demo): still to come: {', '.join(pending)}. "
                  "The demo rewrites this page as each method finishes.", ""]
    panels = "the zero-shot and the multi-prompt prediction" if n_columns > 1 else "the zero-shot prediction"
    overlays = [f"Overlays: the slice, then {panels} (filled) with the ground truth (outline)."] if n_columns else []
    lines += [
        f"CT phantoms: {plan.cases} cases (seed {plan.seed}), prepared at {prepared.image_size} px; evaluated on "
        f"the {n_test} test case(s), every object of every slice, 2D metrics (NSD at 2 mm, HD95 in mm).",
        f"Model: `{model}` ({loaded.checkpoint or 'random weights'}). Device: {device}. "
        f"{'Wall time so far' if pending else 'Total wall time'}: {wall_s:.0f} s."
        + (TINY_NOTE if loaded.spec.name == "tiny" else ""),
        f"Adaptation methods: {METHODS_PENDING}.",
        f"Fine-tuning: the mask decoder, {plan.train_steps} steps of 4 training slices each, boxes from the "
        "ground truth with MedSAM-style outward shifts; single-prompt prompts one random object per slice, "
        "multi-prompt every object of the slice at once (the same steps, so it sees more objects). PHPG + CBDP: "
        f"{plan.cbdp_epochs} full-data epochs of PHPG prompting (simulated users' boxes and clicks plus one "
        "correction round; docs/phpg.md) with class-balanced data pruning of every well-learned slice (the first "
        "epoch is whole, the last anneals; the cost table says how many iterations it took), scored here with "
        "tight boxes like the rest (`samadapt eval --protocol interactive,robustness` for its own strengths).",
        f"ProMISe: SAM frozen, {plan.promise_steps} steps of 8 training slices of APM + IPS (docs/promise.md); its "
        "rows are automatic (no prompt at all): each object's row scores the class's mask, so multi-instance "
        "lesions are judged as one class mask (`samadapt eval --prompts auto` has the full protocol).",
        *overlays,
    ]
    return lines
