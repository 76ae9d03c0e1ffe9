"""CBDP on real data: PHPG on medsam_lite for N whole epochs, with and without class-balanced data pruning.

``benchmarks/real_foundations.py`` fine-tunes for ~1 epoch, where CBDP cannot prune (it never prunes the first
nor the last epoch). This benchmark runs both for ``--epochs`` whole epochs of the same data and reports what
pruning saves and what it costs in accuracy:

- data: real_foundations' six manually labelled 2D sets, pooled, split by patient (``--seed`` 0: the same
  split, the same prepared folder and embedding cache under ``--work``, so a folder real_foundations made is
  reused as is; its functions are imported, not copied);
- ``PHPG``: medsam_lite's mask decoder, PHPG objective, ``epochs x ceil(train slices / batch)`` steps (every
  slice every epoch);
- ``PHPG + CBDP``: the same settings with ``pruning=class`` and the same ``steps``, which fix the same number
  of epochs; CBDP's epochs 2 .. N-1 leave out part of the well-learned slices, so it takes fewer iterations;
- both runs validate every full-data epoch's steps (``eval_every``; for the pruned run these are not its
  epochs' ends) and at their end, and keep their best (``model.pth``, the library's default) and last
  (``last.pth``) steps.

Measured on the pooled test split (held-out patients), tight boxes, Dice x100 per set and class (mean over
objects): the box-fill baseline and medsam_lite zero-shot (recomputed here in the same ``eval`` run), then
both fine-tuned decoders, for the last step (the headline: what each training schedule ends with) and for the
validation-selected step. The paired difference (CBDP - full) pairs each test object's Dice under the two
models; its mean over set-classes comes with a 95% bootstrap interval over test patients (the library's
:func:`~samadapt.evaluation.slice_sample.bootstrap_estimate` with the patient as the resampled unit).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/cbdp_real.py --work /tmp/samadapt_real_foundations --epochs 4
    python benchmarks/cbdp_real.py --quick            # one set (MSD09 spleen), 3 short epochs: a smoke run

One torch thread: on the 2 cores the recorded run shared with other jobs, its PHPG steps took 30-75 s with
torch's two threads (each waiting on the other while another job held a core) and 8-21 s with one thread a
few minutes later, under a similar load (not a controlled comparison). With cores to spare the
two runs can go side by side (``--train-only full`` and ``--train-only cbdp``, ~8 GB of memory each), then
the plain command evaluates.

Every step resumes in ``--work``: prepared data and embeddings are reused, a run of the same settings is
resumed from its last checkpoint (or reused when finished), the eval report is recomputed (~1 min).
Writes ``benchmarks/results/cbdp_real.json`` (a Markdown table in it) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from real_foundations import (  # noqa: E402
    CURVAS,
    REAL,
    SETS,
    SPLIT,
    box_scores,
    convert_set,
    embedded,
    patient_of,
    pooled_folder,
    prepared_by_patient,
    trained,
)
from samadapt.config import FinetuneConfig, expand_dotted, make_config  # noqa: E402
from samadapt.data.prepare import assign_splits  # noqa: E402
from samadapt.data.prepared import PreparedDataset  # noqa: E402
from samadapt.evaluation.model_comparison import BOX_FILL, evaluate_models, model_labels  # noqa: E402
from samadapt.evaluation.slice_sample import bootstrap_estimate  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cbdp_real.json"
# method -> FinetuneConfig settings (dotted, as --set); the error head on, as when the recorded figures were
# measured (its default is off since: docs/phpg.md)
METHODS = {"PHPG": {"objective": "phpg", "phpg.error_head": True},
           "PHPG + CBDP": {"objective": "phpg", "phpg.error_head": True, "pruning.policy": "class"}}
FULL, PRUNED = METHODS
SELECTIONS = {"last": "last.pth", "best": "model.pth"}  # which step of a run: file in the run folder
ZERO_SHOT = "medsam_lite"
COLUMNS = ("box-fill", ZERO_SHOT, FULL, PRUNED)


# ----------------------------------------------------------------------------- data (real_foundations' steps)


def pooled_by_patient(work: Path, data: Path, keys: list[str], seed: int) -> tuple[PreparedDataset, dict]:
    """real_foundations' pooled prepared folder of ``keys`` (converted, prepared at 256 px, split by patient
    with ``seed``; all reused when there) and, per set, its patients per split."""
    splits: dict[str, str] = {}
    patients: dict[str, dict] = {}
    for key in keys:
        source = data / SETS[key]
        labels_json = source / "labels.json" if key != "curvas" else data / CURVAS / "labels.json"
        info = convert_set(key, source, labels_json, work / "folders" / key)
        by_patient = assign_splits(sorted(info["patients"]), SPLIT, seed)
        splits.update({f"{key}-{p}": s for p, s in by_patient.items()})
        patients[key] = {s: sorted(p for p, t in by_patient.items() if t == s) for s in ("train", "val", "test")}
    folder = pooled_folder([work / "folders" / k for k in keys], work / "folders" / "pooled")
    return prepared_by_patient(folder, work / "prepared" / "pooled", splits), patients


def steps_for(epochs: int, train_slices: int, batch: int) -> int:
    """Steps of ``epochs`` full-data epochs; the pruned run's planner turns the same steps back into
    ``round(steps x batch / slices)`` = ``epochs`` epochs (checked)."""
    steps = epochs * math.ceil(train_slices / batch)
    if max(1, round(steps * batch / train_slices)) != epochs:
        raise ValueError(f"{epochs} epochs of {train_slices} slices in batches of {batch}: the pruned run would "
                         "plan another number of epochs; choose another batch size")
    return steps


# ----------------------------------------------------------------------------- scores


def object_dice(report: Path, labels: dict[str, str]) -> dict[str, dict[tuple, float]]:
    """Per column of ``labels`` (the report's method label -> column): ``{(case_id, slice, class, instance):
    dice}`` from the report's ``per_object.csv`` at jitter 0."""
    out: dict[str, dict[tuple, float]] = {}
    with (report / "per_object.csv").open() as handle:
        for row in csv.DictReader(handle):
            if float(row["jitter_px"]) == 0 and row["method"] in labels:
                key = (row["case_id"], row["slice"], row["class"], row["instance"])
                out.setdefault(labels[row["method"]], {})[key] = float(row["dice"])
    return out


def paired_rows(a: dict[tuple, float], b: dict[tuple, float]) -> list[dict]:
    """One row per test object scored under both models: ``diff`` = b - a (Dice), its patient as ``case_id``
    (the bootstrap's resampled unit) and its ``(set, class)`` as ``class`` (the group averaged over)."""
    if a.keys() != b.keys():
        raise ValueError(f"the two models were scored on different objects ({len(a.keys() ^ b.keys())} differ)")
    return [{"case_id": patient_of(case_id), "slice": 0, "class": (case_id.split("-")[0], name),
             "diff": b[key] - a[key]} for key in sorted(a) for case_id, _, name, _ in [key]]


def paired_difference(a: dict[tuple, float], b: dict[tuple, float], seed: int = 0) -> dict:
    """Mean over set-classes of the per-object Dice difference b - a (x100), with a 95% bootstrap interval
    over test patients; the mean over objects beside it."""
    rows = paired_rows(a, b)
    estimate = bootstrap_estimate(rows, "diff", seed=seed)
    return {"mean_over_set_classes_x100": round(100 * estimate.mean, 2),
            "ci95_over_patients_x100": [round(100 * estimate.low, 2), round(100 * estimate.high, 2)],
            "mean_over_objects_x100": round(100 * float(np.mean([r["diff"] for r in rows])), 2),
            "objects": estimate.rows, "patients": estimate.slices,
            "objects_better": sum(r["diff"] > 0 for r in rows), "objects_worse": sum(r["diff"] < 0 for r in rows)}


def mean_over_set_classes(classes_by_set: dict) -> dict[str, float | None]:
    """Each column's mean over every (set, class) of its Dice x100 (None unless every set-class has it)."""
    rows = [m for classes in classes_by_set.values() for m in classes.values()]
    out = {}
    for column in COLUMNS:
        values = [r[column]["dice_x100"] for r in rows if column in r]
        out[column] = round(float(np.mean(values)), 1) if values and len(values) == len(rows) else None
    return out


# ----------------------------------------------------------------------------- tables


def fmt(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.1f}" if signed else f"{value:.1f}")


def markdown(result: dict) -> str:
    """Per set-class Dice x100 of the last steps, the means of both selections with the paired difference,
    and the runs (iterations, wall time)."""
    last = result["selections"]["last"]
    head = ["set", "class", "n", *COLUMNS, "CBDP - full"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, classes in last["sets"].items():
        for name, row in classes.items():
            diff = row[PRUNED]["dice_x100"] - row[FULL]["dice_x100"]
            lines.append(f"| {key} | {name} | {row['box-fill']['n']} | "
                         + " | ".join(fmt(row[c]["dice_x100"]) for c in COLUMNS) + f" | {diff:+.1f} |")
    lines.append("| mean over set-classes | | | " + " | ".join(fmt(last["mean_over_set_classes"][c]) for c in COLUMNS)
                 + f" | {last['paired_difference']['mean_over_set_classes_x100']:+.1f} |")
    lines += ["", "| step kept | PHPG | PHPG + CBDP | CBDP - full [95% CI over patients] | mean over objects |",
              "|---|---|---|---|---|"]
    for selection, scores in result["selections"].items():
        means, diff = scores["mean_over_set_classes"], scores["paired_difference"]
        low, high = diff["ci95_over_patients_x100"]
        lines.append(f"| {selection} | {fmt(means[FULL])} | {fmt(means[PRUNED])} | "
                     f"{diff['mean_over_set_classes_x100']:+.1f} [{low:+.1f}, {high:+.1f}] | "
                     f"{diff['mean_over_objects_x100']:+.1f} |")
    lines += ["", "| run | epochs | iterations | full-data iterations | fraction | wall s "
                  "| best val Dice x100 (step) |", "|---|---|---|---|---|---|---|"]
    for method, run in result["runs"].items():
        selection = run["model_selection"] or {}
        lines.append(f"| {method} | {result['epochs']} | {run['iterations']} | {run['iterations_full_data']} | "
                     f"{run['fraction_of_full']:.2f} | {run['wall_s']:.0f} | "
                     f"{fmt(None if run['best_val_dice'] is None else 100 * run['best_val_dice'])} "
                     f"({selection.get('step', '-')}) |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/samadapt_real_foundations"),
                        help="real_foundations' work folder (its prepared data and caches are reused)")
    parser.add_argument("--data", type=Path, default=REAL)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--epochs", type=int, default=4, help="full-data epochs of both runs (CBDP prunes epochs "
                                                              "2 .. N-1, so N >= 3)")
    parser.add_argument("--batch", type=int, default=4, help="slices per step")
    parser.add_argument("--box-noise", default="medsam", choices=("medsam", "sam", "mixed"),
                        help="as real_foundations' recorded runs (it does not enter PHPG's prompts)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument("--quick", action="store_true", help="one set (msd09), 3 epochs of 3-slice steps: a smoke run")
    parser.add_argument("--train-only", choices=("full", "cbdp"),
                        help="train (or resume) that one run and stop: the two runs can go in two processes, and a "
                             "last call without it reuses both and evaluates")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.sets, args.epochs, args.batch = ["msd09"], 3, 3  # msd09's 9 train slices: 3 steps of 3 an epoch
        args.work = args.work.with_name(args.work.name + "_quick")
        if args.out == RESULTS:  # a smoke run's figures stay out of benchmarks/results
            args.out = args.work / "cbdp_real_quick.json"
    if args.epochs < 3:
        sys.exit(f"--epochs {args.epochs}: CBDP never prunes the first nor the last epoch; give 3 or more")
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the real data are not there (see ../shared/data/real/README.md)")
    started = time.time()
    work: Path = args.work

    pooled, patients = pooled_by_patient(work, args.data, args.sets, args.seed)
    embed_s = embedded(pooled, ZERO_SHOT, work / "embed_seconds.json")
    train_slices = len(pooled.case_ids("train"))
    steps = steps_for(args.epochs, train_slices, args.batch)
    per_epoch = steps // args.epochs
    print(f"data ready: {train_slices} train slices, {args.epochs} epochs = {steps} steps of {args.batch}", flush=True)

    runs: dict[str, dict] = {}
    commands: dict[str, str] = {}
    for method, extra in METHODS.items():
        if args.train_only and (args.train_only == "cbdp") != (method == PRUNED):
            continue
        settings = {"model": ZERO_SHOT, "engine.steps": steps, "engine.batch_size": args.batch,
                    "engine.eval_every": per_epoch, "engine.checkpoint_every": max(1, per_epoch // 2),
                    "box_noise.style": args.box_noise, **extra}
        config = make_config(FinetuneConfig, expand_dotted({"data": str(pooled.root), **settings}))
        name = ("phpg-cbdp" if "pruning.policy" in extra else "phpg") + f"-e{args.epochs}-b{args.batch}"
        commands[method] = (f"samadapt train {pooled.root} --out {work / 'runs' / name} "
                            + " ".join(f"--set {k}={v}" for k, v in settings.items()))
        print(f"{method}: {commands[method]}", flush=True)
        runs[method] = trained(work / "runs" / name, config)
        runs[method]["run"] = str(work / "runs" / name)
        print(f"{method}: {runs[method]['iterations']} iterations of {runs[method]['iterations_full_data']}, "
              f"{runs[method]['wall_s']} s", flush=True)
    if args.train_only:
        return

    # one eval run: box-fill and zero-shot beside both steps kept of both runs, the same test objects
    models = {ZERO_SHOT: ZERO_SHOT}
    for selection, file in SELECTIONS.items():
        for method in METHODS:
            models[f"{method}/{selection}"] = str(Path(runs[method]["run"]) / file)
    labels = dict(zip(model_labels(list(models.values())), models, strict=True)) | {BOX_FILL: "box-fill"}
    report = work / "reports" / f"cbdp_e{args.epochs}_b{args.batch}"
    t0 = time.time()
    evaluate_models(pooled, list(models.values()), report, split="test", jitters=(0,))
    eval_s = round(time.time() - t0, 1)
    dice = object_dice(report, labels)
    by_set = box_scores(report, labels)

    selections = {}
    for selection in SELECTIONS:
        columns = {"box-fill": "box-fill", ZERO_SHOT: ZERO_SHOT, FULL: f"{FULL}/{selection}",
                   PRUNED: f"{PRUNED}/{selection}"}
        sets = {key: {name: {c: by_set[key][name][source] for c, source in columns.items()}
                      for name in by_set[key]} for key in args.sets if key in by_set}
        selections[selection] = {
            "sets": sets, "mean_over_set_classes": mean_over_set_classes(sets),
            "paired_difference": paired_difference(dice[columns[FULL]], dice[columns[PRUNED]], args.seed)}

    result = {
        "what": "PHPG on medsam_lite's mask decoder for N full-data epochs of the pooled patient-split train "
                "slices of six real 2D sets, with and without CBDP (pruning=class); test Dice x100 per set and "
                "class (mean over objects, tight boxes) of each run's last and validation-selected steps, "
                "box-fill and medsam_lite zero-shot recomputed in the same eval; the paired per-object "
                "difference CBDP - full with a 95% bootstrap interval over test patients",
        "caveats": ["small test split (held-out patients of six small sets): per-class figures are indicative",
                    "CBDP prunes neither the first nor the last epoch (anneal_fraction 0.125 -> 1 of N epochs), "
                    "so at N epochs at most N-2 are pruned",
                    "one seed per run: the interval covers test-patient sampling, not training noise"],
        "epochs": args.epochs, "batch_size": args.batch, "steps_setting": steps, "iterations_per_full_epoch": per_epoch,
        "train_slices": train_slices, "test_slices": len(pooled.case_ids("test")), "split_seed": args.seed,
        "split_fractions": SPLIT, "patients": patients, "box_noise": args.box_noise,
        "zero_shot_and_box_fill": "recomputed in this benchmark's eval run (same test objects)",
        "runs": runs, "iterations": {"full": runs[FULL]["iterations"], "cbdp": runs[PRUNED]["iterations"],
                                     "ratio": round(runs[PRUNED]["iterations"] / runs[FULL]["iterations"], 4)},
        "selections": selections, "headline_selection": "last",
        "timings_s": {"embed_call_s": embed_s, "eval_s": eval_s, "total_s": round(time.time() - started, 1)},
        "commands": commands, "report": str(report), "quick": args.quick, "machine": machine(),
        "command": "python benchmarks/cbdp_real.py " + " ".join(sys.argv[1:]),
    }
    result["markdown"] = markdown(result)
    write_json_atomic(args.out, result)
    print(result["markdown"])
    print(f"\nwrote {args.out} ({round(time.time() - started)} s)")


if __name__ == "__main__":
    main()
