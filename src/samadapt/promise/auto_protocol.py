"""``samadapt eval --prompts auto``: ProMISe's automatic segmentation against naive automatic prompts and
prompted references, the promptable check, and the cost of each adapter.

**Automatic segmentation, per class.** Every slice of the split's cases (including slices without any
object, as far as ``samadapt prepare`` kept them) and every class of the adapters gives one *(slice,
class)* pair. The ground truth of a pair is the union of the class's objects on the slice (empty when the
class is absent). Each method predicts one ``SxS`` mask per pair (model frame, logit > 0, padding cleared):

- each adapter with an APM: its points for the class, its IPS shift (if any); its presence head, when it
  has one, empties the classes it judges absent (probability < ``presence_threshold``);
- frozen SAM, *centre point*: one positive click at the centre of the unpadded image, the same mask for
  every class (SAM's multimask output, the mask of highest predicted IoU);
- frozen SAM, *class-prior point*: one positive click at the class's mean box centre on the training
  split (the best place a prompt-free rule can know), multimask, highest predicted IoU;
- prompted references, *given ground-truth boxes*: frozen SAM and each ``--model`` (e.g. a ``samadapt
  train`` decoder), one tight box per object, the masks of a class united; an absent class gets no box and
  so an empty mask: these references are told where and whether each class is.

Scores. *Present pairs*: Dice / IoU / NSD / HD95 (the per-class tables; 2D). *Absent pairs*: a false
positive is any predicted pixel; the false-positive rate per class is FP pairs / absent pairs, with the mean
false-positive area. *All pairs*: Dice with the empty convention (absent and nothing predicted: 1; any
false positive: 0). *3D*: per case and class, Dice over all the case's evaluated slices together (voxel
counts; false positives on absent slices count), averaged over cases; not on a sample of slices.

**Promptable check.** Every object of every slice with objects, prompted with its tight box and with a
ground-truth point set (8 positive clicks inside, 8 negative near it, :mod:`samadapt.prompts.point_sets`,
seeded per slice from ``(seed, case, slice)``): frozen SAM (single-mask output, SAM's choice for boxes and
multi-click prompts) against each adapter with IPS (its shift and its decoder output). Dice and IoU per
class (no surface metrics: speed).

**Cost.** Each adapter's trainable parameters, training steps, wall time and time per epoch, from its sidecar.

**Long runs.** Each finished slice's rows go to ``out/slice_results/automatic-<key>.jsonl`` at once, and a
rerun into ``out`` reads them back (:mod:`samadapt.evaluation.slice_store`); ``max_slices`` evaluates a
seeded random sample of the slices, and the report gives the headline means with 95% bootstrap-over-slices
intervals (:mod:`samadapt.evaluation.slice_sample`); ``workers`` processes score slices at once.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.errors import ConfigError, DatasetError
from samadapt.evaluation.box_protocol import SlicePrediction
from samadapt.evaluation.markdown import markdown_table
from samadapt.evaluation.metrics import mean_scores, per_class_mean, segmentation_scores
from samadapt.evaluation.model_comparison import REPORT_MARKER, check_report_folder, model_labels
from samadapt.evaluation.overlays import save_overlays
from samadapt.evaluation.report import MethodResult, class_mean, summary_table, write_report
from samadapt.evaluation.slice_sample import (
    INTERVAL_METHOD,
    Estimate,
    bootstrap_estimate,
    describe_sample,
    estimates_json,
    estimates_table,
    parse_max_slices,
    sample_slices,
)
from samadapt.evaluation.slice_store import (
    SLICES_DIR,
    SliceKey,
    SliceStore,
    check_workers,
    copy_stores,
    score_slices,
    slice_seed,
)
from samadapt.io.atomic import atomic_dir, write_json_atomic
from samadapt.models.decoder import SamDecoder
from samadapt.models.embedding_cache import EmbeddingCache, ensure_cache
from samadapt.models.sam import LoadedModel, load_sam, resolve_checkpoint, sam_digest
from samadapt.overlap import dice, iou
from samadapt.progress import BarFactory, as_progress, no_bars
from samadapt.promise.adapter import PromiseAdapter, load_adapter, load_base_model, read_adapter_sidecar
from samadapt.promise.apm import class_priors
from samadapt.promise.objective import ground_truth_prompts, prompts_to
from samadapt.promise.predict import automatic_masks, prompted_masks, to_model_frame
from samadapt.promise.samples import class_boxes, promise_slices
from samadapt.prompts.boxes import boxes_from_masks
from samadapt.runtime import Ranks, resolve_device

CENTRE = "frozen SAM, centre point"
PRIOR = "frozen SAM, class-prior point"
GT_BOXES = "frozen SAM + GT boxes"


@dataclass
class AutoMethod:
    """One column of the automatic tables: its per-pair rows and cost."""

    name: str
    kind: str  # "adapter" | "naive" | "reference"
    rows: list[dict] = field(default_factory=list)  # every (slice, class) pair it covers
    iterations: int | None = None
    wall_s: float | None = None
    notes: str = ""


def _slice_truth(prepared: PreparedDataset, case_id: str, index: int, objects: list[SliceObject],
                 classes: list[str]) -> np.ndarray:
    """``KxSxS`` bool class masks of one slice: the union of each class's objects (empty when absent)."""
    labels = np.asarray(prepared.labels(case_id)[index])
    truth = np.zeros((len(classes), *labels.shape), dtype=bool)
    for obj in objects:
        if obj.class_name in classes:
            truth[classes.index(obj.class_name)] |= np.isin(labels, obj.values)
    return truth


def _best_of_three(sam, embedding: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Low-res logits ``Px4gx4g`` of single positive clicks ``Px2``: multimask, highest predicted IoU."""
    labels = torch.ones((points.shape[0], 1), dtype=torch.long, device=points.device)
    low_res, iou = SamDecoder(sam)(embedding, points=(points[:, None], labels), multimask=True)
    return low_res[torch.arange(points.shape[0]), iou.argmax(dim=1)]


def _scores(prepared: PreparedDataset, case_id: str, pred: np.ndarray, truth: np.ndarray,
            nsd_tolerance_mm: float | None) -> dict[str, float]:
    """Dice / IoU / NSD / HD95 of one mask; without a tolerance (``None``) the surface metrics are skipped
    (nan): MONAI's take ~20 ms a mask, most of an automatic evaluation's time."""
    if nsd_tolerance_mm is None:
        return {"dice": dice(pred, truth), "iou": iou(pred, truth), "nsd": math.nan, "hd95": math.nan}
    spacing = tuple(prepared.meta(case_id)["pixel_spacing_mm"])
    return segmentation_scores(pred, truth, spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm)


def _pair_row(prepared: PreparedDataset, case_id: str, index: int, class_name: str, pred: np.ndarray,
              truth: np.ndarray, nsd_tolerance_mm: float | None) -> dict:
    row = {"case_id": case_id, "slice": index, "class": class_name, "instance": 0, "area": int(truth.sum()),
           "present": bool(truth.any()), "predicted_area": int(pred.sum()),
           "intersection": int((pred & truth).sum())}
    if row["present"]:
        row.update(_scores(prepared, case_id, pred, truth, nsd_tolerance_mm))
    else:
        row.update({"dice": dice(pred, truth), "false_positive": bool(pred.any())})  # 1 or 0: truth is empty
    return row


def _present(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["present"]]


def false_positive_table(methods: Sequence[AutoMethod], classes: list[str]) -> tuple[str, list[dict]]:
    """Markdown table of the false-positive rate per class (absent pairs) and its CSV rows."""
    table, csv_rows = [], []
    totals = {m.name: [0, 0] for m in methods}
    for name in classes:
        cells, n_absent = [], 0
        for m in methods:
            absent = [r for r in m.rows if r["class"] == name and not r["present"]]
            fp = [r for r in absent if r["false_positive"]]
            n_absent = max(n_absent, len(absent))
            totals[m.name][0] += len(fp)
            totals[m.name][1] += len(absent)
            rate = len(fp) / len(absent) if absent else math.nan
            area = float(np.mean([r["predicted_area"] for r in fp])) if fp else 0.0
            cells.append("-" if not absent else f"{100 * rate:.0f}% ({area:.0f} px)")
            csv_rows.append({"method": m.name, "class": name, "absent_pairs": len(absent),
                             "false_positives": len(fp), "rate": rate, "mean_fp_area_px": area})
        table.append([name, n_absent, *cells])
    table.append(["**all classes**", "", *(f"{100 * fp / n:.0f}%" if n else "-" for fp, n in totals.values())])
    return "\n".join(markdown_table(["class", "absent slices", *(m.name for m in methods)], table)), csv_rows


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def _all_pairs_and_3d(methods: Sequence[AutoMethod], classes: list[str], volumes: bool = True
                      ) -> tuple[str, list[dict]]:
    """Markdown table: Dice over all pairs (empty convention) and 3D Dice per class (nan without ``volumes``:
    on a sample of slices); CSV rows."""
    table, csv_rows = [], []
    means = {m.name: ([], []) for m in methods}
    for name in classes:
        cells = []
        for m in methods:
            rows = [r for r in m.rows if r["class"] == name]
            all_dice = float(np.mean([r["dice"] for r in rows])) if rows else math.nan
            per_case = []
            for case in dict.fromkeys(r["case_id"] for r in rows) if volumes else ():
                case_rows = [r for r in rows if r["case_id"] == case]
                inter = sum(r["intersection"] for r in case_rows)
                total = sum(r["area"] + r["predicted_area"] for r in case_rows)
                if total:
                    per_case.append(2 * inter / total)
            dice_3d = float(np.mean(per_case)) if per_case else math.nan
            if rows:
                means[m.name][0].append(all_dice)
            if per_case:
                means[m.name][1].append(dice_3d)
            cells.append("-" if not rows else f"{_pct(all_dice)} / {_pct(dice_3d)}")
            csv_rows.append({"method": m.name, "class": name, "dice_all_slices": all_dice, "dice_3d": dice_3d})
        table.append([name, *cells])
    table.append(["**mean over classes**", *(f"{_pct(np.mean(a) if a else math.nan)} / "
                                             f"{_pct(np.mean(b) if b else math.nan)}" for a, b in means.values())])
    return "\n".join(markdown_table(["class", *(f"{m.name}: all slices / 3D" for m in methods)], table)), csv_rows


def _adapter_label(path: str, info: dict, taken: set[str]) -> str:
    label = f"ProMISe {info.get('mode', '?')} ({Path(path).name if Path(path).is_dir() else Path(path).parent.name})"
    while label in taken:
        label += "'"
    taken.add(label)
    return label


def _cost_note(info: dict) -> str:
    training = info.get("training", {})
    params = training.get("trainable_parameters")
    per_epoch = training.get("seconds_per_epoch")
    parts = ["SAM frozen"]
    if params is not None:
        parts.append(f"{params:,} trainable parameters")
    if per_epoch is not None:
        parts.append(f"{per_epoch:.1f} s per epoch ({training.get('epochs', '?')} epochs)")
    return ", ".join(parts)


def _adapter_table(adapters: Sequence[tuple[str, str, dict, PromiseAdapter]]) -> str:
    """Markdown table of each adapter's mode, trainable parameters and training time (from its sidecar)."""
    rows = []
    for label, _, info, adapter in adapters:
        t = info.get("training", {})
        rows.append([label, info.get("mode", "?"), f"{adapter.trainable_parameter_count():,}", t.get("steps", "-"),
                     t.get("epochs", "-"), t.get("wall_s", "-"), t.get("seconds_per_epoch", "-")])
    lines = markdown_table(["adapter", "mode", "trainable parameters", "steps", "epochs", "training time (s)",
                            "s per epoch"], rows)
    return "\n".join(lines) + "\n\nSAM itself: 0 trainable parameters (frozen; its weights' sha256 checked)."


def _case_slices(prepared: PreparedDataset, split: str) -> list[tuple[str, int, list[SliceObject]]]:
    found = []
    for case_id in prepared.case_ids(split):
        by_slice: dict[int, list[SliceObject]] = {}
        for obj in prepared.objects(case_id):
            by_slice.setdefault(obj.slice, []).append(obj)
        found += [(case_id, i, by_slice.get(i, [])) for i in range(int(prepared.images(case_id).shape[0]))]
    return found


def _embedding(cache: EmbeddingCache, case_id: str, index: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.array(cache.embeddings(case_id)[index : index + 1]), dtype=torch.float32).to(device)


@dataclass
class _Setup:
    """What the evaluation runs with: data, models, caches and the methods being filled."""

    dataset: PreparedDataset
    split: str
    classes: list[str]
    device: torch.device
    base: LoadedModel
    cache: EmbeddingCache
    adapters: list[tuple[str, str, dict, PromiseAdapter]]  # label, path, sidecar, adapter
    references: list[tuple[str, LoadedModel, EmbeddingCache]]  # label, model, its cache
    priors: torch.Tensor  # Kx4 (cx, cy, half_w, half_h) class priors, model-input px
    presence_threshold: float
    nsd_tolerance_mm: float | None
    methods: list[AutoMethod] = field(default_factory=list)
    prompted: dict[str, MethodResult] = field(default_factory=dict)
    overlays: dict[str, list[SlicePrediction]] = field(default_factory=dict)

    @property
    def with_features(self) -> bool:
        return any(a.has_apm for *_, a in self.adapters)


def _set_up(dataset: PreparedDataset, adapters: Sequence[str], references: Sequence[str], split: str,
            device: torch.device, presence_threshold: float, nsd_tolerance_mm: float | None,
            bars: BarFactory) -> _Setup:
    infos = [read_adapter_sidecar(path) for path in adapters]  # CheckpointError before any work
    loaded_adapters = [load_adapter(path, device=device) for path in adapters]
    if len({a.base_digest for a in loaded_adapters}) > 1:
        raise ConfigError(f"adapters {', '.join(map(str, adapters))} were trained on different base models; "
                          "evaluate adapters of one base model together")
    base = load_base_model(loaded_adapters[0], device=device)
    if base.spec.image_size != dataset.image_size:
        raise ConfigError(f"{dataset.root}: prepared at {dataset.image_size} px but the adapters' base model takes "
                          f"{base.spec.image_size} px; prepare with --image-size {base.spec.image_size}")
    classes = list(dict.fromkeys(c for a in loaded_adapters if a.has_apm for c in a.classes))
    classes = classes or list(dataset.class_names)
    with_features = any(a.has_apm for a in loaded_adapters)
    with bars("embed", None) as bar:
        cache = ensure_cache(dataset, base, with_features, device, Ranks(), as_progress(bar))
    refs = []
    for model, label in zip(references, model_labels(list(references)), strict=True):
        loaded = load_sam(model, device=device)
        refs.append((f"{label} + GT boxes", loaded, ensure_cache(dataset, loaded, False, device, Ranks(), None)))
    taken: set[str] = set()
    entries = [(_adapter_label(str(path), info, taken), str(path), info, adapter)
               for path, info, adapter in zip(adapters, infos, loaded_adapters, strict=True)]
    try:  # the class-prior click: the classes' mean boxes on the training split (the image centre without one)
        train = promise_slices(dataset, "train", classes)
    except DatasetError:
        train = []
    priors = class_priors(class_boxes(train, classes), dataset.image_size)
    setup = _Setup(dataset, split, classes, device, base, cache, entries, refs, priors, presence_threshold,
                   nsd_tolerance_mm)
    setup.methods = [AutoMethod(label, "adapter", iterations=info.get("training", {}).get("steps"),
                                wall_s=info.get("training", {}).get("wall_s"), notes=_cost_note(info))
                     for label, _, info, adapter in entries if adapter.has_apm]
    setup.methods += [AutoMethod(CENTRE, "naive", iterations=0, notes="one click at the image centre, no training"),
                      AutoMethod(PRIOR, "naive", iterations=0, notes="one click at the class's mean training position"),
                      AutoMethod(GT_BOXES, "reference", iterations=0, notes="told where each class is")]
    setup.methods += [AutoMethod(label, "reference", notes="told where each class is") for label, _, _ in refs]
    setup.prompted = {f"{model}, {kind}": MethodResult(f"{model}, {kind}", [])
                      for model in ["frozen SAM", *(label for label, _, _, a in entries if a.has_ips)]
                      for kind in ("box", "points")}
    setup.overlays = {m.name: [] for m in setup.methods}
    return setup


def _predict_slice(setup: _Setup, case_id: str, index: int, objects: list[SliceObject], valid_hw: tuple[int, int],
                   embedding: torch.Tensor, features: torch.Tensor | None) -> dict[str, np.ndarray]:
    """``KxSxS`` bool class masks of one slice per automatic method (and per prompted reference)."""
    dataset, classes, sam, device = setup.dataset, setup.classes, setup.base.sam, setup.device
    predictions: dict[str, np.ndarray] = {}
    auto = [(label, a) for label, _, _, a in setup.adapters if a.has_apm]
    for label, adapter in auto:
        masks = automatic_masks(adapter, sam, embedding, features, valid_hw, setup.presence_threshold)[0]
        masks = masks.cpu().numpy()
        predictions[label] = np.stack([masks[adapter.classes.index(c)] if c in adapter.classes
                                       else np.zeros_like(masks[0]) for c in classes])
    h, w = valid_hw
    centre = torch.tensor([[w / 2, h / 2]], device=device)
    one = to_model_frame(_best_of_three(sam, embedding, centre), dataset.image_size, valid_hw)
    predictions[CENTRE] = one.expand(len(classes), -1, -1).cpu().numpy()
    priors = setup.priors[:, :2].to(device)
    predictions[PRIOR] = to_model_frame(_best_of_three(sam, embedding, priors), dataset.image_size,
                                        valid_hw).cpu().numpy()
    kept = [o for o in objects if o.class_name in classes]
    instance_masks = np.stack([dataset.object_mask(case_id, o) for o in kept]) if kept else None
    for label, model_sam, model_cache in [(GT_BOXES, sam, setup.cache),
                                          *((name, m.sam, c) for name, m, c in setup.references)]:
        united = np.zeros((len(classes), dataset.image_size, dataset.image_size), dtype=bool)
        if instance_masks is not None:
            boxes = boxes_from_masks(torch.from_numpy(instance_masks)).to(device)
            emb = embedding if model_cache is setup.cache else _embedding(model_cache, case_id, index, device)
            low_res, _ = SamDecoder(model_sam)(emb, boxes=boxes)
            masks = to_model_frame(low_res[:, 0], dataset.image_size, valid_hw).cpu().numpy()
            for obj, mask in zip(kept, masks, strict=True):
                united[classes.index(obj.class_name)] |= mask
        predictions[label] = united
    return predictions


def _promptable(setup: _Setup, case_id: str, index: int, objects: list[SliceObject], valid_hw: tuple[int, int],
                embedding: torch.Tensor, generator: torch.Generator) -> dict[str, list[dict]]:
    """Score every object of one slice with its box and its point set: frozen SAM and each IPS adapter (IPS is
    class-agnostic: every object counts, whatever the APM's classes). ``{"<model>, <kind>": rows}``."""
    found: dict[str, list[dict]] = {name: [] for name in setup.prompted}
    kept = list(objects)
    if not kept:
        return found
    masks = np.stack([setup.dataset.object_mask(case_id, o) for o in kept])
    runs = [("frozen SAM", None, False)]
    runs += [(label, a.token_shift(embedding), a.multimask) for label, _, _, a in setup.adapters if a.has_ips]
    for kind in ("box", "points"):
        prompts = prompts_to(ground_truth_prompts(torch.from_numpy(masks), kind, 8, 8, generator, valid_hw),
                             setup.device)
        for label, shift, multimask in runs:
            predicted = prompted_masks(setup.base.sam, embedding, shift, multimask, prompts,
                                       setup.dataset.image_size, valid_hw).cpu().numpy()
            for obj, pred, gt in zip(kept, predicted, masks, strict=True):
                scores = _scores(setup.dataset, case_id, pred, gt, None)  # the check reports Dice
                found[f"{label}, {kind}"].append({
                    "case_id": case_id, "slice": index, "class": obj.class_name, "instance": obj.instance,
                    "area": obj.area, **scores})
    return found


def _slice_inputs(setup: _Setup, case_id: str, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The slice's embedding ``1xCxgxg`` (and encoder features when an adapter has an APM) on the device."""
    embedding = _embedding(setup.cache, case_id, index, setup.device)
    features = None
    if setup.with_features:
        features = torch.tensor(np.array(setup.cache.features(case_id)[index : index + 1]),
                                dtype=torch.float32).to(setup.device)
    return embedding, features


@dataclass
class _AutoJob:
    """Everything evaluated on one slice: ``job((case_id, slice))`` -> ``{"automatic": {method: pair rows},
    "promptable": {name: object rows}}``. Picklable, so that worker processes can run it."""

    setup: _Setup
    objects: dict[SliceKey, list[SliceObject]]
    seed: int

    def __call__(self, key: SliceKey) -> dict:
        setup, (case_id, index) = self.setup, key
        objects = self.objects[key]
        with torch.no_grad():
            valid_hw = tuple(setup.dataset.meta(case_id)["valid_hw"])
            truth = _slice_truth(setup.dataset, case_id, index, objects, setup.classes)
            embedding, features = _slice_inputs(setup, case_id, index)
            predictions = _predict_slice(setup, case_id, index, objects, valid_hw, embedding, features)
            automatic = {}
            for method in setup.methods:
                covered = setup.classes
                if method.kind == "adapter":
                    covered = next(a.classes for label, _, _, a in setup.adapters if label == method.name)
                pred = predictions[method.name]
                automatic[method.name] = [
                    _pair_row(setup.dataset, case_id, index, name, pred[k], truth[k], setup.nsd_tolerance_mm)
                    for k, name in enumerate(setup.classes) if name in covered]
            generator = torch.Generator().manual_seed(slice_seed(self.seed, 0, key))
            promptable = _promptable(setup, case_id, index, objects, valid_hw, embedding, generator)
        return {"automatic": automatic, "promptable": promptable}


def _store_identity(setup: _Setup, seed: int) -> dict:
    """What the per-slice results depend on: data, split, every model's weights and caches, the settings."""
    return {
        "prepared": setup.dataset.hash, "split": setup.split, "classes": setup.classes,
        "base": sam_digest(setup.base.sam), "embeddings": setup.cache.signature,
        "adapters": [{"label": label, "weights": sam_digest(adapter), "spec": adapter.spec.to_dict()}
                     for label, _, _, adapter in setup.adapters],
        "references": [{"label": label, "weights": sam_digest(model.sam), "embeddings": cache.signature}
                       for label, model, cache in setup.references],
        "presence_threshold": setup.presence_threshold, "nsd_tolerance_mm": setup.nsd_tolerance_mm, "seed": seed,
    }


def _overlay_slices(setup: _Setup, slices: list[tuple[str, int, list[SliceObject]]]) -> None:
    """Every method's class masks of ``slices`` (a few), for the overlay images: predicted again here, so a
    resumed evaluation draws the same overlays as an uninterrupted one."""
    with torch.no_grad():
        for case_id, index, objects in slices:
            valid_hw = tuple(setup.dataset.meta(case_id)["valid_hw"])
            truth = _slice_truth(setup.dataset, case_id, index, objects, setup.classes)
            embedding, features = _slice_inputs(setup, case_id, index)
            predictions = _predict_slice(setup, case_id, index, objects, valid_hw, embedding, features)
            pseudo = [SliceObject(case_id, index, name, k + 1, 0, (), int(truth[k].sum()), (0, 0, 0, 0))
                      for k, name in enumerate(setup.classes)]
            for method in setup.methods:
                setup.overlays[method.name].append(
                    SlicePrediction(case_id, index, pseudo, predictions[method.name], truth))


def evaluate_automatic(
    prepared: PreparedDataset | str | os.PathLike[str],
    adapters: Sequence[str],
    out: str | os.PathLike[str],
    references: Sequence[str] = (),
    split: str = "test",
    device: str = "cpu",
    seed: int = 0,
    presence_threshold: float = 0.5,
    nsd_tolerance_mm: float | None = 2.0,
    overlay_count: int = 3,
    bars: BarFactory = no_bars,
    max_slices: int | None = None,
    workers: int = 1,
) -> Path:
    """Evaluate ProMISe adapters automatically and promptably on ``split`` (module docstring); write ``out``.

    Args:
        adapters: ``samadapt adapt`` run folders or adapter files, all on the same frozen base model (the
            naive and box rows use it).
        out: report folder, written as a whole (an earlier eval report there is replaced).
        references: SAM-format models (e.g. ``samadapt train`` runs' ``model.pth``) scored with ground-truth
            boxes, beside frozen SAM with boxes.
        seed: seed of the promptable check's point sets (drawn per slice from ``(seed, case, slice)``) and of
            the ``max_slices`` sample.
        presence_threshold: below this presence probability an adapter leaves a class empty.
        nsd_tolerance_mm: NSD's boundary tolerance; None skips NSD and HD95 (several times faster).
        overlay_count: slices (those with most classes) drawn with every method's masks.
        max_slices: evaluate a seeded random sample of this many of the split's slices (``seed``; the same for
            every method; :mod:`~samadapt.evaluation.slice_sample`); None: every slice. The report gives each
            headline mean with a bootstrap-over-slices 95% interval either way.
        workers: processes scoring slices at once (CPU; :mod:`~samadapt.evaluation.slice_store`).

    Each finished slice is kept in ``out/slice_results/automatic-<key>.jsonl`` (keyed by the data, split,
    every model's weights and the settings); a rerun into ``out`` reads those slices back.

    Returns:
        The path of ``out/summary.md``.

    Raises:
        CheckpointError: an adapter or reference that cannot be loaded, or a base model whose weights differ.
        DatasetError: a missing or broken dataset, an unknown split or one without objects.
        ConfigError: no adapter, adapters of different base models, a bad report folder or threshold.
    """
    dataset = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset(prepared)
    out = Path(out)
    if not adapters:
        raise ConfigError("--prompts auto needs at least one ProMISe adapter: pass --adapter RUN (a `samadapt "
                          "adapt` run folder)")
    if not 0.0 <= presence_threshold <= 1.0:
        raise ConfigError(f"presence threshold {presence_threshold}: use a probability between 0 and 1")
    torch_device = resolve_device(device)
    max_slices = parse_max_slices(max_slices)
    workers = check_workers(workers, torch_device)
    for path in adapters:
        read_adapter_sidecar(path)
    for model in references:
        resolve_checkpoint(model)
    slices = _case_slices(dataset, split)  # DatasetError for an unknown split
    if not any(objs for _, _, objs in slices):
        raise DatasetError(f"{dataset.root}: split '{split}' has no slices with objects; choose another --split")
    check_report_folder(out, dataset.root)
    setup = _set_up(dataset, adapters, references, split, torch_device, presence_threshold, nsd_tolerance_mm, bars)
    chosen = sample_slices(slices, max_slices, seed)
    shown = {(c, s) for c, s, _ in sorted(chosen, key=lambda x: (-len({o.class_name for o in x[2]}), x[0],
                                                                 x[1]))[:overlay_count]}
    store = SliceStore(out / SLICES_DIR, "automatic", _store_identity(setup, seed))
    job = _AutoJob(setup, {(c, i): objects for c, i, objects in chosen}, seed)
    started = time.perf_counter()
    with bars(f"eval automatic ({split})", len(chosen)) as bar:
        per_slice = score_slices([(c, i) for c, i, _ in chosen], job, store, workers, as_progress(bar))
    for result in per_slice:
        for method in setup.methods:
            method.rows += result["automatic"][method.name]
        for name, rows in result["promptable"].items():
            setup.prompted[name].rows += rows
    _overlay_slices(setup, [item for item in chosen if (item[0], item[1]) in shown])
    sample = {"evaluated": len(chosen), "total": len(slices), "max_slices": max_slices, "seed": seed,
              "unit": "slices"}
    return _write(setup, out, seed, time.perf_counter() - started, sample, store)


def _estimates(setup: _Setup) -> dict[str, dict[str, Estimate]]:
    """Per method: Dice on present pairs (mean over classes) and the pooled false-positive rate on absent pairs
    (not for the references); per promptable row: Dice. Intervals: bootstrap over slices."""
    found: dict[str, dict[str, Estimate]] = {}
    for m in setup.methods:
        found[m.name] = {"Dice (class present)": bootstrap_estimate(_present(m.rows), "dice")}
        if m.kind != "reference":
            absent = [r for r in m.rows if not r["present"]]
            found[m.name]["false-positive rate"] = bootstrap_estimate(
                absent, lambda r: float(r["false_positive"]), group=lambda r: "all")
    for name, m in setup.prompted.items():
        found[name] = {"promptable Dice": bootstrap_estimate(m.rows, "dice")}
    return found


def _write(setup: _Setup, out: Path, seed: int, eval_s: float, sample: dict, store: SliceStore) -> Path:
    dataset, classes, methods_all = setup.dataset, setup.classes, setup.methods
    methods = [MethodResult(m.name, _present(m.rows), iterations=m.iterations, wall_s=m.wall_s, notes=m.notes)
               for m in methods_all]
    fp_md, fp_rows = false_positive_table([m for m in methods_all if m.kind != "reference"], classes)
    sampled = sample["evaluated"] < sample["total"]
    all_md, all_rows = _all_pairs_and_3d(methods_all, classes, volumes=not sampled)
    estimates = _estimates(setup)
    box_methods = [m for name, m in setup.prompted.items() if name.endswith(", box")]
    point_methods = [m for name, m in setup.prompted.items() if name.endswith(", points")]
    naive_rows = next(m.rows for m in methods_all if m.name == CENTRE)
    n_cases = len({r["case_id"] for r in naive_rows})
    n_present = len(_present(naive_rows))
    sections = [
        "## Means with 95% confidence intervals", "",
        describe_sample(sample["evaluated"], sample["total"], sample["max_slices"], seed, "slices (of every "
                        "class, with or without objects)"),
        f"Dice x100 (mean over classes), false-positive rate in % (absent pairs pooled); interval: {INTERVAL_METHOD}, "
        f"which treats slices as independent (slices of one patient are not).", "",
        *estimates_table(estimates), "",
        "## False positives on slices without the class", "",
        "Per class: the share of (slice, class) pairs whose class is absent where the method still predicts "
        "pixels (mean false-positive area in model-frame pixels). Ground-truth-box references never predict "
        "on absent classes (no box) and are left out.", "", fp_md, "",
        "## Dice over all slices (x100): absent and empty counts 1, a false positive 0 / 3D Dice per case", "",
        *(["3D: not computed on a sample of slices (`--max-slices`): a case's volume needs all its slices.", ""]
          if sampled else []),
        all_md, "",
        "## Promptable check: box prompts, Dice per object (x100)", "",
        "Every object prompted with its tight box: frozen SAM against each adapter's IPS (APM unused).", "",
        summary_table(box_methods, "dice"), "",
        "## Promptable check: 8 + 8 point prompts, Dice per object (x100)", "",
        f"8 positive clicks inside the object, 8 negative near it (seed {seed}).", "",
        summary_table(point_methods, "dice"), "",
        "## Adapters: what trains and what it costs", "", _adapter_table(setup.adapters), "",
    ]
    base = setup.base
    context = [
        f"Dataset `{dataset.root}` (hash {dataset.hash[:12]}), split `{setup.split}`: {n_cases} case(s), "
        f"{len(naive_rows) // max(1, len(classes))} slices x {len(classes)} classes = {len(naive_rows)} (slice, "
        f"class) pairs, {n_present} with the class present; prepared at {dataset.image_size} px.",
        f"Frozen base model: `{base.checkpoint or base.spec.name}`, the adapters' own (sha256 of its weights "
        f"checked). Device: {setup.device}. Evaluation time {eval_s:.0f} s.",
        "Automatic tables: Dice / NSD over the pairs where the class is present (2D, NSD at "
        f"{setup.nsd_tolerance_mm if setup.nsd_tolerance_mm is not None else '-'} mm; '-' where not computed). "
        "Adapters leave a class empty when their presence probability is below "
        f"{setup.presence_threshold:g}. Naive rows: frozen SAM with one click (image centre: the same mask for "
        "every class; class prior: the class's mean training position). `+ GT boxes` rows are prompted "
        "references, told where each class is.",
        "Adapters: " + "; ".join(f"`{label}` = `{path}`" for label, path, _, _ in setup.adapters) + ".",
    ]
    summary = {
        "prepared": str(dataset.root), "prepared_hash": dataset.hash, "split": setup.split, "protocol": "automatic",
        "classes": classes, "presence_threshold": setup.presence_threshold, "seed": seed, "device": str(setup.device),
        "adapters": [{"label": label, "path": path, "mode": info.get("mode"), "training": info.get("training", {})}
                     for label, path, info, _ in setup.adapters],
        "references": [label for label, _, _ in setup.references],
        "automatic": {m.name: {"kind": m.kind, "present": {"mean_over_classes": class_mean(_present(m.rows), "dice"),
                                                           "overall": mean_scores(_present(m.rows)),
                                                           "per_class": per_class_mean(_present(m.rows))},
                               "false_positive_rate": _fp_rate(m.rows)} for m in methods_all},
        "all_slices_and_3d": all_rows, "false_positives": fp_rows,
        "promptable": {name: {"mean_over_classes": class_mean(m.rows, "dice"), "per_class": per_class_mean(m.rows)}
                       for name, m in setup.prompted.items()},
        "eval_s": round(eval_s, 1),
        "estimates": estimates_json(estimates, sample),
    }
    with atomic_dir(out) as tmp:
        names = [m.name for m in methods_all]
        overlays = save_overlays(dataset, [setup.overlays[n] for n in names], tmp / "overlays", classes)
        context.append("Overlays: the slice, then one panel per method (" + ", ".join(names) + "); every class "
                       "predicted (filled) and its ground truth (outline).")
        write_report(tmp, f"samadapt eval: ProMISe automatic segmentation on the {setup.split} split", methods,
                     context, overlays, sections=sections,
                     tables={"automatic_pairs": [{"method": m.name, **r} for m in methods_all for r in m.rows],
                             "false_positives": fp_rows, "all_slices_and_3d": all_rows,
                             "promptable": [{"method": m.name, **r} for m in setup.prompted.values()
                                            for r in m.rows]})
        copy_stores([store], tmp)
        write_json_atomic(tmp / REPORT_MARKER, summary)
    return out / "summary.md"


def _fp_rate(rows: list[dict]) -> float:
    absent = [r for r in rows if not r["present"]]
    return sum(r["false_positive"] for r in absent) / len(absent) if absent else math.nan
