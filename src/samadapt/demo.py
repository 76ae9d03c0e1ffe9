"""``samadapt demo``: the whole pipeline from nothing, on CT phantoms, into one report folder.

Steps: generate CT phantoms -> prepare -> embed with the foundation model -> zero-shot box-prompt
evaluation (against a box-filling baseline) -> each adaptation method available -> evaluation -> report
(``report/summary.md`` with tables, plots and overlays). Each step resumes: a second run over the same
folder reuses the phantoms, the prepared data, the embedding cache and finished fine-tuning runs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from samadapt.config import FinetuneConfig, PrepareConfig, PromiseConfig, config_to_dict, load_config
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.evaluation.box_protocol import (
    SlicePrediction,
    box_fill_predictions,
    predict_with_boxes,
    score_predictions,
)
from samadapt.evaluation.overlays import save_overlays
from samadapt.evaluation.report import MethodResult, write_report
from samadapt.models.embedding_cache import compute_embeddings, open_cache, resolve_device
from samadapt.models.onnx_encoder import use_encoder_runtime
from samadapt.models.sam import LoadedModel, load_sam
from samadapt.progress import BarFactory, as_progress, no_bars
from samadapt.promise import load_adapter
from samadapt.promise.adapt import adapt
from samadapt.promise.predict import predict_automatic_split
from samadapt.training.finetune import CONFIG_FILE, finetune, prepare_run_folder, validation_dice
from samadapt.training.slice_data import training_slices

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


def _fine_tune(
    run_dir: Path, config: FinetuneConfig, loaded: LoadedModel, prepared, cache, bars: BarFactory, label: str
) -> tuple[MethodResult, list[SlicePrediction]]:
    """Train one fine-tuning run (resuming a finished or killed one with the same settings) and score it."""
    saved = run_dir / CONFIG_FILE
    if saved.is_file() and config_to_dict(load_config(FinetuneConfig, saved)) != config_to_dict(config):
        shutil.rmtree(run_dir)  # the demo's own run of other settings (e.g. --fast before)
    config = prepare_run_folder(run_dir, config, resume=saved.is_file())
    with bars(label, config.steps) as bar:
        result = finetune(run_dir, config, on_step=lambda record: bar.update(1))
    tuned = load_sam(str(result.model), device=config.device)
    predictions = list(predict_with_boxes(tuned.sam, prepared, cache, "test"))
    curve = list(result.curve)
    if curve and prepared.case_ids(config.val_split):
        curve.insert(0, (0, validation_dice(loaded, prepared, cache, config.val_split)))
    prompts = "all objects of a slice at once" if config.prompting == "multi" else "one random object per slice"
    if config.objective == "phpg":
        prompts = (f"simulated users on all regions of a slice, {config.phpg_correction_rounds} correction + "
                   f"{config.phpg_mask_only_rounds} mask-only rounds, error head on")
    if (run_dir / "pruning.json").is_file():
        pruning = json.loads((run_dir / "pruning.json").read_text())
        prompts += f", CBDP: {pruning['iterations']} of {pruning['iterations_full_data']} full-data iterations"
    notes = f"decoder fine-tuned, {config.batch_size} slices/step, {prompts}; wall time of training"
    method = MethodResult(label, score_predictions(prepared, iter(predictions)), iterations=result.steps,
                          wall_s=result.wall_s, curve=curve, notes=notes)
    return method, predictions








def _promise_auto(run_dir: Path, config: PromiseConfig, loaded: LoadedModel, prepared, bars: BarFactory,
                  label: str) -> MethodResult:
    """Train ProMISe APM + IPS (resuming a finished or killed run with the same settings) and score it without
    prompts: each object's row compares its class's automatic mask with the class's ground truth."""
    saved = run_dir / CONFIG_FILE
    if saved.is_file() and config_to_dict(load_config(PromiseConfig, saved)) != config_to_dict(config):
        shutil.rmtree(run_dir)
    config = prepare_run_folder(run_dir, config, resume=saved.is_file())
    with bars(label, config.steps) as bar:
        result = adapt(run_dir, config, on_step=lambda record: bar.update(1), loaded=loaded)
    adapter = load_adapter(result.adapter, device=config.device)
    auto = predict_automatic_split(adapter, loaded.sam, prepared, open_cache(prepared, loaded, with_features=True))
    notes = (f"SAM frozen, no prompts: APM points + IPS shift, {result.trainable_parameters:,} trainable parameters, "
             f"{config.batch_size} slices/step; scored against each class's mask; false positives on "
             f"{100 * auto.false_positive_rate:.0f}% of the test slices' absent classes")
    return MethodResult(label, score_predictions(prepared, iter(auto.predictions)), iterations=result.steps,
                        wall_s=result.wall_s, notes=notes)


def run_demo(
    out: Path,
    fast: bool = False,
    device: str = "cpu",
    model: str = "tiny",
    bars: BarFactory = no_bars,
    plan: DemoPlan | None = None,
) -> Path:
    """Run the demo into ``out``; returns the path of ``report/summary.md``.

    ``plan`` overrides the sizes that ``fast`` picks (tests use a few cases).
    """
    plan = plan or DemoPlan.for_mode(fast)
    started = time.time()
    loaded = use_encoder_runtime(load_sam(model, device=device), "auto", resolve_device(device))
    with bars("phantoms", plan.cases) as bar:
        source = write_phantom_dataset(out / "data" / "phantoms", n_cases=plan.cases, seed=plan.seed,
                                       progress=as_progress(bar))
    with bars("prepare", plan.cases) as bar:
        prepared = prepare_dataset(source, out / "data" / "prepared",
                                   PrepareConfig(image_size=loaded.spec.image_size, seed=plan.seed),
                                   progress=as_progress(bar))
    with bars("embed", None) as bar:
        cache = compute_embeddings(prepared, loaded, device=device, progress=as_progress(bar))
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
    tuned_predictions = []
    for prompting in ("single", "multi"):
        config = FinetuneConfig(data=str(prepared.root), model=model, prompting=prompting, steps=plan.train_steps,
                                eval_every=plan.eval_every, checkpoint_every=plan.eval_every, device=device,
                                seed=plan.seed)
        method, predictions = _fine_tune(out / "runs" / f"{prompting}-prompt", config, loaded, prepared, cache,
                                         bars, f"{prompting}-prompt FT")
        methods.append(method)
        tuned_predictions.append(predictions)
    epoch_steps = math.ceil(len(training_slices(prepared, "train")) / FinetuneConfig.batch_size)
    phpg = FinetuneConfig(data=str(prepared.root), model=model, objective="phpg", pruning="class", prune_ratio=1.0,
                          phpg_correction_rounds=1, phpg_mask_only_rounds=0, steps=plan.cbdp_epochs * epoch_steps,
                          eval_every=plan.eval_every, checkpoint_every=plan.eval_every, device=device, seed=plan.seed)
    methods.append(_fine_tune(out / "runs" / "phpg-cbdp", phpg, loaded, prepared, cache, bars, "PHPG + CBDP FT")[0])
    promise = PromiseConfig(data=str(prepared.root), model=model, steps=plan.promise_steps,
                            eval_every=plan.promise_steps, checkpoint_every=plan.eval_every, device=device,
                            seed=plan.seed)
    methods.append(_promise_auto(out / "runs" / "promise", promise, loaded, prepared, bars, "ProMISe APM+IPS (auto)"))
    report_dir = out / "report"
    overlays = save_overlays(prepared, [zero_shot, tuned_predictions[-1]], report_dir / "overlays", classes)
    n_test = len(prepared.case_ids("test"))
    context = [
        f"CT phantoms: {plan.cases} cases (seed {plan.seed}), prepared at {prepared.image_size} px; evaluated on "
        f"the {n_test} test case(s), every object of every slice, 2D metrics (NSD at 2 mm, HD95 in mm).",
        f"Model: `{model}` ({loaded.checkpoint or 'random weights'}). Device: {device}. "
        f"Total wall time: {time.time() - started:.0f} s." + (TINY_NOTE if loaded.spec.name == "tiny" else ""),
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
        "Overlays: the slice, then the zero-shot and the multi-prompt prediction (filled) with the ground "
        "truth (outline).",
    ]
    return write_report(report_dir, "samadapt demo: SAM adaptation on CT phantoms", methods, context, overlays)
