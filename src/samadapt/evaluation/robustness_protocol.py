"""Human-factor robustness: Dice per simulated prompting behaviour, and its spread across behaviours, per class.

Every object of every slice is prompted once per behaviour of :data:`ROBUSTNESS_BEHAVIOURS` (tight, loose,
shifted, partial and noisy boxes; a centre click and an off-centre click near the edge, the simulators of
:mod:`samadapt.prompts.box_behaviours` and :mod:`samadapt.prompts.click_behaviours` with their default
parameters), all objects of a slice in one decoder pass per behaviour, without corrections. A single click
takes the best of SAM's three multimask outputs by predicted IoU; boxes the single-mask output. Behaviour
``i`` draws on slice ``(case, s)`` from a generator seeded with ``(seed, i, case, s)``
(:func:`~samadapt.evaluation.slice_store.slice_seed`), so every model sees the very same prompts, whichever
slices are evaluated (``--max-slices``), in whichever order or process, and on a resumed run.

Spread, per class: the standard deviation (population, over behaviours) and the range (max - min) of the
class's mean Dice per behaviour; lower is less sensitive to how a person prompts. "Mean over classes"
averages the per-class Dice of each behaviour and the per-class spreads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam

from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.evaluation.box_protocol import slices_with_objects
from samadapt.evaluation.markdown import markdown_table
from samadapt.evaluation.protocol_slices import load_protocol_slice, object_row
from samadapt.evaluation.slice_sample import Estimate, bootstrap_estimate
from samadapt.evaluation.slice_store import SliceKey, SliceStore, score_slices, slice_seed
from samadapt.models.decoder import SamDecoder, upscale_logits
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.models.region_decode import pick_outputs
from samadapt.overlap import dice
from samadapt.progress import Progress
from samadapt.prompts.box_behaviours import LooseBox, NoisyBox, PartialBox, ShiftedBox, TightBox
from samadapt.prompts.click_behaviours import BoundaryClick, CentreClick

ROBUSTNESS_BEHAVIOURS: dict[str, object] = {
    "box_tight": TightBox(), "box_loose": LooseBox(), "box_shifted": ShiftedBox(), "box_partial": PartialBox(),
    "box_noisy": NoisyBox(), "click_centre": CentreClick(), "click_off_centre": BoundaryClick(),
}


def _generator(seed: int, stream: int, key: SliceKey) -> torch.Generator:
    return torch.Generator().manual_seed(slice_seed(seed, stream, key))


@dataclass
class RobustnessJob:
    """The protocol on one slice: ``job((case_id, slice))`` -> its rows. Picklable, so that worker processes
    can run it (:func:`~samadapt.evaluation.slice_store.score_slices`)."""

    sam: Sam
    prepared: PreparedDataset
    cache: EmbeddingCache
    objects: dict[SliceKey, list[SliceObject]]
    seed: int
    behaviours: Mapping[str, object]

    @torch.inference_mode()
    def __call__(self, key: SliceKey) -> list[dict]:
        item = load_protocol_slice(self.prepared, self.cache, key[0], key[1], self.objects[key])
        device = next(self.sam.parameters()).device
        image_size = self.sam.image_encoder.img_size
        embedding = item.embedding.to(device)
        truth = item.truth.numpy()
        rows = []
        for i, (name, behaviour) in enumerate(self.behaviours.items()):
            prompts = behaviour(item.truth, _generator(self.seed, i, key), item.truth)
            low_res, iou_pred = SamDecoder(self.sam).all_outputs(embedding, prompts.to(device))
            chosen, _, _ = pick_outputs(low_res, iou_pred, prompts.ambiguous)
            predicted = item.crop((upscale_logits(chosen.float(), image_size) > 0).cpu()).numpy()
            for obj, pred, gt in zip(item.objects, predicted, truth, strict=True):
                rows.append({**object_row(item, obj), "behaviour": name, "dice": dice(pred, gt)})
        return rows


def robustness_rows(
    sam: Sam, prepared: PreparedDataset, cache: EmbeddingCache, split: str = "test", seed: int = 0,
    behaviours: Mapping[str, object] = ROBUSTNESS_BEHAVIOURS, progress: Progress | None = None,
    slices: Sequence[tuple[str, int, list[SliceObject]]] | None = None, store: SliceStore | None = None,
    workers: int = 1,
) -> list[dict]:
    """One row per object and behaviour: the object's identity, ``behaviour`` and its ``dice``.

    ``slices`` (``(case_id, slice, objects)``, default every slice of ``split`` with objects) limits it to a
    sample; ``store`` reads finished slices back and keeps new ones; ``workers`` processes score slices at
    once (:func:`~samadapt.evaluation.slice_store.score_slices`). ``progress(done, total)`` over the slices.
    """
    chosen = list(slices) if slices is not None else list(slices_with_objects(prepared, split))
    job = RobustnessJob(sam, prepared, cache, {(c, i): objects for c, i, objects in chosen}, seed, behaviours)
    per_slice = score_slices([(c, i) for c, i, _ in chosen], job, store, workers, progress)
    return [row for rows in per_slice for row in rows]


def behaviours_identity(behaviours: Mapping[str, object]) -> dict[str, str]:
    """What the results depend on of each behaviour: its class and parameters (the dataclass repr)."""
    return {name: repr(behaviour) for name, behaviour in behaviours.items()}


def _spread(means: np.ndarray, groups: list) -> np.ndarray:
    """Per class: std of its behaviours' mean Dice (population); then the mean over classes. ``groups``:
    ``(class, behaviour)`` pairs, the columns of ``means``."""
    classes = list(dict.fromkeys(c for c, _ in groups))
    per_class = [np.nanstd(means[:, [j for j, (c, _) in enumerate(groups) if c == name]], axis=1)
                 for name in classes]
    return np.nanmean(np.stack(per_class, axis=1), axis=1)


def _mean_dice(means: np.ndarray, groups: list) -> np.ndarray:
    """Per class: the mean of its behaviours' mean Dice; then the mean over classes."""
    classes = list(dict.fromkeys(c for c, _ in groups))
    per_class = [np.nanmean(means[:, [j for j, (c, _) in enumerate(groups) if c == name]], axis=1)
                 for name in classes]
    return np.nanmean(np.stack(per_class, axis=1), axis=1)


def robustness_estimates(rows: Sequence[Mapping]) -> dict[str, Estimate]:
    """Mean over classes with a bootstrap-over-slices interval: Dice averaged over behaviours, and the spread
    (std across behaviours) (:func:`~samadapt.evaluation.slice_sample.bootstrap_estimate`)."""
    def by_behaviour(row: Mapping) -> tuple:
        return (row["class"], row["behaviour"])

    return {"Dice over behaviours": bootstrap_estimate(rows, "dice", by_behaviour, _mean_dice),
            "spread std": bootstrap_estimate(rows, "dice", by_behaviour, _spread)}


def robustness_summary(rows: Sequence[Mapping]) -> dict:
    """Per class and mean over classes: ``dice`` per behaviour, ``std`` and ``range`` across behaviours, ``n``."""
    behaviours = list(dict.fromkeys(r["behaviour"] for r in rows))
    grouped: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        grouped.setdefault(row["class"], {}).setdefault(row["behaviour"], []).append(row["dice"])
    per_class = {}
    for name, by_behaviour in grouped.items():
        means = {b: float(np.mean(by_behaviour[b])) for b in behaviours if b in by_behaviour}
        values = np.array(list(means.values()))
        per_class[name] = {"n": len(next(iter(by_behaviour.values()))), "dice": means,
                           "std": float(values.std()), "range": float(values.max() - values.min())}
    mean = {}
    if per_class:
        entries = list(per_class.values())
        mean = {"dice": {b: float(np.mean([e["dice"][b] for e in entries if b in e["dice"]])) for b in behaviours},
                "std": float(np.mean([e["std"] for e in entries])),
                "range": float(np.mean([e["range"] for e in entries]))}
    return {"behaviours": behaviours, "per_class": per_class, "mean_over_classes": mean}


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def robustness_section(summaries: Mapping[str, dict]) -> list[str]:
    """Markdown lines: mean Dice per behaviour and spread per model; the spread per class and model."""
    behaviours = list(dict.fromkeys(b for s in summaries.values() for b in s["behaviours"]))
    lines = ["## Human-factor robustness: Dice per prompting behaviour (x100)", "",
             "Each object prompted once per simulated behaviour (no corrections); spread = std and max - min of "
             "a class's Dice across behaviours, averaged over classes (lower: less sensitive to the person "
             "prompting).", ""]
    lines += markdown_table(
        ["model", *behaviours, "std", "max-min"],
        [[label, *(_fmt(mean["dice"].get(b, math.nan)) for b in behaviours), _fmt(mean["std"]), _fmt(mean["range"])]
         for label, mean in ((label, s["mean_over_classes"]) for label, s in summaries.items()) if mean])
    classes = list(dict.fromkeys(c for s in summaries.values() for c in s["per_class"]))
    lines += ["", "Spread per class (std across behaviours, x100):", ""]
    lines += markdown_table(
        ["class", "n", *summaries],
        [[name, next((s["per_class"][name]["n"] for s in summaries.values() if name in s["per_class"]), 0),
          *(_fmt(s["per_class"][name]["std"]) if name in s["per_class"] else "-" for s in summaries.values())]
         for name in classes])
    return lines + [""]


def robustness_table(summaries: Mapping[str, dict]) -> list[dict]:
    """CSV rows: one per model and class (and ``mean over classes``): Dice per behaviour, std, range."""
    rows = []
    for label, summary in summaries.items():
        entries = {**summary["per_class"], "mean over classes": summary["mean_over_classes"]}
        for name, entry in entries.items():
            if entry:
                rows.append({"method": label, "class": name, "n": entry.get("n", ""),
                             **{f"dice_{b}": v for b, v in entry["dice"].items()},
                             "std": entry["std"], "range": entry["range"]})
    return rows
