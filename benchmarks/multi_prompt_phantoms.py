"""Zero-shot vs single-prompt vs multi-prompt fine-tuning on CT phantoms, the same number of steps.

CT phantoms (organs and lesions) are prepared for the foundation model and embedded once. Two decoder
fine-tuning runs with identical settings except the prompting (``single``: one random object per slice
per step; ``multi``: every object of the slice at once) train for the same steps; ``samadapt eval`` then
compares the foundation model zero-shot and both fine-tuned models on the test cases (box prompts, 2D/3D,
jitter 0/5/10/20 px). Writes the eval report under ``<work>/report`` and the per-class Dice summary to
``benchmarks/results/multi_prompt_phantoms.json``.

    python benchmarks/multi_prompt_phantoms.py                    # ~15 min on 2 CPU cores
    python benchmarks/multi_prompt_phantoms.py --steps 100 --cases 8   # a quick look
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from phantom_workbench import add_set_option, embedded_phantoms, phantom_arguments, set_overrides  # noqa: E402
from samadapt.config import FinetuneConfig, config_to_dict, make_config, merge_settings  # noqa: E402
from samadapt.evaluation.model_comparison import evaluate_models  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.training.finetune import finetune, prepare_run_folder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "multi_prompt_phantoms.json"


def main() -> None:
    parser = phantom_arguments(__doc__.splitlines()[0], cases=24, out=RESULTS)
    parser.add_argument("--steps", type=int, default=400)
    add_set_option(parser, "extra FinetuneConfig setting of both runs (repeatable)")
    args = parser.parse_args()
    extra, tag = set_overrides(args.overrides)
    work, _, prepared, _ = embedded_phantoms(args.work, args.model, args.cases)
    models, runs = [args.model], {}
    for prompting in ("single", "multi"):
        values = {"data": str(prepared.root), "model": args.model, "prompting": prompting,
                  "engine": {"steps": args.steps}}
        config = make_config(FinetuneConfig, merge_settings(values, extra, FinetuneConfig), "--set")  # "1e-4" -> float
        run_dir = work / "runs" / f"{prompting}-prompt{tag}"
        config = prepare_run_folder(run_dir, config, resume=(run_dir / "config.yaml").is_file())
        started = time.time()
        result = finetune(run_dir, config)
        runs[prompting] = {"config": config_to_dict(config), "steps": result.steps, "wall_s": round(result.wall_s, 1),
                           "best_val_dice": result.best_val_dice, "curve": result.curve,
                           "this_call_s": round(time.time() - started, 1)}
        models.append(str(result.model))
    report = work / f"report{tag}"
    summary_md = evaluate_models(prepared, models, report)
    evaluation = json.loads((report / "evaluation.json").read_text())
    lesion = FinetuneConfig().is_lesion
    table = {}
    for label, by_jitter in evaluation["results"].items():
        per_class = by_jitter["2d"][str(evaluation["summary_jitter_px"])]["per_class"]
        dice = {name: round(scores["dice"], 4) for name, scores in per_class.items()}
        volume = by_jitter["3d"][str(evaluation["summary_jitter_px"])]["mean_over_classes"]
        organs = [v for k, v in dice.items() if not lesion(k)]
        lesions = [v for k, v in dice.items() if lesion(k)]
        table[label] = {"dice_per_class": dice, "organ_mean": round(float(np.mean(organs)), 4),
                        "lesion_mean": round(float(np.mean(lesions)), 4) if lesions else None,
                        "dice_3d_mean_over_classes": volume["dice"]}
    write_json_atomic(args.out, {
        "what": "2D per-object Dice on the test cases, tight boxes (jitter 0), mean per class; the same steps "
                "for single- and multi-prompt fine-tuning",
        "model": args.model, "cases": args.cases, "steps": args.steps, "runs": runs, "dice": table,
        "report": str(summary_md), "machine": machine(),
        "settings": extra, "command": "python benchmarks/multi_prompt_phantoms.py " + " ".join(sys.argv[1:]),
    })
    for label, row in table.items():
        print(f"{label:>24}: organs {row['organ_mean']:.3f}  lesions {row['lesion_mean']}")
    print(f"report: {summary_md}\nwrote {args.out}")


if __name__ == "__main__":
    main()
