"""PHPG throughput: regions trained per second, all regions of a slice per decoder pass vs one region per pass.

On CT phantoms embedded by the foundation model, one training step is exactly ``samadapt train
--set objective=phpg``'s: read the slices (embedding + object masks) -> simulate every region's first
prompt -> first round + correction rounds + mask-only rounds, each a decoder pass -> losses (and the error
head's) -> backward -> AdamW step. "multi" decodes the K regions of a slice together in every round (the
segment-multi-region paradigm); "single" runs the same regions with the same rounds one region per pass
(``regions_per_pass=1``). Only slices with at least K objects are used, capped at K, so every slice
contributes exactly K regions. Two round settings: the CPU default (2 corrections + 1 mask-only round) and
SAM's recipe (8 + 2). Configurations are timed round-robin over several rounds and medians reported, so
machine noise hits them alike; the figures are ratios within this one run.

Writes ``benchmarks/results/phpg_speed.json``: ``regions_per_s`` per configuration,
``speedup_multi_vs_single`` per round setting, and the cost of the error head (the CPU default without it).

    python benchmarks/bench_phpg.py                  # ~4 min on 2 CPU cores (phantoms, embeddings, timing)
    python benchmarks/bench_phpg.py --work /tmp/pw   # keep (and reuse) the phantoms and embeddings
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from phantom_workbench import embedded_phantoms, phantom_arguments, timed_training_steps  # noqa: E402
from samadapt.config import FinetuneConfig  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.training.finetune import objective_from_config, trainable_parameters  # noqa: E402
from samadapt.training.slice_data import training_slices  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phpg_speed.json"
ROUNDS = {"cpu_default_2+1": (2, 1), "sam_recipe_8+2": (8, 2)}


def time_steps(loaded, prepared, cache, pool, objective, slices_per_step: int, steps: int, seed: int) -> list[dict]:
    """``steps`` PHPG training steps on slices of ``pool``; per step: seconds, regions, prompt seconds."""
    named = trainable_parameters(loaded, train_prompt_encoder=False)
    if objective.error_head is not None:
        named.update({f"error_head.{n}": p for n, p in objective.error_head.named_parameters()})
    return timed_training_steps(loaded, prepared, cache, pool, objective, list(named.values()),
                                FinetuneConfig().is_lesion, slices_per_step, steps, seed)


def main() -> None:
    parser = phantom_arguments(__doc__.splitlines()[0], cases=6, out=RESULTS)
    parser.add_argument("--regions", type=int, default=6, help="regions per slice (K)")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices-per-step", type=int, default=2)
    args = parser.parse_args()
    _, loaded, prepared, cache = embedded_phantoms(args.work, args.model, args.cases, split=(1.0, 0.0, 0.0))
    pool = [s for s in training_slices(prepared, "train") if len(s.objects) >= args.regions]
    configs = {}
    for setting, (corrections, mask_only) in ROUNDS.items():
        base = FinetuneConfig(objective="phpg", max_prompts_per_slice=args.regions,
                              phpg_correction_rounds=corrections, phpg_mask_only_rounds=mask_only)
        multi = objective_from_config(base, loaded.spec.prompt_embed_dim)
        configs[f"{setting}/multi"] = multi
        configs[f"{setting}/single"] = replace(multi, regions_per_pass=1)
        if setting == "cpu_default_2+1":
            configs[f"{setting}/multi_no_error_head"] = replace(multi, error_head=None)
    timings: dict[str, list[dict]] = {name: [] for name in configs}
    for objective in configs.values():  # warm-up: allocator, first-call overheads
        time_steps(loaded, prepared, cache, pool, objective, 1, 1, seed=99)
    for round_index in range(args.rounds):
        for name, objective in configs.items():
            timings[name] += time_steps(loaded, prepared, cache, pool, objective, args.slices_per_step, args.steps,
                                        seed=round_index)
    result = {}
    for name, rows in timings.items():
        step_s = statistics.median(r["step_s"] for r in rows)
        regions = statistics.mean(r["prompts"] for r in rows)
        result[name] = {"regions_per_step": regions, "median_step_s": round(step_s, 4),
                        "regions_per_s": round(regions / step_s, 2),
                        "prompt_fraction": round(statistics.median(r["prompt_s"] / r["step_s"] for r in rows), 3),
                        "steps_timed": len(rows)}
    rate = {name: row["regions_per_s"] for name, row in result.items()}
    head_cost = round(rate["cpu_default_2+1/multi_no_error_head"] / rate["cpu_default_2+1/multi"], 2)
    sam_vs_default = round(rate["cpu_default_2+1/multi"] / rate["sam_recipe_8+2/multi"], 2)
    speedup = {setting: round(rate[f"{setting}/multi"] / rate[f"{setting}/single"], 2) for setting in ROUNDS}
    write_json_atomic(args.out, {
        "what": f"regions trained per second with PHPG (K={args.regions} regions per slice, {args.slices_per_step} "
                "slices per step, error head on, decoder fine-tuning from cached embeddings, fp32 CPU): all regions "
                "of a slice in one decoder pass per round (multi) vs one region per pass (single), same rounds",
        "model": args.model, "machine": machine(), "slices_in_pool": len(pool), "configurations": result,
        "speedup_multi_vs_single": speedup,
        "error_head_slowdown": head_cost, "sam_recipe_slowdown_vs_default": sam_vs_default,
        "prompt_fraction": "share of the step spent simulating users (first prompts, correction clicks)",
        "command": "python benchmarks/bench_phpg.py",
    })
    print(f"speed-up, all regions per pass vs one: {speedup}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
