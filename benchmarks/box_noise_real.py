"""Box noise in training vs box jitter at test time, on real held-out data (issue 21, item 6).

medsam_lite's mask decoder is fine-tuned on the pooled, patient-split train slices of the six manually
labelled 2D sets that ``benchmarks/real_foundations.py`` prepares (run it first, or at least its data and
embedding stages: this script reads ``--work``'s ``prepared/pooled`` and its medsam_lite cache), once per
``box_noise`` style, all else equal: ``medsam`` (each side outward by U(0, shift), MedSAM's recipe and the
old default), ``sam`` (SAM's two-way N(0, 10% of the side), capped) and ``mixed`` (one of the two per box,
the new default). Each model, the zero-shot medsam_lite and the box-fill baseline are then evaluated on
the pooled test split with tight boxes and with each coordinate jittered by U(-j, j) model-frame pixels
(``samadapt eval --jitter 0,10,20``; 256 px frame, so 20 px is 8% of the image).

    python benchmarks/box_noise_real.py --work /tmp/samadapt_real_foundations

Writes ``benchmarks/results/box_noise_real.json`` (mean over classes of per-object Dice per model and
jitter, with the bootstrap intervals of ``samadapt eval``) and prints a Markdown table. Runs resume or are
reused in ``--work/runs/box-noise-<style>-s<steps>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from real_foundations import trained  # noqa: E402
from samadapt.config import FinetuneConfig  # noqa: E402
from samadapt.data.prepared import PreparedDataset  # noqa: E402
from samadapt.evaluation.model_comparison import evaluate_models, model_labels  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.prompts.box_noise import BoxNoise  # noqa: E402
from samadapt.training.engine import EngineSettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "box_noise_real.json"
STYLES = ("medsam", "sam", "mixed")
JITTERS = (0, 10, 20)


def table(results: dict) -> str:
    """Markdown: one row per model, Dice x100 [95% CI] per jitter level."""
    lines = ["| model | " + " | ".join(f"{j} px" for j in JITTERS) + " |", "|---|" + "---|" * len(JITTERS)]
    for name, by_jitter in results.items():
        cells = [by_jitter.get(str(j), "-") for j in JITTERS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/samadapt_real_foundations"),
                        help="real_foundations.py's work folder (prepared/pooled and its medsam_lite cache)")
    parser.add_argument("--steps", type=int, default=64, help="steps of 4 slices per run (64: ~2.3 epochs)")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    pooled_root = args.work / "prepared" / "pooled"
    if not (pooled_root / "manifest.json").is_file():
        sys.exit(f"{pooled_root}: not prepared; run benchmarks/real_foundations.py --work {args.work} first")
    pooled = PreparedDataset(pooled_root)
    started = time.time()

    runs = {}
    for style in args.styles:
        engine = EngineSettings(steps=args.steps, batch_size=4, eval_every=max(1, args.steps // 4),
                                checkpoint_every=max(1, args.steps // 4))
        config = FinetuneConfig(data=str(pooled.root), model="medsam_lite", engine=engine, box_noise=BoxNoise(style))
        runs[style] = trained(args.work / "runs" / f"box-noise-{style}-s{args.steps}", config)
        print(f"{style}: step {runs[style]['model_selection']['step']} of {runs[style]['iterations']}, "
              f"{runs[style]['wall_s']} s", flush=True)

    models = ["medsam_lite"] + [runs[s]["model"] for s in args.styles]
    names = ["medsam_lite zero-shot"] + [f"FT box_noise={s}" for s in args.styles]
    labels = dict(zip(model_labels(models), names, strict=True))
    report = args.work / "reports" / f"box_noise_s{args.steps}"
    evaluate_models(pooled, models, report, split="test", jitters=JITTERS)
    evaluation = json.loads((report / "evaluation.json").read_text())
    results: dict[str, dict[str, str]] = {}
    numbers: dict[str, dict[str, float]] = {}
    for row in evaluation["jitter_sensitivity"]:
        name = labels[row["method"]]
        results.setdefault(name, {})[f"{row['jitter_px']:g}"] = f"{100 * row['dice_2d']:.1f}"
        numbers.setdefault(name, {})[f"{row['jitter_px']:g}"] = round(100 * row["dice_2d"], 2)
    fill = evaluation["box_fill"]["2d"]
    estimates = {labels.get(k, k): v for k, v in evaluation["estimates"]["models"].items()}
    text = table(results) + f"\n\nbox-fill (tight boxes): {100 * fill['mean_over_classes']['dice']:.1f}"
    print(text)
    write_json_atomic(args.out, {
        "what": "mean over classes of per-object Dice x100 on the pooled patient-split test split of six real "
                "2D sets, medsam_lite fine-tuned with each box_noise style, tight and jittered box prompts",
        "command": f"python benchmarks/box_noise_real.py --work {args.work} --steps {args.steps}",
        "jitters_px": list(JITTERS), "dice_x100": numbers,
        "box_fill_tight_x100": round(100 * fill["mean_over_classes"]["dice"], 2),
        "estimates_with_ci": estimates, "runs": runs, "test_sample": evaluation["estimates"]["sample"],
        "machine": machine(), "wall_s": round(time.time() - started, 1)})
    print(args.out)


if __name__ == "__main__":
    main()
