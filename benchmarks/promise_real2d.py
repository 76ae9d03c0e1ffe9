"""ProMISe on the real 2D CT slices (``../shared/data/real/ct_slices_png``, SAM-Med2D layout), SAM frozen,
leave one image out.

The set is tiny: 4 pre-windowed CT slices with masks (2 AMOS abdomen slices, a TotalSegmentator thorax and a
pelvis slice; a fifth image has no masks and is skipped by ``samadapt prepare``), 24 structures, most of
them on a single image. Each fold trains on 3 images and tests on the 4th: ``samadapt adapt`` in mode
``apm+ips`` (the APM learns the classes of its 3 training images) and in mode ``ips`` (ground-truth
prompts). The automatic rows can only be judged on the classes a fold has seen in training (those of the
held-out image shared with the others: aorta, IVC, liver), the absent ones as false positives; the
promptable check (tight boxes, 8 + 8 points; frozen SAM vs IPS) covers every object of the held-out image.
No pixel spacing comes with the PNGs (1 mm is assumed where needed); figures of 4 images are anecdotes,
not estimates. Writes ``benchmarks/results/promise_real2d.json``.

    python benchmarks/promise_real2d.py              # ~4 CPU-minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from promise_runs import adapted  # noqa: E402
from samadapt.config import PrepareConfig, PromiseConfig  # noqa: E402
from samadapt.data.prepare import prepare_dataset  # noqa: E402
from samadapt.data.prepared import PreparedDataset, dataset_hash, write_manifest  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.promise.auto_protocol import evaluate_automatic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "ct_slices_png"
RESULTS = Path(__file__).resolve().parent / "results" / "promise_real2d.json"


def fold_dataset(prepared: PreparedDataset, test_case: str, out: Path) -> PreparedDataset:
    """``prepared`` with ``test_case`` as the test split and every other case as training (case folders linked,
    manifest and hash rewritten): one leave-one-out fold."""
    (out / "cases").mkdir(parents=True, exist_ok=True)
    cases = []
    for case in prepared.manifest["cases"]:
        link = out / "cases" / case["case_id"]
        if not link.exists():
            link.symlink_to((prepared.root / "cases" / case["case_id"]).resolve(), target_is_directory=True)
        cases.append({**case, "split": "test" if case["case_id"] == test_case else "train"})
    manifest = {**prepared.manifest, "cases": cases,
                "hash": dataset_hash(out, prepared.manifest["params"], cases)}
    write_manifest(out, manifest)
    return PreparedDataset(out)


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _mean_over_classes(rows: list[dict]) -> float | None:
    per_class: dict[str, list[float]] = {}
    for row in rows:
        per_class.setdefault(row["class"], []).append(float(row["dice"]))
    return round(float(np.mean([np.mean(v) for v in per_class.values()])), 4) if per_class else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs (reused by a rerun)")
    parser.add_argument("--steps", type=int, default=60, help="steps per run (a step = the 3 training images)")
    parser.add_argument("--data", type=Path, default=REAL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.data / "images").is_dir():
        sys.exit(f"{args.data}: the real 2D slices are not there (see ../shared/data/real/README.md)")
    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="samadapt_promise_real2d_"))
    prepared = prepare_dataset(args.data, work / "prepared", PrepareConfig(image_size=256))
    folds, automatic, promptable = [], {}, {}
    for test_case in prepared.case_ids():
        fold = fold_dataset(prepared, test_case, work / f"fold_{test_case}")
        seen = sorted({o.class_name for c in fold.case_ids("train") for o in fold.objects(c)})
        runs, adapters = {}, []
        for mode in ("apm+ips", "ips"):
            engine = replace(PromiseConfig().engine, steps=args.steps, batch_size=3, eval_every=args.steps,
                             checkpoint_every=args.steps, warmup_steps=10)
            config = PromiseConfig(data=str(fold.root), model=args.model, mode=mode, engine=engine,
                                   classes=seen if mode == "apm+ips" else None)
            result, runs[mode] = adapted(work / f"runs_{test_case}" / mode.replace("+", "_"), config)
            adapters.append(str(result.adapter.parent))
        report = work / f"report_{test_case}"
        evaluate_automatic(fold, adapters, report, nsd_tolerance_mm=None)
        for row in _rows(report / "automatic_pairs.csv"):
            automatic.setdefault(row["method"], []).append(row)
        for row in _rows(report / "promptable.csv"):
            promptable.setdefault(row["method"], []).append(row)
        test_classes = sorted({o.class_name for o in fold.objects(test_case)})
        folds.append({"test_image": test_case, "training_classes": seen, "test_classes": test_classes,
                      "judged_automatically": sorted(set(seen) & set(test_classes)), "runs": runs})
    table = {
        "automatic": {name: {"dice_present": _mean_over_classes([r for r in rows if r["present"] == "True"]),
                             "present_pairs": sum(r["present"] == "True" for r in rows),
                             "absent_pairs": sum(r["present"] == "False" for r in rows),
                             "false_positive_rate": round(float(np.mean([r["false_positive"] == "True" for r in rows
                                                                         if r["present"] == "False"])), 4)
                             if any(r["present"] == "False" for r in rows) else None}
                      for name, rows in automatic.items()},
        "promptable": {name: {"dice": _mean_over_classes(rows), "objects": len(rows)}
                       for name, rows in promptable.items()},
    }
    write_json_atomic(args.out, {
        "what": "leave-one-image-out on 4 real CT slices (SAM-Med2D demo set); automatic Dice on the classes a "
                "fold saw in training (mean over classes, pooled over folds), false-positive rate on the seen "
                "classes absent from the held-out image, promptable Dice per object (tight box / 8+8 points)",
        "caveat": "4 images, one slice each: anecdotal; the APM sees each class on 1-2 training images",
        "model": args.model, "steps": args.steps, "folds": folds, "table": table, "machine": machine(),
        "total_s": round(time.time() - started, 1),
        "command": f"python benchmarks/promise_real2d.py --model {args.model} --steps {args.steps}",
    })
    for section, rows in table.items():
        for name, row in rows.items():
            print(f"{section:10s} {name:40s} {row}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
