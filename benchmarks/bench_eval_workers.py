"""``samadapt eval --workers``: the interactive protocol on a few slices, in this process vs worker processes.

On CT phantoms embedded by the foundation model (``tiny`` by default), the interactive protocol (RITM's
simulated user, up to 20 clicks, all objects of a slice together: :func:`interactive_rows`) runs on the same
sample of test slices in three configurations, round-robin over ``--rounds`` rounds so that machine noise
hits them alike (the figures are ratios within this one run; medians reported):

- ``in-process, torch default threads``: what ``--workers 1`` does (torch's intra-op threads, one per core);
- ``in-process, 1 torch thread``: the same with ``torch.set_num_threads(1)``;
- ``N worker processes``: ``--workers N`` (spawned processes, the cores shared out among them; their start,
  importing torch and samadapt, is included).

Writes ``benchmarks/results/eval_workers.json``: seconds per slice per configuration, the speed-ups
against the first configuration, and how far the results move with the thread count (floating-point sums in another
order can move a click by a pixel, and the simulated user's later clicks with it).

    nice -n 15 python benchmarks/bench_eval_workers.py --work /tmp/bew     # ~10 min on a loaded 2-core CPU
    nice -n 15 python benchmarks/bench_eval_workers.py --work /tmp/bew --slices 40 --rounds 1 \
        --skip-default-threads --out benchmarks/results/eval_workers_40.json  # a longer run, start-up amortised
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from phantom_workbench import embedded_phantoms  # noqa: E402
from samadapt.evaluation.box_protocol import slices_with_objects  # noqa: E402
from samadapt.evaluation.interactive_protocol import interactive_rows  # noqa: E402
from samadapt.evaluation.slice_sample import sample_slices  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "eval_workers.json"


def _largest_difference(rows: list[dict], reference: list[dict]) -> float:
    """The largest absolute difference of any Dice, IoU or NoC between two runs' rows (same objects)."""
    keys = [k for k in reference[0] if k.startswith(("dice_", "iou_", "noc_"))]
    return max((abs(a.get(k, 0) - b.get(k, 0)) for a, b in zip(rows, reference, strict=True) for k in keys),
               default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantoms and embeddings (reused)")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-default-threads", action="store_true",
                        help="leave out the slowest configuration (in-process, torch default threads)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    info = machine()
    _, loaded, prepared, cache = embedded_phantoms(args.work, args.model, args.cases)
    sample = sample_slices(list(slices_with_objects(prepared, "test")), args.slices, seed=0)
    default_threads = torch.get_num_threads()
    configurations = {
        f"in-process, torch default threads ({default_threads})": (default_threads, 1),
        "in-process, 1 torch thread": (1, 1),
        f"{args.workers} worker processes": (default_threads, args.workers),
    }
    if args.skip_default_threads:
        del configurations[next(iter(configurations))]
    seconds: dict[str, list[float]] = {name: [] for name in configurations}
    differences: dict[str, float] = {name: 0.0 for name in configurations}
    means: dict[str, float] = {}
    reference = None
    for _ in range(args.rounds):
        for name, (threads, workers) in configurations.items():
            torch.set_num_threads(threads)
            started = time.perf_counter()
            rows = interactive_rows(loaded.sam, prepared, cache, "test", slices=sample, workers=workers)
            seconds[name].append(time.perf_counter() - started)
            reference = reference or rows
            differences[name] = max(differences[name], _largest_difference(rows, reference))
            means[name] = statistics.fmean(row["dice_10"] for row in rows)
    torch.set_num_threads(default_threads)
    per_slice = {name: statistics.median(values) / len(sample) for name, values in seconds.items()}
    base = next(iter(per_slice.values()))
    result = {
        "machine": info, "model": args.model, "slices": len(sample),
        "objects": sum(len(objects) for _, _, objects in sample), "rounds": args.rounds,
        "seconds": seconds, "seconds_per_slice": per_slice,
        "max_abs_difference_vs_first": differences,
        "mean_dice_after_10_clicks": means,
        "speedup_vs_first": {name: base / value for name, value in per_slice.items()},
    }
    write_json_atomic(args.out, result)
    for name, value in per_slice.items():
        print(f"{name}: {value:.2f} s per slice ({base / value:.2f}x), mean Dice@10 {means[name]:.4f}, largest "
              f"difference to the first configuration {differences[name]:.3g}")


if __name__ == "__main__":
    main()
