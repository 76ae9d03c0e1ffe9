"""Human-factor robustness: Dice per simulated prompting behaviour, and its spread across behaviours, per class.

Every object of every slice is prompted once per behaviour of :data:`ROBUSTNESS_BEHAVIOURS` (tight, loose,
shifted, partial and noisy boxes; a centre click and an off-centre click near the edge, the simulators of
:mod:`samadapt.prompts.box_behaviours` and :mod:`samadapt.prompts.click_behaviours` with their default
parameters), all objects of a slice in one decoder pass per behaviour, without corrections. A single click
takes the best of SAM's three multimask outputs by predicted IoU; boxes the single-mask output. Behaviour
``i`` draws from its own generator seeded with ``(seed, i)``, slice after slice, so every model sees the
very same prompts.

Spread, per class: the standard deviation (population, over behaviours) and the range (max - min) of the
class's mean Dice per behaviour; lower is less sensitive to how a person prompts. "Mean over classes"
averages the per-class Dice of each behaviour and the per-class spreads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam

from samadapt.data.prepared import PreparedDataset
from samadapt.evaluation.metrics import dice
from samadapt.evaluation.protocol_slices import object_row, protocol_slices
from samadapt.inference.decode import upscale_logits
from samadapt.inference.region_decode import decode_regions, pick_outputs
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.prompts.box_behaviours import LooseBox, NoisyBox, PartialBox, ShiftedBox, TightBox
from samadapt.prompts.click_behaviours import BoundaryClick, CentreClick

ROBUSTNESS_BEHAVIOURS: dict[str, object] = {
    "box_tight": TightBox(), "box_loose": LooseBox(), "box_shifted": ShiftedBox(), "box_partial": PartialBox(),
    "box_noisy": NoisyBox(), "click_centre": CentreClick(), "click_off_centre": BoundaryClick(),
}


@torch.inference_mode()
def robustness_rows(
    sam: Sam, prepared: PreparedDataset, cache: EmbeddingCache, split: str = "test", seed: int = 0,
    behaviours: Mapping[str, object] = ROBUSTNESS_BEHAVIOURS, progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """One row per object and behaviour: the object's identity, ``behaviour`` and its ``dice``."""
    device = next(sam.parameters()).device
    image_size = sam.image_encoder.img_size
    generators = {name: torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
                  for i, name in enumerate(behaviours)}
    rows = []
    for item in protocol_slices(prepared, cache, split):
        embedding = item.embedding.to(device)
        truth = item.truth.numpy()
        for name, behaviour in behaviours.items():
            prompts = behaviour(item.truth, generators[name], item.truth)
            low_res, iou_pred = decode_regions(sam, embedding, prompts.to(device))
            chosen, _, _ = pick_outputs(low_res, iou_pred, prompts.ambiguous)
            predicted = item.crop((upscale_logits(chosen.float(), image_size) > 0).cpu()).numpy()
            for obj, pred, gt in zip(item.objects, predicted, truth, strict=True):
                rows.append({**object_row(item, obj), "behaviour": name, "dice": dice(pred, gt)})
        if progress is not None:
            progress(1)
    return rows


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
             "prompting).", "",
             "| model | " + " | ".join(behaviours) + " | std | max-min |", "|" + "---|" * (3 + len(behaviours))]
    for label, summary in summaries.items():
        mean = summary["mean_over_classes"]
        if not mean:
            continue
        cells = [_fmt(mean["dice"].get(b, math.nan)) for b in behaviours]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(mean['std'])} | {_fmt(mean['range'])} |")
    classes = list(dict.fromkeys(c for s in summaries.values() for c in s["per_class"]))
    lines += ["", "Spread per class (std across behaviours, x100):", "",
              "| class | n | " + " | ".join(summaries) + " |", "|" + "---|" * (2 + len(summaries))]
    for name in classes:
        n = next((s["per_class"][name]["n"] for s in summaries.values() if name in s["per_class"]), 0)
        cells = [_fmt(s["per_class"][name]["std"]) if name in s["per_class"] else "-" for s in summaries.values()]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
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
