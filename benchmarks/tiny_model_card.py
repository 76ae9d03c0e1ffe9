"""Figures of the samadapt-tiny model card (docs/model_card_tiny.md).

1. The pretraining curve from a run folder's ``metrics.jsonl`` -> ``docs/tiny_pretraining_curve.png``.
2. Zero-shot box-prompt segmentation of CT phantoms (every case: no training is involved) by the model,
   against the box-filling baseline, per class -> ``benchmarks/results/tiny_zero_shot.json`` and a Markdown
   table on stdout.

    python benchmarks/tiny_model_card.py --run STAGE1_RUN [--run STAGE2_RUN ...] [--cases 16] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from samadapt.config import PrepareConfig, PretrainConfig
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.data.shapes import generate_corpus
from samadapt.evaluation.box_protocol import box_fill_predictions, predict_with_boxes, score_predictions
from samadapt.evaluation.figures import pyplot, save_figure
from samadapt.evaluation.metrics import mean_scores, per_class_mean
from samadapt.evaluation.report import MethodResult, summary_table
from samadapt.io.atomic import write_json_atomic
from samadapt.models.embedding_cache import compute_embeddings
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import load_sam
from samadapt.prompts.boxes import boxes_from_masks, masks_from_boxes

ROOT = Path(__file__).resolve().parents[1]


def plot_curve(runs: list[Path], out: Path) -> dict:
    """Plot the pretraining curve of one run, or of the stages of a model (each ``init_from`` the last).

    Later stages' steps are offset by the earlier stages' steps, so the x-axis counts the model's total
    training; a dotted line marks where each stage starts.
    """
    records, starts, offset, wall = [], [], 0, 0.0
    for run in runs:
        stage = [_engine_keys(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        starts.append(offset)
        records += [{**r, "step": r["step"] + offset} for r in stage]
        offset, wall = offset + stage[-1]["step"], wall + _wall_s(run, stage)
    evals = [r for r in records if "val_box_iou" in r]
    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    window = 20
    steps = [r["step"] for r in records]
    for key, label in (("iou_first_box", "train: first-round box IoU"), ("iou_last", "train: last-round IoU")):
        values = [r.get(key, float("nan")) for r in records]
        smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                  for i in range(len(values))]
        ax.plot(steps, smooth, alpha=0.6, label=f"{label} ({window}-step mean)")
    ax.plot([r["step"] for r in evals], [r["val_box_iou"] for r in evals], "o-", label="held-out: box IoU")
    ax.plot([r["step"] for r in evals], [r["val_point_iou"] for r in evals], "s-", label="held-out: 1-click IoU")
    for start in starts[1:]:
        ax.axvline(start, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("step" if len(runs) == 1 else "step (all stages; dotted: a stage starts)")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out)
    return {"steps": offset, "wall_s": round(wall, 1), "stage_starts": starts,
            "eval": [{"step": r["step"], "eval_box_iou": r["val_box_iou"], "eval_point_iou": r["val_point_iou"]}
                     for r in evals]}


def _engine_keys(record: dict) -> dict:
    """A metrics record with the held-out IoU under the engine's names (``val_*``; runs made before
    pretraining ran on the engine wrote ``eval_*``)."""
    return {("val_" + k[5:] if k.startswith("eval_") else k): v for k, v in record.items()}


def _wall_s(run: Path, stage: list[dict]) -> float:
    """A stage's training time: the engine's sidecar figure, or (runs made before pretraining ran on the
    engine) the last record's ``elapsed_s``."""
    if "elapsed_s" in stage[-1]:
        return stage[-1]["elapsed_s"]
    return json.loads((run / "model.json").read_text())["training"]["wall_s"]


def heldout_box_fill_iou(eval_images: int, eval_seed: int, size: int) -> float:
    """Mean IoU of filling each object's tight box, over the held-out corpus: the synthetic baseline."""
    _, instances = generate_corpus(eval_images, eval_seed, size)
    ious = []
    for inst in instances:
        masks = torch.as_tensor(inst)[None] == torch.unique(torch.as_tensor(inst))[1:, None, None]
        filled = masks_from_boxes(boxes_from_masks(masks), *masks.shape[-2:])
        ious += ((filled & masks).flatten(1).sum(1) / (filled | masks).flatten(1).sum(1)).tolist()
    return sum(ious) / len(ious)


def zero_shot(model: str, cases: int, work: Path) -> dict:
    loaded = load_sam(model)
    source = write_phantom_dataset(work / "phantoms", n_cases=cases, seed=0)
    prepared = prepare_dataset(source, work / "prepared", PrepareConfig(image_size=loaded.spec.image_size))
    cache = compute_embeddings(prepared, loaded)
    started = time.time()
    model_rows = score_predictions(prepared, predict_with_boxes(loaded.sam, prepared, cache, split=None))
    wall = time.time() - started
    fill_rows = score_predictions(prepared, box_fill_predictions(prepared, split=None))
    methods = [MethodResult(f"{model} zero-shot (box)", model_rows), MethodResult("box-fill baseline", fill_rows)]
    print(summary_table(methods, "dice"))
    print()
    print(summary_table(methods, "nsd"))
    return {
        "cases": cases, "objects": len(model_rows), "decode_and_score_s": round(wall, 1),
        "model": {"overall": mean_scores(model_rows), "per_class": per_class_mean(model_rows)},
        "box_fill": {"overall": mean_scores(fill_rows), "per_class": per_class_mean(fill_rows)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", default=[],
                        help="pretraining run folder (for the curve); repeat for each stage, first stage first")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/samadapt-model-card"))
    args = parser.parse_args()
    result = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__}}
    if args.run:
        result["pretraining"] = plot_curve(args.run, ROOT / "docs" / "tiny_pretraining_curve.png")
        config = PretrainConfig()
        result["pretraining"]["heldout_box_fill_iou"] = heldout_box_fill_iou(
            config.eval_images, config.eval_seed, REGISTRY[config.model].image_size)
    result["zero_shot_phantoms"] = zero_shot(args.model, args.cases, args.work)
    write_json_atomic(ROOT / "benchmarks" / "results" / "tiny_zero_shot.json", result)


if __name__ == "__main__":
    main()
