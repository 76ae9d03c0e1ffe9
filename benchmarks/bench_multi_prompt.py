"""Multi-prompt vs single-prompt fine-tuning throughput: objects trained per second, and step-time split.

On CT phantoms embedded by the foundation model, one training step is: read 4 slices (embedding + object
masks) -> make their boxes -> decoder forward -> loss -> backward -> AdamW step, exactly as
``samadapt train`` runs it. Multi-prompt decodes the K objects of a slice in one pass (only slices with
at least K objects are used, capped at K, so every slice contributes exactly K); single-prompt decodes one
random object per slice. Configurations are timed round-robin, several rounds, medians reported, so machine
noise hits them alike; the figures are ratios within this one run.

Writes ``benchmarks/results/multi_prompt_speed.json``:

- ``objects_per_s``: per configuration; ``speedup_vs_single``: multi at K over single (target >= 3 at K=8);
- ``outside_decoder_fraction``: (data + prompt time) / step time, per configuration (target <= 0.15).

    python benchmarks/bench_multi_prompt.py                  # ~3 min on 2 CPU cores (phantoms, embeddings, timing)
    python benchmarks/bench_multi_prompt.py --work /tmp/mp   # keep (and reuse) the phantoms and embeddings
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from phantom_workbench import embedded_phantoms, phantom_arguments, timed_training_steps  # noqa: E402
from samadapt.config import FinetuneConfig  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.prompts.box_noise import BoxNoise  # noqa: E402
from samadapt.training.finetune import objective_from_config, trainable_parameters  # noqa: E402
from samadapt.training.slice_data import training_slices  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "multi_prompt_speed.json"
SLICES_PER_STEP = 4


def time_steps(loaded, prepared, cache, pool, config: FinetuneConfig, steps: int, seed: int) -> list[dict]:
    """Run ``steps`` training steps of ``config`` on slices of ``pool``; per-step seconds by phase."""
    named = trainable_parameters(loaded, train_prompt_encoder=False)
    return timed_training_steps(loaded, prepared, cache, pool, objective_from_config(config), list(named.values()),
                                config.is_lesion, SLICES_PER_STEP, steps, seed)


def main() -> None:
    parser = phantom_arguments(__doc__.splitlines()[0], cases=6, out=RESULTS)
    parser.add_argument("--steps", type=int, default=15, help="steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loss-size", type=int, default=FinetuneConfig().loss_size,
                        help="side of the mask-loss frame (FinetuneConfig.loss_size; default: its default)")
    args = parser.parse_args()
    _, loaded, prepared, cache = embedded_phantoms(args.work, args.model, args.cases, split=(1.0, 0.0, 0.0))
    slices = training_slices(prepared, "train")
    counts = [1, 4, 8]
    single = FinetuneConfig(prompting="single", box_noise=BoxNoise("medsam"), loss_size=args.loss_size)
    configs = {"single": (single, slices)}
    for k in counts:
        pool = [s for s in slices if len(s.objects) >= k]
        configs[f"multi_{k}"] = (FinetuneConfig(prompting="multi", max_prompts_per_slice=k, loss_size=args.loss_size),
                                 pool)
    timings: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(2):  # warm-up: allocator, first-call overheads
        for config, pool in configs.values():
            time_steps(loaded, prepared, cache, pool, config, 2, seed=99)
    for round_index in range(args.rounds):
        for name, (config, pool) in configs.items():
            timings[name] += time_steps(loaded, prepared, cache, pool, config, args.steps, seed=round_index)
    result = {}
    for name, rows in timings.items():
        step_s = statistics.median(r["step_s"] for r in rows)
        objects = statistics.mean(r["prompts"] for r in rows)
        outside = statistics.median((r["data_s"] + r["prompt_s"]) / r["step_s"] for r in rows)
        result[name] = {"objects_per_step": round(objects, 2), "median_step_s": round(step_s, 4),
                        "objects_per_s": round(objects / step_s, 1), "outside_decoder_fraction": round(outside, 3),
                        "slices_in_pool": len(configs[name][1]), "steps_timed": len(rows)}
    single = result["single"]["objects_per_s"]
    speedup = {f"{k}_objects": round(result[f"multi_{k}"]["objects_per_s"] / single, 2) for k in counts}
    report = {
        "what": "objects trained per second, multi-prompt (K objects per slice, one decoder pass) vs "
                "single-prompt (one object per slice), 4 slices per step, decoder fine-tuning from cached "
                "embeddings, fp32 CPU",
        "model": args.model, "loss_size": args.loss_size, "machine": machine(), "configurations": result,
        "speedup_vs_single": speedup,
        "targets": {"speedup_at_8_objects": ">= 3", "outside_decoder_fraction": "<= 0.15"},
        "command": "python benchmarks/bench_multi_prompt.py " + " ".join(sys.argv[1:]),
    }
    write_json_atomic(args.out, report)
    print(f"speed-up vs single-prompt: {speedup}")
    print(f"outside-decoder fraction: { {k: v['outside_decoder_fraction'] for k, v in result.items()} }")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
