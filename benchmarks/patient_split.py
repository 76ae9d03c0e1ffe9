"""Splitting by patient vs the leaky random split by slice, on real abdominal CT (CURVAS): test Dice side by side.

The CURVAS slices of ``../shared/data/real`` (see its README; read by path, never copied): 2D CT slices of
14 patients with pancreas, kidney and liver masks, several slices per patient. By default the three
annotators' subsets are pooled (108 slices; each annotator labelled different slices, so no slice appears
twice); ``--annotators 1`` keeps annotator 1's 36 slices of 11 patients. Each is converted to samadapt's 2D
folder layout with :func:`real_foundations.convert_set` (case ids ``curvas-<patient>-<slice>``) and
prepared twice at 256 px with the same split fractions and seed:

- **patient split** (honest): ``prepare --split-group '^curvas-(\\d+)-'``: every slice of a patient in one
  split, so the test patients are new to the model;
- **slice split** (leaky): prepare's default random split of cases, i.e. of slices: most test slices have
  a patient whose other slices are in train (prepare warns: ``manifest["warnings"]``).

On each, medsam_lite's mask decoder is fine-tuned with multi-prompt boxes (``samadapt train``) with early
stopping (``patience`` validations without a better validation Dice; ``model.pth`` is the best validation
step), then ``samadapt eval`` (tight boxes, jitter 0) scores on each test split: the box-fill baseline,
medsam_lite zero-shot and both fine-tuned models. Reported:

1. what a user would read: each fine-tuned model on its own split's test slices (different slices: the
   zero-shot and box-fill columns on the same slices say how hard each test set is), with the step chosen,
   its validation Dice, the steps run and whether patience stopped the run;
2. both fine-tuned models on the patient split's test slices (the same slices; the leaky model trained on
   some of them);
3. the same slices grouped by what the leaky model saw of them: slices it trained on, and other slices of
   patients it trained on; every model on each group (paired: the same slices, so difficulty cancels).

Intervals: eval's bootstrap over slices (which treats a patient's slices as independent) and a bootstrap over
patients (the honest one for a few patients). Slices carry no pixel spacing: Dice only. Writes
``benchmarks/results/patient_split.json`` and prints Markdown tables; every step resumes or is reused in
``--work`` (converted and prepared data, embedding caches, runs).

    nice -n 10 python benchmarks/patient_split.py                # pooled annotators, ~15 min on 2 CPU cores
    python benchmarks/patient_split.py --quick                   # annotator 1, the tiny model, a few steps
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from real_foundations import CURVAS, IMAGE_SIZE, REAL, convert_set, embedded, failure, pooled_folder, trained  # noqa: E402
from samadapt.config import FinetuneConfig, PrepareConfig, expand_dotted, make_config  # noqa: E402
from samadapt.data.prepare import prepare_dataset  # noqa: E402
from samadapt.data.prepared import PreparedDataset  # noqa: E402
from samadapt.evaluation.model_comparison import BOX_FILL, evaluate_models, model_labels  # noqa: E402
from samadapt.evaluation.slice_sample import bootstrap_estimate  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.models.embedding_cache import cache_signature, default_cache_dir  # noqa: E402
from samadapt.models.onnx_encoder import use_encoder_runtime  # noqa: E402
from samadapt.models.sam import load_sam  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "patient_split.json"
KEY = "curvas"  # the case-id prefix convert_set writes: curvas-<patient>-<slice>
GROUP = rf"^{KEY}-(\d+)-"  # prepare --split-group: the patient of a case id
SPLIT = (0.6, 0.15, 0.25)  # train, val, test: 14 patients -> 8 / 2 / 4; 108 slices -> 65 / 16 / 27
SPLITS = ("train", "val", "test")
MIN_AREA = 7  # model-frame px: convert_set's 30 px components at 512 px, x 1/4 (as real_foundations)
DESIGNS = {"patient": "patient split (--split-group)", "slice": "slice split (random, leaky)"}
EXPOSURES = ("unseen patient", "seen patient, other slice", "seen slice")


def patient_of(case_id: str) -> str:
    """``curvas-10001-458`` -> ``10001``."""
    found = re.match(GROUP, case_id)
    if found is None:
        raise ValueError(f"case id {case_id!r} does not match {GROUP!r}")
    return found.group(1)


# ----------------------------------------------------------------------------- data


def converted(data: Path, annotators: list[int], work: Path) -> tuple[Path, dict[str, list[str]]]:
    """The CURVAS annotators' slices as one 2D folder (one per annotator, pooled by links); returns it and
    ``{patient: [case ids]}``. Fails when two annotators' slices would share a case id (none do)."""
    labels = data / CURVAS / "labels.json"
    patients: dict[str, list[str]] = {}
    folders = []
    for k in annotators:
        folder = work / "folders" / f"annotator{k}"
        info = convert_set(KEY, data / CURVAS / f"annotator{k}", labels, folder)
        for patient, cases in info["patients"].items():
            clash = set(cases) & set(patients.get(patient, []))
            if clash:
                raise ValueError(f"annotator {k} repeats slice(s) {sorted(clash)} of another annotator")
            patients.setdefault(patient, []).extend(cases)
        folders.append(folder)
    if len(folders) == 1:
        return folders[0], patients
    name = "pooled-a" + "".join(str(k) for k in annotators)
    return pooled_folder(folders, work / "folders" / name), patients


def split_facts(prepared: PreparedDataset) -> dict:
    """Patients and slices per split, patients cut across splits, and test slices whose patient has slices in
    train (the leak), from the prepared manifest."""
    split_of = {cid: prepared.split_of(cid) for cid in prepared.case_ids()}
    where: dict[str, set[str]] = {}
    for cid, split in split_of.items():
        where.setdefault(patient_of(cid), set()).add(split)
    test = [cid for cid, s in split_of.items() if s == "test"]
    warnings = list(prepared.manifest.get("warnings", []))
    leaked = [cid for cid in test if "train" in where[patient_of(cid)]]
    return {
        "slices": {s: sum(v == s for v in split_of.values()) for s in SPLITS},
        "patients": {s: sorted(p for p, w in where.items() if s in w) for s in SPLITS},
        "patients_in_several_splits": sorted(p for p, w in where.items() if len(w) > 1),
        "test_slices_whose_patient_is_in_train": len(leaked),
        "test_slices": len(test),
        "prepare_warnings": warnings,
        "prepare_warned_subjects": sum(int(m.group(1)) for w in warnings
                                       if (m := re.search(r"suggest (\d+) subject", w))),
        "hash": prepared.hash,
    }


def prepare_commands(folder: Path, work: Path, seed: int) -> dict[str, str]:
    """The ``samadapt prepare`` command lines equivalent to :func:`prepared_twice`."""
    common = (f"--image-size {IMAGE_SIZE} --split {','.join(f'{f:g}' for f in SPLIT)} --seed {seed} "
              f"--set min_area={MIN_AREA}")
    return {"patient": f"samadapt prepare {folder} {work / 'prepared' / 'patient'} {common} --split-group '{GROUP}'",
            "slice": f"samadapt prepare {folder} {work / 'prepared' / 'slice'} {common}"}


def prepared_twice(folder: Path, work: Path, seed: int) -> dict[str, PreparedDataset]:
    """``samadapt prepare`` of ``folder`` at 256 px, split by patient and by slice (each resumes)."""
    base = {"image_size": IMAGE_SIZE, "min_area": MIN_AREA, "split": SPLIT, "seed": seed}
    return {
        "patient": prepare_dataset(folder, work / "prepared" / "patient", PrepareConfig(**base, split_group=GROUP)),
        "slice": prepare_dataset(folder, work / "prepared" / "slice", PrepareConfig(**base)),
    }


def cache_folder(prepared: PreparedDataset, model: str) -> Path:
    """Where ``samadapt embed`` keeps ``model``'s embeddings of ``prepared`` (its signature names it)."""
    loaded = use_encoder_runtime(load_sam(model), "auto")
    return default_cache_dir(prepared, cache_signature(loaded, prepared.hash, False))


# ----------------------------------------------------------------------------- scores


def read_rows(report: Path, labels: dict[str, str]) -> list[dict]:
    """``per_object.csv`` rows at jitter 0, ``method`` renamed by ``labels`` (others left out), ``dice`` a float."""
    rows = []
    with (report / "per_object.csv").open() as handle:
        for row in csv.DictReader(handle):
            if float(row["jitter_px"]) == 0 and row["method"] in labels:
                rows.append({**row, "method": labels[row["method"]], "dice": float(row["dice"]),
                             "patient": patient_of(row["case_id"])})
    return rows


def class_means(rows: list[dict]) -> dict:
    """Per class Dice x100 (mean over objects) and n objects; their mean over classes; the slices."""
    per: dict[str, list[float]] = {}
    for row in rows:
        per.setdefault(row["class"], []).append(row["dice"])
    classes = {c: {"dice_x100": round(100 * float(np.mean(v)), 1), "n": len(v)} for c, v in sorted(per.items())}
    mean = round(100 * float(np.mean([np.mean(v) for v in per.values()])), 1) if per else None
    return {"mean_dice_x100": mean, "per_class": classes, "slices": len({r["case_id"] for r in rows}),
            "patients": len({r["patient"] for r in rows})}


def intervals(rows: list[dict]) -> dict:
    """Mean-over-classes Dice x100 with 95% bootstrap intervals over slices (as eval) and over patients."""
    by_slice = bootstrap_estimate(rows, "dice")
    by_patient = bootstrap_estimate([{**r, "case_id": r["patient"], "slice": 0} for r in rows], "dice")
    return {"ci95_over_slices": [round(100 * by_slice.low, 1), round(100 * by_slice.high, 1)],
            "ci95_over_patients": [round(100 * by_patient.low, 1), round(100 * by_patient.high, 1)]}


def scored(rows: list[dict]) -> dict:
    return {**class_means(rows), **intervals(rows)} if rows else {"mean_dice_x100": None}


def exposure(case_id: str, split_of: dict[str, str]) -> str:
    """What a model trained on the train split of ``split_of`` saw of this slice."""
    if split_of[case_id] == "train":
        return "seen slice"
    patient = patient_of(case_id)
    seen = any(s == "train" and patient_of(c) == patient for c, s in split_of.items())
    return "seen patient, other slice" if seen else "unseen patient"


# ----------------------------------------------------------------------------- tables


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    ft = result["finetune"]
    lines = ["| split | patients in several splits | test patients | test slices | test slices of a train patient | "
             "box-fill | "
             f"{ft['settings']['model']} zero-shot | fine-tuned (95% CI over patients) | gain over zero-shot | "
             "step chosen (last, stopped early) | val Dice |", "|" + "---|" * 11]
    for design, label in DESIGNS.items():
        facts, scores, run = result["splits"][design], result["own_test"][design], ft.get(design)
        tuned = scores.get("fine-tuned", {})
        zero = scores.get("zero-shot", {}).get("mean_dice_x100")
        gain = None if tuned.get("mean_dice_x100") is None or zero is None else tuned["mean_dice_x100"] - zero
        ci = tuned.get("ci95_over_patients")
        sel = (run or {}).get("model_selection") or {}
        chosen = "-" if not sel else (f"{sel['step']} ({sel['last_step']}, "
                                      f"{'yes' if sel.get('stopped_early') else 'no'})")
        val = "-" if sel.get("val_dice") is None else f"{100 * sel['val_dice']:.1f}"
        leak = f"{facts['test_slices_whose_patient_is_in_train']} of {facts['test_slices']}"
        lines.append(f"| {label} | {len(facts['patients_in_several_splits'])} | {len(facts['patients']['test'])} | "
                     f"{facts['test_slices']} | {leak} | "
                     f"{fmt(scores.get('box-fill', {}).get('mean_dice_x100'))} | {fmt(zero)} | "
                     f"{fmt(tuned.get('mean_dice_x100'))}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
                     + f" | {'-' if gain is None else f'{gain:+.1f}'} | {chosen} | {val} |")
    same = result["patient_test_all_models"]
    lines += ["", "Same slices (the patient split's test patients), mean Dice x100 over classes:", "",
              "| model | " + " | ".join(["mean", *result["classes"]]) + " |",
              "|" + "---|" * (2 + len(result["classes"]))]
    for name, s in same.items():
        per = s.get("per_class", {})
        lines.append(f"| {name} | {fmt(s.get('mean_dice_x100'))} | "
                     + " | ".join(fmt(per.get(c, {}).get("dice_x100")) for c in result["classes"]) + " |")
    diff = result.get("paired_difference")
    if diff:
        lo, hi = diff["ci95_over_patients"]
        lines += ["", f"Slice-split model minus patient-split model on these slices: {diff['mean_dice_x100']:+.1f} "
                  f"Dice x100 (95% CI over patients [{lo:+.1f}, {hi:+.1f}], over slices "
                  f"[{diff['ci95_over_slices'][0]:+.1f}, {diff['ci95_over_slices'][1]:+.1f}])."]
    paired = result["patient_test_by_leak"]
    groups = [e for e in EXPOSURES if e in paired]
    lines += ["", "The same slices by what the slice-split model saw of them in training (its split's train): "
              "mean Dice x100 (slices)", "",
              "| model | " + " | ".join(f"{e} ({paired[e]['slices']})" for e in groups) + " |",
              "|" + "---|" * (1 + len(groups))]
    for name in same:
        lines.append(f"| {name} | " + " | ".join(fmt(paired[e]["models"].get(name, {}).get("mean_dice_x100"))
                                                 for e in groups) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/samadapt_patient_split"),
                        help="folder for converted and prepared data, caches, runs and reports (reused)")
    parser.add_argument("--data", type=Path, default=REAL)
    parser.add_argument("--annotators", default="1,2,3", help="CURVAS annotators pooled (comma list of 1, 2, 3)")
    parser.add_argument("--model", default="medsam_lite")
    parser.add_argument("--steps", type=int, default=200, help="planned steps of each fine-tuning run")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per step")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between validations")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop after this many validations in a row without a better validation Dice (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both splits (prepare --seed)")
    parser.add_argument("--quick", action="store_true", help="annotator 1, the tiny model, a few steps: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.annotators, args.model, args.steps, args.eval_every, args.patience = "1", "tiny", 8, 2, 1
        args.work = args.work.with_name(args.work.name + "_quick")
        if args.out == RESULTS:  # a smoke run's figures stay out of benchmarks/results
            args.out = args.work / "patient_split_quick.json"
    if not (args.data / CURVAS).is_dir():
        print(f"{args.data / CURVAS}: the CURVAS slices are not there (see ../shared/data/real/README.md); skipped")
        return
    annotators = [int(k) for k in args.annotators.split(",")]
    started = time.time()
    work: Path = args.work
    errors: list[dict] = []
    timings: dict = {}

    # 1. the 2D folder, prepared twice
    t0 = time.time()
    folder, patients = converted(args.data, annotators, work)
    prepared = prepared_twice(folder, work, args.seed)
    splits = {design: split_facts(p) for design, p in prepared.items()}
    split_of = {design: {c["case_id"]: c["split"] for c in p.manifest["cases"]} for design, p in prepared.items()}
    timings["data_s"] = round(time.time() - t0, 1)
    print(f"prepared: {sum(map(len, patients.values()))} slices of {len(patients)} patients; "
          f"{ {d: s['slices'] for d, s in splits.items()} }", flush=True)

    # 2. embeddings: one cache per prepared set (its signature holds the prepared hash, which holds the split)
    log = work / "embed_seconds.json"
    timings["embed_s"] = {d: embedded(p, args.model, log) for d, p in prepared.items()}
    timings["embed_s_when_computed"] = json.loads(log.read_text())
    caches = {d: str(cache_folder(p, args.model)) for d, p in prepared.items()}

    # 3. fine-tuning with early stopping, one run per split
    runs: dict[str, dict] = {}
    for design, p in prepared.items():
        settings = {"model": args.model, "engine.steps": args.steps, "engine.batch_size": args.batch_size,
                    "engine.eval_every": args.eval_every, "engine.checkpoint_every": args.eval_every,
                    "engine.patience": args.patience}
        config = make_config(FinetuneConfig, expand_dotted({"data": str(p.root), **settings}))
        run_dir = work / "runs" / design
        command = f"samadapt train {p.root} --out {run_dir} " + " ".join(f"--set {k}={v}" for k, v in settings.items())
        try:
            runs[design] = {**trained(run_dir, config), "command": command}
            sel = runs[design]["model_selection"]
            print(f"trained ({design}): step {sel['step']} of {sel['last_step']}, val Dice {sel['val_dice']:.4f}, "
                  f"stopped early {sel.get('stopped_early')}, {runs[design]['wall_s']} s", flush=True)
        except Exception as err:  # a library failure: recorded, the rest goes on
            failure(errors, f"fine-tuning ({design})", command, err)

    # 4. eval on each test split: box-fill, zero-shot, both fine-tuned models
    tuned = {d: runs[d]["model"] for d in DESIGNS if d in runs}
    names = ["medsam_lite zero-shot" if args.model == "medsam_lite" else f"{args.model} zero-shot",
             *(f"fine-tuned ({d})" for d in tuned)]
    models = [args.model, *tuned.values()]
    labels = dict(zip(model_labels(models), names, strict=True)) | {BOX_FILL: "box-fill"}
    rows: dict[str, list[dict]] = {}
    reports: dict[str, dict] = {}
    for design, p in prepared.items():
        t0 = time.time()
        report = work / "reports" / f"{design}_test"
        evaluate_models(p, models, report, split="test", jitters=(0,))
        timings[f"eval_{design}_test_s"] = round(time.time() - t0, 1)
        rows[design] = read_rows(report, labels)
        evaluation = json.loads((report / "evaluation.json").read_text())
        reports[design] = {"folder": str(report), "command": f"samadapt eval {p.root} " + " ".join(
            f"--model {m}" for m in models) + f" --split test --jitter 0 --out {report}",
            "estimates_over_slices": evaluation.get("estimates")}

    def on(design: str, method: str) -> list[dict]:
        return [r for r in rows[design] if r["method"] == method]

    zero = names[0]
    own_test = {d: {"box-fill": scored(on(d, "box-fill")), "zero-shot": scored(on(d, zero)),
                    "fine-tuned": scored(on(d, f"fine-tuned ({d})"))} for d in DESIGNS}
    same_slices = {name: scored(on("patient", name)) for name in ["box-fill", *names]}
    patient_test_by_leak: dict[str, dict] = {}  # the patient split's test slices, by the leaky model's exposure
    for group in EXPOSURES:
        cases = {cid for cid, s in split_of["patient"].items()
                 if s == "test" and exposure(cid, split_of["slice"]) == group}
        if cases:
            patient_test_by_leak[group] = {"slices": len(cases), "models": {
                name: scored([r for r in on("patient", name) if r["case_id"] in cases]) for name in same_slices}}

    # the leaky model minus the honest one on the same objects, with intervals over slices and over patients
    honest = {(r["case_id"], r["slice"], r["class"], r["instance"]): r["dice"] for r in on("patient", names[1])}
    differences = [{**r, "dice": r["dice"] - honest[key]} for r in on("patient", names[-1])
                   if (key := (r["case_id"], r["slice"], r["class"], r["instance"])) in honest]
    paired_difference = ({"what": f"{names[-1]} minus {names[1]} on the patient split's test objects, Dice x100",
                          **class_means(differences), **intervals(differences)}
                         if len(names) == 3 and differences else None)
    classes = sorted({r["class"] for rs in rows.values() for r in rs})
    result = {
        "what": "CURVAS CT slices prepared twice (split by patient; random split by slice, leaky), medsam_lite's "
                "decoder fine-tuned on each with early stopping; test Dice x100 (mean over objects per class, then "
                "over classes), tight boxes",
        "caveats": ["the two splits' test sets are different slices (own_test): compare each fine-tuned model with "
                    "the zero-shot and box-fill columns on its own slices, and see patient_test_all_models for "
                    "both models on the same slices",
                    "few test patients: the interval over patients is wide; one seed is one draw of the split",
                    "slices carry no pixel spacing: Dice only"],
        "quick": args.quick, "data": str(args.data / CURVAS), "annotators": annotators,
        "patients": len(patients), "slices": sum(map(len, patients.values())),
        "image_size": IMAGE_SIZE, "min_area": MIN_AREA, "split_fractions": SPLIT, "split_seed": args.seed,
        "split_group": GROUP, "prepare_commands": prepare_commands(folder, work, args.seed), "splits": splits,
        "embedding_caches": caches,
        "embedding_cache_shared": len(set(caches.values())) == 1, "classes": classes,
        "finetune": {**runs, "settings": {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                                          "eval_every": args.eval_every, "patience": args.patience}},
        "own_test": own_test, "patient_test_all_models": same_slices, "patient_test_by_leak": patient_test_by_leak,
        "paired_difference": paired_difference,
        "reports": reports, "timings_s": timings, "errors": errors, "machine": machine(),
        "total_s": round(time.time() - started, 1),
        "command": "python benchmarks/patient_split.py " + " ".join(sys.argv[1:]),
    }
    calls = work / "calls_total_s.json"  # every call's total: a rerun reuses the work, the first one did it
    totals = [*(json.loads(calls.read_text()) if calls.is_file() else []), result["total_s"]]
    write_json_atomic(calls, totals)
    result["total_s_of_every_call"] = totals
    result["markdown"] = markdown(result)
    write_json_atomic(args.out, result)
    print(result["markdown"])
    for design, facts in splits.items():
        for warning in facts["prepare_warnings"]:
            print(f"\nprepare ({design}) warns: {warning}")
    for err in errors:
        print(f"\nFAILED {err['method']}: {err['error']}\n  {err['command']}")
    print(f"\nwrote {args.out} ({round(time.time() - started)} s)")


if __name__ == "__main__":
    main()
