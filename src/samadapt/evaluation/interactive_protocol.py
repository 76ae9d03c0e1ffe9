"""Interactive protocol: Dice after k clicks and the number of clicks (NoC) to reach an IoU, per class.

The simulated user is RITM's (:class:`~samadapt.prompts.corrections.LargestErrorClick`): the first click
goes to the interior of the object (the largest error of an empty mask), every next one to the interior of
the largest error region of the current mask, positive in a miss, negative in a spill. All objects of a slice
are refined together, one decoder pass per click on the slice's cached embedding; each pass gets every click
so far plus the previous low-res logits as mask prompt
(:func:`~samadapt.models.prompting_rounds.prompting_rounds`). The first, single click is SAM's ambiguous case
and takes the best of the three multimask outputs by predicted IoU; later passes the single-mask output.
Masks are thresholded at logit 0, cut to the unpadded frame, and scored in the model frame.

- ``dice_k``: Dice after ``k`` clicks, ``k = 1..dice_clicks`` (10).
- ``noc_85`` / ``noc_90``: the first ``k`` whose IoU reaches 0.85 / 0.90; objects that never do within
  ``max_clicks`` (20) count ``max_clicks`` (RITM's convention), and ``fail_85`` / ``fail_90`` give their share.

A slice stops early once every object has had ``dice_clicks`` clicks and reached the highest threshold
(later clicks change no reported number).
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
from samadapt.evaluation.figures import pyplot, save_figure
from samadapt.evaluation.markdown import markdown_table
from samadapt.evaluation.protocol_slices import ProtocolSlice, load_protocol_slice, object_row
from samadapt.evaluation.slice_sample import Estimate, bootstrap_estimate
from samadapt.evaluation.slice_store import SliceKey, SliceStore, score_slices
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.models.prompting_rounds import PromptRound, prompting_rounds
from samadapt.overlap import dice_iou
from samadapt.progress import Progress
from samadapt.prompts.corrections import LargestErrorClick
from samadapt.prompts.region_prompts import RegionPrompts
from samadapt.settings import check_integers, setting_error


@dataclass(frozen=True)
class InteractiveSettings:
    """The ``interactive`` settings group of ``samadapt eval`` (``--set interactive.max_clicks=10``):
    ``dice_clicks``: Dice reported after 1..this many clicks; ``max_clicks``: the NoC cap; ``thresholds``:
    IoU levels of the NoC columns."""

    dice_clicks: int = 10
    max_clicks: int = 20
    thresholds: tuple[float, ...] = (0.85, 0.90)

    def __post_init__(self) -> None:
        bad = setting_error("interactive")
        check_integers(self, ("dice_clicks", "max_clicks"), 1, bad)
        if self.dice_clicks > self.max_clicks:
            raise bad(f"dice_clicks={self.dice_clicks}, max_clicks={self.max_clicks}: use dice_clicks <= max_clicks")
        thresholds = tuple(self.thresholds) if isinstance(self.thresholds, (list, tuple)) else ()
        if not thresholds or not all(
                not isinstance(t, bool) and isinstance(t, (int, float)) and 0 < t <= 1 for t in thresholds):
            raise bad(f"thresholds={self.thresholds!r}: give IoU levels in (0, 1], e.g. [0.85, 0.9]")
        object.__setattr__(self, "thresholds", tuple(float(t) for t in thresholds))


def overlap_scores(prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
    """Dice and IoU of ``NxHxW`` bool masks against their truth, per mask (:func:`samadapt.overlap.dice_iou`: both
    empty gives 1), computed together for the whole batch."""
    dice_values, iou_values = dice_iou(prediction, truth)
    return {"dice": dice_values.numpy(), "iou": iou_values.numpy()}


def _level(threshold: float) -> str:
    return f"{round(100 * threshold):d}"


def clicks_to_reach(ious: np.ndarray, threshold: float, cap: int) -> np.ndarray:
    """Number of clicks (1-based) at which each row of ``ious`` (``NxK``, IoU after clicks 1..K) first reaches
    ``threshold``; ``cap`` for rows that never do within ``min(K, cap)`` clicks. ``N`` int."""
    ious = np.asarray(ious, dtype=float)[:, :cap]
    reached = ious >= threshold
    first = reached.argmax(axis=1) + 1
    return np.where(reached.any(axis=1), first, cap).astype(int)


@torch.inference_mode()
def click_session(
    sam: Sam, item: ProtocolSlice, settings: InteractiveSettings = InteractiveSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """Refine every object of ``item`` click by click; (Dice ``NxK``, IoU ``NxK``) after clicks ``1..K``.

    ``K`` is ``max_clicks`` unless the slice stopped early (see the module docstring).
    """
    device = next(sam.parameters()).device
    truth = item.truth
    n = truth.shape[0]
    user, unused = LargestErrorClick(), torch.Generator()
    dices, ious = [], []
    top = max(settings.thresholds)

    shown: dict = {}  # the latest round's masks: scored, then clicked on (once per round)

    def seen(round_: PromptRound) -> torch.Tensor:
        """The masks the user sees: thresholded at logit 0, cut to the unpadded frame."""
        if shown.get("round") is not round_:
            shown.update(round=round_, masks=item.crop((round_.logits > 0).cpu()))
        return shown["masks"]

    def score(round_: PromptRound) -> bool:
        overlap = overlap_scores(seen(round_), truth)
        dices.append(overlap["dice"])
        ious.append(overlap["iou"])
        reached = (np.asarray(ious) >= top).any(axis=0)
        return round_.index + 1 >= settings.dice_clicks and bool(reached.all())

    first = RegionPrompts.from_points(torch.zeros(n, 0, 2), torch.zeros(n, 0, dtype=torch.long))
    first = first.with_clicks(*user(torch.zeros_like(truth), truth, unused))  # the click on an empty mask
    prompting_rounds(sam, item.embedding.to(device), first, ["click"] * (settings.max_clicks - 1),
                     lambda round_: user(seen(round_), truth, unused), on_round=score)
    return np.asarray(dices).T, np.asarray(ious).T


def slice_rows(sam: Sam, item: ProtocolSlice, settings: InteractiveSettings = InteractiveSettings()) -> list[dict]:
    """The rows of :func:`interactive_rows` for the objects of one slice."""
    dices, ious = click_session(sam, item, settings)
    nocs = {_level(t): clicks_to_reach(ious, t, settings.max_clicks) for t in settings.thresholds}
    reached = {_level(t): (ious >= t).any(axis=1) for t in settings.thresholds}
    rows = []
    for i, obj in enumerate(item.objects):
        row = object_row(item, obj)
        row.update({f"dice_{k + 1}": float(dices[i, k]) for k in range(settings.dice_clicks)})
        row.update({f"noc_{level}": int(values[i]) for level, values in nocs.items()})
        row.update({f"fail_{level}": bool(not values[i]) for level, values in reached.items()})
        row.update({f"iou_{k + 1}": float(ious[i, k]) for k in range(ious.shape[1])})
        row["clicks_run"] = int(dices.shape[1])
        rows.append(row)
    return rows


@dataclass
class InteractiveJob:
    """The protocol on one slice: ``job((case_id, slice))`` -> :func:`slice_rows`. Picklable, so that
    worker processes can run it (:func:`~samadapt.evaluation.slice_store.score_slices`)."""

    sam: Sam
    prepared: PreparedDataset
    cache: EmbeddingCache
    objects: dict[SliceKey, list[SliceObject]]
    settings: InteractiveSettings

    def __call__(self, key: SliceKey) -> list[dict]:
        item = load_protocol_slice(self.prepared, self.cache, key[0], key[1], self.objects[key])
        return slice_rows(self.sam, item, self.settings)


def interactive_rows(
    sam: Sam, prepared: PreparedDataset, cache: EmbeddingCache, split: str = "test",
    settings: InteractiveSettings = InteractiveSettings(), progress: Progress | None = None,
    slices: Sequence[tuple[str, int, list[SliceObject]]] | None = None, store: SliceStore | None = None,
    workers: int = 1,
) -> list[dict]:
    """One row per object of ``split``: its identity, ``dice_1..dice_K``, ``noc_<level>``, ``fail_<level>``
    (never reached within ``max_clicks``; a NoC of ``max_clicks`` may also be a success on the last click),
    ``clicks_run`` and the IoU curve ``iou_1..iou_<clicks_run>`` (NoC at any level up to the highest threshold
    can be read off it with :func:`clicks_to_reach`).

    ``slices`` (``(case_id, slice, objects)``, default every slice of ``split`` with objects) limits it to a
    sample; ``store`` reads finished slices back and keeps new ones; ``workers`` processes score slices at
    once (:func:`~samadapt.evaluation.slice_store.score_slices`). ``progress(done, total)`` over the slices.
    """
    chosen = list(slices) if slices is not None else list(slices_with_objects(prepared, split))
    job = InteractiveJob(sam, prepared, cache, {(c, i): objects for c, i, objects in chosen}, settings)
    per_slice = score_slices([(c, i) for c, i, _ in chosen], job, store, workers, progress)
    return [row for rows in per_slice for row in rows]


def interactive_estimates(rows: Sequence[Mapping], settings: InteractiveSettings = InteractiveSettings()
                          ) -> dict[str, Estimate]:
    """Mean over classes with a bootstrap-over-slices interval: Dice after 1, 5 and ``dice_clicks`` clicks,
    and NoC at each threshold (:func:`~samadapt.evaluation.slice_sample.bootstrap_estimate`)."""
    ks = sorted({k for k in (1, 5, settings.dice_clicks) if k <= settings.dice_clicks})
    found = {f"Dice@{k}": bootstrap_estimate(rows, f"dice_{k}") for k in ks}
    for t in settings.thresholds:
        level = _level(t)
        found[f"NoC@{level}"] = bootstrap_estimate(rows, f"noc_{level}", scale=1.0, digits=2)
    return found


def interactive_summary(rows: Sequence[Mapping], settings: InteractiveSettings = InteractiveSettings()) -> dict:
    """Per class and mean over classes: ``dice_at`` (list over k = 1..K), ``noc_<level>``, ``fail_<level>``
    (share of objects not reaching the level within ``max_clicks``), ``n``."""
    by_class: dict[str, list[Mapping]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row)
    per_class = {}
    for name, items in by_class.items():
        dice_at = [float(np.mean([r[f"dice_{k}"] for r in items])) for k in range(1, settings.dice_clicks + 1)]
        entry = {"n": len(items), "dice_at": dice_at}
        for t in settings.thresholds:
            level = _level(t)
            values = np.array([r[f"noc_{level}"] for r in items])
            entry[f"noc_{level}"] = float(values.mean())
            entry[f"fail_{level}"] = float(np.mean([r[f"fail_{level}"] for r in items]))
        per_class[name] = entry
    mean = {}
    if per_class:
        entries = list(per_class.values())
        mean["dice_at"] = [float(np.mean([e["dice_at"][k] for e in entries])) for k in range(settings.dice_clicks)]
        for key in entries[0]:
            if key.startswith(("noc_", "fail_")):
                mean[key] = float(np.mean([e[key] for e in entries]))
    return {"per_class": per_class, "mean_over_classes": mean,
            "settings": {"dice_clicks": settings.dice_clicks, "max_clicks": settings.max_clicks,
                         "thresholds": list(settings.thresholds)}}


def _fmt(value: float, scale: float = 100.0, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def interactive_section(summaries: Mapping[str, dict]) -> list[str]:
    """Markdown lines: mean Dice after k clicks per model, NoC per model, and NoC per class and model. The
    settings are those the summaries record (:func:`interactive_summary`; one run, so the same for all)."""
    settings = InteractiveSettings(**next(iter(summaries.values()))["settings"]) if summaries else InteractiveSettings()
    ks = [k for k in (1, 2, 3, 5, settings.dice_clicks) if k <= settings.dice_clicks]
    ks = sorted(set(ks))
    levels = [_level(t) for t in settings.thresholds]
    lines = ["## Interactive: Dice after k clicks and clicks to reach an IoU (NoC)", "",
             "Simulated user: first click at the object's interior, each next click at the interior of the largest "
             "error region (positive in a miss, negative in a spill), previous logits fed back; all objects of a "
             f"slice at once. NoC: clicks to reach the IoU, {settings.max_clicks} when never reached (fail: share "
             "of such objects). Mean over classes.", ""]
    rows = []
    for label, summary in summaries.items():
        mean = summary["mean_over_classes"]
        if mean:
            rows.append([label, *(_fmt(mean["dice_at"][k - 1]) for k in ks),
                         *(cell for lv in levels
                           for cell in (f"{mean[f'noc_{lv}']:.2f}", f"{_fmt(mean[f'fail_{lv}'], digits=0)}%"))])
    lines += markdown_table(["model", *(f"Dice@{k}" for k in ks),
                             *(name for lv in levels for name in (f"NoC@{lv}", f"fail@{lv}"))], rows)
    top = levels[-1]
    classes = list(dict.fromkeys(c for s in summaries.values() for c in s["per_class"]))
    lines += ["", f"NoC@{top} per class (lower is better):", ""]
    lines += markdown_table(
        ["class", "n", *summaries],
        [[name, next((s["per_class"][name]["n"] for s in summaries.values() if name in s["per_class"]), 0),
          *(f"{s['per_class'][name][f'noc_{top}']:.2f}" if name in s["per_class"] else "-" for s in summaries.values())]
         for name in classes])
    return lines + ["", "![Interactive curves](interactive_curves.png)", ""]


def plot_interactive_curves(summaries: Mapping[str, dict], path) -> None:
    """Dice (mean over classes) against the number of clicks, one line per model."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for label, summary in summaries.items():
        values = summary["mean_over_classes"].get("dice_at", [])
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_xlabel("clicks")
    ax.set_ylabel("Dice (mean over classes)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def interactive_table(summaries: Mapping[str, dict]) -> list[dict]:
    """CSV rows: one per model and class (and ``mean over classes``), Dice at each k and the NoC columns."""
    rows = []
    for label, summary in summaries.items():
        entries = {**summary["per_class"], "mean over classes": summary["mean_over_classes"]}
        for name, entry in entries.items():
            if not entry:
                continue
            row = {"method": label, "class": name, "n": entry.get("n", "")}
            row.update({f"dice_{k + 1}": v for k, v in enumerate(entry["dice_at"])})
            row.update({k: v for k, v in entry.items() if k.startswith(("noc_", "fail_"))})
            rows.append(row)
    return rows
