"""``samadapt eval``: several models side by side under the box-prompt protocol, in 2D and 3D, with box jitter.

For each model (a registry name such as ``tiny``, or the path of a SAM-format checkpoint, e.g. a fine-tuned
``runs/mp/model.pth``), the split's slices are embedded once (:func:`compute_embeddings` reuses a finished
cache of the same encoder, so fine-tuned models that keep the foundation encoder cost decoder time only)
and every object of every slice is decoded from its box at each jitter level
(:func:`~samadapt.evaluation.box_protocol.predict_with_boxes`).

**Jitter** ``j`` moves each box coordinate by ``U(-j, j)`` **model-frame pixels** (the prepared
``image_size`` grid, not the source image), clamped to the frame. The noise comes from ``seed``: every
model sees the same boxes, and a jitter level's offsets are the same draw scaled to ``j``.

Scores: per-object 2D rows (:func:`~samadapt.evaluation.box_protocol.score_predictions`) and per-(case,
class) 3D rows (:mod:`samadapt.evaluation.volume_scores`, with its caveat: prompts exist only on slices
holding the object). The box-filling baseline (the tight box itself as the mask) is a reference column.

The report folder (written as a whole, atomically; a rerun into the same folder replaces it)::

    summary.md               per-class Dice / NSD at the lowest jitter, per-case Dice, 3D per-class
                             Dice / NSD, jitter sensitivity (mean Dice over classes per model and level)
    per_object.csv           2D rows of every model and jitter level (columns method, ..., jitter_px)
    volume_scores.csv        3D rows of every model and jitter level
    jitter_sensitivity.csv   mean over classes of 2D / 3D Dice and NSD per model and jitter level
    summary.json             per-method summary at the lowest jitter (as :func:`write_report` writes it)
    evaluation.json          settings, models and every summary above; marks the folder as an eval report
    dice_per_class.png, overlays/overlay_<case>_s<slice>.png (slice | one panel per model)
    slice_results/           per model, the interactive / robustness protocols' finished slices: a rerun
                             into the same folder reads them back (:mod:`samadapt.evaluation.slice_store`)

``max_slices`` evaluates a seeded random sample of the split's slices, the same for every model (3D scores
need whole cases and are then left out); summary.md and evaluation.json give the headline means with 95%
bootstrap-over-slices intervals either way (:mod:`samadapt.evaluation.slice_sample`).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from samadapt.data.prepared import PreparedDataset
from samadapt.errors import ConfigError, DatasetError
from samadapt.evaluation.box_protocol import (
    SlicePrediction,
    box_fill_predictions,
    predict_with_boxes,
    score_predictions,
    slices_with_objects,
)
from samadapt.evaluation.interactive_protocol import InteractiveSettings
from samadapt.evaluation.markdown import markdown_table
from samadapt.evaluation.metrics import mean_scores, per_class_mean
from samadapt.evaluation.overlays import save_overlays
from samadapt.evaluation.prompt_protocols import (
    check_protocols,
    protocol_estimates,
    protocol_report,
    run_protocols,
    write_protocol_figures,
)
from samadapt.evaluation.report import MethodResult, class_mean, per_case_table, summary_table, write_report
from samadapt.evaluation.slice_sample import (
    INTERVAL_METHOD,
    bootstrap_estimate,
    describe_sample,
    estimates_json,
    estimates_table,
    parse_max_slices,
    sample_slices,
)
from samadapt.evaluation.slice_store import SLICES_DIR, check_workers, copy_stores
from samadapt.evaluation.volume_scores import score_case_volumes
from samadapt.io.atomic import atomic_dir, write_json_atomic
from samadapt.models.embedding_cache import compute_embeddings
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import load_sam, resolve_checkpoint, sam_digest
from samadapt.progress import BarFactory, Progress, as_progress, bar_on_demand, no_bars
from samadapt.runtime import resolve_device

DEFAULT_JITTERS: tuple[float, ...] = (0, 5, 10, 20)
BOX_FILL = "box-fill baseline"
REPORT_MARKER = "evaluation.json"
"""The file that marks a folder as an eval report (so a rerun may replace it)."""








# ----------------------------------------------------------------------------- labels and settings


def model_label(model: str) -> str:
    """A short readable name: a registry name as is; a path as ``<parent folder>/<stem>`` (``mp/model``)."""
    if model in REGISTRY:
        return model
    path = Path(model)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def model_labels(models: Sequence[str]) -> list[str]:
    """Unique labels of ``models``: :func:`model_label`, the path as given where those clash, then ``#k``."""
    labels = [model_label(m) for m in models]
    clashes = {label for label in labels if labels.count(label) > 1 or label == BOX_FILL}
    labels = [str(Path(m).parent / Path(m).stem) if label in clashes else label
              for m, label in zip(models, labels, strict=True)]
    seen: dict[str, int] = {BOX_FILL: 1}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def _jitter_name(jitter: float) -> str:
    return f"{jitter:g}"


def check_jitters(jitters: Iterable[float], image_size: int | None = None) -> tuple[float, ...]:
    """Jitter levels sorted and de-duplicated; :class:`ConfigError` for none, negative, non-finite or huge ones.

    Integral levels become ``int`` (``5.0`` -> ``5``). With ``image_size``, a level must be below it.
    """
    try:
        values = [float(j) for j in jitters]
    except (TypeError, ValueError):
        raise ConfigError(f"jitter levels {jitters!r}: give numbers of model-frame pixels, e.g. 0,5,10,20") from None
    bad = [v for v in values if not math.isfinite(v) or v < 0 or (image_size is not None and v >= image_size)]
    if not values or bad:
        limit = f" and below the {image_size} px frame" if image_size is not None else ""
        raise ConfigError(f"jitter levels {','.join(_jitter_name(v) for v in values) or '(none)'}: each must be a "
                          f"finite number of model-frame pixels >= 0{limit}, e.g. 0,5,10,20")
    return tuple(int(v) if v.is_integer() else v for v in sorted(set(values)))


def parse_jitters(text: str) -> tuple[float, ...]:
    """``"0,5,10,20"`` -> ``(0, 5, 10, 20)``; :class:`ConfigError` naming the list when it does not parse."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--jitter {text!r}: give comma-separated pixel amounts, e.g. 0,5,10,20") from None
    return check_jitters(values)


def check_report_folder(out: Path, prepared_root: Path) -> None:
    """Refuse a report folder ``out`` whose replacement would destroy something else (a file, the prepared
    data, a folder that is not an eval report); shared by the box and the automatic evaluation."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; give a folder for the report with --out")
    resolved, data = out.resolve(), prepared_root.resolve()
    if resolved == data or resolved in data.parents:
        raise ConfigError(f"{out}: holds the prepared dataset {prepared_root}; give another folder with --out")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MARKER).is_file() and not (out / SLICES_DIR).is_dir():
        raise ConfigError(f"{out}: exists and is not a samadapt eval report (no {REPORT_MARKER}); "
                          "choose a new or empty folder with --out")


# ----------------------------------------------------------------------------- scoring


@dataclass
class MethodScores:
    """Everything scored for one method at one jitter level."""

    rows: list[dict] = field(default_factory=list)
    volume_rows: list[dict] = field(default_factory=list)
    kept: list[SlicePrediction] = field(default_factory=list)
    wall_s: float = 0.0


def _score_stream(prepared: PreparedDataset, predictions: Iterable[SlicePrediction], nsd_tolerance_mm: float,
                  keep: set[tuple[str, int]], progress: Progress, total: int, volumes: bool = True) -> MethodScores:
    """Score predictions case by case (2D and 3D), keeping only the slices in ``keep`` in memory.

    ``progress(done, total)`` over the ``total`` slices of ``predictions``; a case's last slice counts once the
    case's 3D scores are done too, so a bar over the slices reaches its end with the work. Without ``volumes``
    (a sample of slices, whose cases are incomplete), no 3D scores.
    """
    started = time.perf_counter()
    scores = MethodScores()
    done = 0
    for case_id, group in itertools.groupby(predictions, key=lambda p: p.case_id):
        items = []
        for item in group:
            if items:
                done += 1
                progress(done, total)
            scores.rows += score_predictions(prepared, iter([item]), nsd_tolerance_mm)
            items.append(item)
        if volumes:
            scores.volume_rows += score_case_volumes(prepared, case_id, items, nsd_tolerance_mm)
        scores.kept += [p for p in items if (p.case_id, p.slice) in keep]
        done += 1
        progress(done, total)
    scores.wall_s = time.perf_counter() - started
    return scores


def _summary(rows: list[dict]) -> dict:
    return {"overall": mean_scores(rows), "per_class": per_class_mean(rows),
            "mean_over_classes": {m: class_mean(rows, m) for m in ("dice", "nsd")}}


def _jitter_table(per_model: dict[str, dict[float, MethodScores]], jitters: Sequence[float], volume: bool) -> str:
    table = []
    for label, by_jitter in per_model.items():
        cells = []
        for j in jitters:
            rows = by_jitter[j].volume_rows if volume else by_jitter[j].rows
            value = class_mean(rows, "dice")
            cells.append("-" if math.isnan(value) else f"{100 * value:.1f}")
        table.append([label, *cells])
    return "\n".join(markdown_table(["model", *(f"{_jitter_name(j)} px" for j in jitters)], table))


# ----------------------------------------------------------------------------- the command


def evaluate_models(
    prepared: PreparedDataset | str | os.PathLike[str],
    models: Sequence[str],
    out: str | os.PathLike[str],
    split: str = "test",
    jitters: Iterable[float] = DEFAULT_JITTERS,
    device: str = "cpu",
    seed: int = 0,
    nsd_tolerance_mm: float = 2.0,
    overlay_count: int = 3,
    bars: BarFactory = no_bars,
    protocols: Iterable[str] = ("box",),
    max_slices: int | None = None,
    workers: int = 1,
    interactive: InteractiveSettings = InteractiveSettings(),
) -> Path:
    """Evaluate ``models`` side by side with box prompts on ``split``; write the report folder ``out``.

    Args:
        prepared: a prepared dataset (or its folder) at the models' image size.
        models: registry names or SAM-format checkpoint paths; labelled by :func:`model_labels`.
        out: report folder. Built beside itself and renamed into place, so it appears complete or not at
            all; an earlier eval report there is replaced, any other non-empty folder is refused.
        split: ``train``, ``val`` or ``test``.
        jitters: box jitter levels in model-frame pixels (see the module docstring). The summary tables,
            the 3D tables and the overlays use the lowest level.
        device: torch device of the encoder and decoder.
        seed: seed of the jitter noise, the robustness prompts and the ``max_slices`` sample.
        nsd_tolerance_mm: boundary tolerance of NSD, 2D and 3D.
        overlay_count: how many slices (those with most objects) get an overlay image.
        bars: progress bar factory (see :data:`BarFactory`).
        protocols: ``box`` (always run) plus ``interactive`` and/or ``robustness``
            (:mod:`samadapt.evaluation.prompt_protocols`: their sections, CSVs, plot and JSON join the report).
            Their finished slices are kept in ``out/slice_results/`` as they finish, keyed by the model's
            weights, embeddings, data, split and settings; a rerun into ``out`` reads them back.
        max_slices: evaluate a seeded random sample (``seed``) of this many of the split's slices with objects,
            the same for every model; None: every slice.
        workers: processes scoring slices at once in the interactive and robustness protocols (CPU).
        interactive: the interactive protocol's settings (clicks scored, NoC cap and levels).

    Returns:
        The path of ``out/summary.md``.

    Raises:
        DatasetError: the prepared folder is missing or broken, the split is unknown or has no objects.
        CheckpointError: a model is neither registered nor a loadable SAM checkpoint.
        ConfigError: bad jitter levels, device, report folder, or a model at another image size.
    """
    dataset = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset(prepared)
    out = Path(out)
    models = list(models)
    if not models:
        raise ConfigError("no model to evaluate; pass --model NAME_OR_CHECKPOINT (e.g. --model tiny)")
    levels = check_jitters(jitters, dataset.image_size)
    chosen_protocols = check_protocols(protocols)
    base = levels[0]
    torch_device = resolve_device(device)
    max_slices = parse_max_slices(max_slices)
    workers = check_workers(workers, torch_device)
    slices = list(slices_with_objects(dataset, split))  # DatasetError for an unknown split
    if not slices:
        counts = ", ".join(f"{s} {len(dataset.case_ids(s))}" for s in ("train", "val", "test"))
        raise DatasetError(f"{dataset.root}: split '{split}' has no slices with objects (cases: {counts}); "
                           "choose another --split")
    total = len(slices)
    slices = sample_slices(slices, max_slices, seed)
    sampled = len(slices) < total
    check_report_folder(out, dataset.root)
    for model in models:
        resolve_checkpoint(model)  # a wrong name or path fails before any work
    labels = model_labels(models)
    classes = list(dataset.class_names)
    keep = {(c, s) for c, s, _ in sorted(slices, key=lambda x: (-len(x[2]), x[0], x[1]))[:overlay_count]}

    per_model: dict[str, dict[float, MethodScores]] = {}
    extras: dict[str, dict] = {}  # the interactive / robustness protocols' results per model
    provenance = []
    for model, label in zip(models, labels, strict=True):
        loaded = load_sam(model, device=torch_device)
        with bar_on_demand(bars, f"embed {label}") as progress:  # no bar when the cache is already there
            cache = compute_embeddings(dataset, loaded, device=torch_device, progress=progress)
        per_model[label] = {}
        for jitter in levels:
            with bars(f"eval {label} jitter {_jitter_name(jitter)}", len(slices)) as bar:  # decoded and scored
                predictions = predict_with_boxes(loaded.sam, dataset, cache, split, float(jitter), seed,
                                                 slices=slices)
                per_model[label][jitter] = _score_stream(dataset, predictions, nsd_tolerance_mm,
                                                         keep if jitter == base else set(), as_progress(bar),
                                                         len(slices), volumes=not sampled)
        identity = {"model": sam_digest(loaded.sam), "embeddings": cache.signature, "prepared": dataset.hash}
        extras[label] = run_protocols(chosen_protocols, loaded.sam, dataset, cache, split, seed, label, len(slices),
                                      bars, settings=interactive, sample=slices, store_folder=out / SLICES_DIR,
                                      identity=identity, workers=workers)
        provenance.append({"label": label, "model": model, "architecture": loaded.spec.name,
                           "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None})
        del loaded, cache
    with bars(BOX_FILL, len(slices)) as bar:
        fill = _score_stream(dataset, box_fill_predictions(dataset, split, slices), nsd_tolerance_mm, set(),
                             as_progress(bar), len(slices), volumes=not sampled)

    methods = [MethodResult(label, per_model[label][base].rows, wall_s=per_model[label][base].wall_s,
                            notes=f"`{p['model']}`") for label, p in zip(labels, provenance, strict=True)]
    methods.append(MethodResult(BOX_FILL, fill.rows, notes="the tight box itself as the mask"))
    methods_3d = [MethodResult(label, per_model[label][base].volume_rows) for label in labels]
    methods_3d.append(MethodResult(BOX_FILL, fill.volume_rows))

    per_object = [{"method": label, **row, "jitter_px": j}
                  for label in labels for j in levels for row in per_model[label][j].rows]
    per_object += [{"method": BOX_FILL, **row, "jitter_px": 0} for row in fill.rows]
    volume_rows = [{"method": label, "jitter_px": j, **row}
                   for label in labels for j in levels for row in per_model[label][j].volume_rows]
    volume_rows += [{"method": BOX_FILL, "jitter_px": 0, **row} for row in fill.volume_rows]
    sensitivity = [{"method": label, "jitter_px": j,
                    "dice_2d": class_mean(s.rows, "dice"), "nsd_2d": class_mean(s.rows, "nsd"),
                    "dice_3d": class_mean(s.volume_rows, "dice"), "nsd_3d": class_mean(s.volume_rows, "nsd")}
                   for label in labels for j, s in per_model[label].items()]

    n_cases = len({c for c, _, _ in slices})
    n_objects = sum(len(objs) for _, _, objs in slices)
    at = f"jitter {_jitter_name(base)} px"
    fill_dice = class_mean(fill.rows, "dice")
    worst = levels[-1]  # robustness: the same Dice at the largest jitter, beside the tight-box one

    def robustness(label: str) -> dict:
        if label == BOX_FILL or worst == base:
            return {}
        name = f"box Dice at {_jitter_name(worst)} px jitter"
        return {name: bootstrap_estimate(per_model[label][worst].rows, "dice")}

    estimates = {label: {"box Dice": bootstrap_estimate(scores.rows, "dice"),
                         "box NSD": bootstrap_estimate(scores.rows, "nsd"), **robustness(label),
                         **protocol_estimates(extras.get(label, {}))}
                 for label, scores in [*((label, per_model[label][base]) for label in labels), (BOX_FILL, fill)]}
    sample = {"evaluated": len(slices), "total": total, "max_slices": max_slices, "seed": seed,
              "unit": "slices with objects"}
    sections = [
        "## Means with 95% confidence intervals", "",
        describe_sample(len(slices), total, max_slices, seed, "slices with objects") + f" {n_objects} objects.",
        f"Box Dice / NSD at {at}, x100; Dice x100 and NoC in clicks for the interactive protocol; every number a "
        f"mean over classes. Interval: {INTERVAL_METHOD}, which treats slices as independent (slices of one "
        "patient are not).", "",
        *estimates_table(estimates), "",
        f"## Dice per case (x100), {at}", "", per_case_table(methods, "dice"), "",
    ]
    if fill.volume_rows:
        sections += [
            f"## 3D Dice per class (x100), {at}", "",
            "Per-slice masks stacked into one volume per case and class (spacing from the case); the table "
            "averages over cases (n = cases). Box prompts exist only on slices holding the object, so these "
            "are in-slice quality stacked: no false positives can appear on slices without the object.", "",
            summary_table(methods_3d, "dice"), "",
            f"## 3D NSD per class (x100, {nsd_tolerance_mm:g} mm), {at}", "", summary_table(methods_3d, "nsd"), "",
        ]
    else:
        sections += ["## 3D scores", "", "None: a case's volume needs all its slices, and this is a sample "
                     "(`--max-slices`)." if sampled else "None: the split holds 2D images only.", ""]
    sections += [
        "## Jitter sensitivity: mean Dice over classes (x100)", "",
        f"Each box coordinate moved by U(-j, j) model-frame pixels (frame {dataset.image_size} px, seed {seed}). "
        f"Box-fill baseline (tight boxes): {100 * fill_dice:.1f}.", "",
        "2D (per object):", "", _jitter_table(per_model, levels, volume=False), "",
    ]
    if fill.volume_rows:
        sections += ["3D (per case and class):", "", _jitter_table(per_model, levels, volume=True), ""]
    extra_sections, extra_tables, extra_summaries = protocol_report(extras)
    sections += extra_sections

    source_name = dataset.manifest.get("source", {}).get("name", dataset.root.name)
    context = [
        f"Dataset `{dataset.root}` ({source_name}, hash {dataset.hash[:12]}), split `{split}`: {n_cases} case(s), "
        f"{len(slices)} slices{f' (a random sample of {total})' if sampled else ''}, {n_objects} objects, prepared "
        f"at {dataset.image_size} px.",
        "Protocol: every object of every slice prompted at once with its ground-truth box, single-mask output, "
        f"scored in the model frame (2D per object; NSD at {nsd_tolerance_mm:g} mm, HD95 in mm). Tables below "
        f"are at {at}; jitter levels: {', '.join(_jitter_name(j) for j in levels)} px. Device: {device}.",
        "Models: " + "; ".join(f"`{p['label']}` = `{p['model']}` ({p['checkpoint'] or 'random weights'})"
                               for p in provenance) + ".",
        f"Overlays ({at}): left the slice, then one panel per model ({', '.join(labels)}): prediction filled, "
        "ground truth outlined.",
    ]
    evaluation = {
        "prepared": str(dataset.root), "prepared_hash": dataset.hash, "split": split,
        "jitters_px": list(levels), "summary_jitter_px": base, "seed": seed, "device": device,
        "nsd_tolerance_mm": nsd_tolerance_mm, "models": provenance,
        **({"interactive": asdict(interactive)} if "interactive" in chosen_protocols else {}),
        "results": {label: {"2d": {_jitter_name(j): _summary(s.rows) for j, s in per_model[label].items()},
                            "3d": {_jitter_name(j): _summary(s.volume_rows) for j, s in per_model[label].items()}}
                    for label in labels},
        "box_fill": {"2d": _summary(fill.rows), "3d": _summary(fill.volume_rows)},
        "jitter_sensitivity": sensitivity,
        "protocols": {"run": list(chosen_protocols), **extra_summaries},
        "max_slices": max_slices, "estimates": estimates_json(estimates, sample),
    }
    with bars("report", None) as bar, atomic_dir(out) as tmp:
        columns = [per_model[label][base].kept for label in labels]
        overlays = save_overlays(dataset, columns, tmp / "overlays", classes, overlay_count)
        write_protocol_figures(tmp, extras)
        write_report(tmp, f"samadapt eval: box prompts on the {split} split", methods, context, overlays,
                     sections=sections, tables={"volume_scores": volume_rows, "jitter_sensitivity": sensitivity,
                                                       **extra_tables},
                     per_object=per_object)
        copy_stores([r.get("store") for by_protocol in extras.values() for r in by_protocol.values()], tmp)
        write_json_atomic(tmp / REPORT_MARKER, evaluation)
        bar.update(1)
    return out / "summary.md"
