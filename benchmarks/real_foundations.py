"""Real foundations on manually labelled 2D sets: box-fill vs ``tiny`` vs ``medsam_lite`` zero-shot, then
medsam_lite multi-prompt fine-tuning, PHPG, PHPG + CBDP and ProMISe automatic, per set and class.

Six manually labelled 2D sets of ``../shared/data/real`` (see its README; read by path, never copied):
CURVAS abdominal CT (annotator 1: pancreas, kidney, liver), MSD08 hepatic vessel / liver tumour CT,
3D-IRCADb liver CT, MSD09 spleen CT, MSD02 left atrium MRI and PanSeg pancreas T2w MRI. The NIH pancreas
set is left out: its 24 slices all come from one patient (PANCREAS_0001), so it cannot be split by patient.

Each set is converted into samadapt's 2D folder layout under ``--work`` (the images linked, one binary
mask per connected component per class, components under 30 px at 512 px dropped, binarised as the set's
``labels.json`` says), prepared at 256 px and split BY PATIENT (file names ``<case>_<slice>``, the case is
the patient; ~60/15/25% of the patients train/val/test, seeded with ``--seed``; every slice of a patient in
one split). The CURVAS set uses annotator 1 only; inter-annotator Dice is reported on slices that two or
more annotators labelled, if any (this subset has none, and the JSON says so).

Measured, on each set's test split, per class (Dice x100, mean over objects; n = objects):

- ``box-fill``: the tight box itself as the mask;
- ``tiny``, ``medsam_lite``: the foundations zero-shot, tight box prompts (``samadapt eval``, jitter 0);
- ``multi-prompt FT``, ``PHPG``, ``PHPG + CBDP``: medsam_lite's mask decoder fine-tuned on the pooled train
  splits of all six sets (one run per method, the same steps; CBDP's ``iterations`` vs the full run's);
- ``ProMISe auto``: ``samadapt adapt`` (mode ``apm+ips``, SAM frozen) on each set's train split, then
  ``samadapt eval --prompts auto`` without prompts: Dice on the test slices holding the class (n = such
  (slice, class) pairs) and the false-positive rate on those without it.

Slices carry no pixel spacing (1 mm is assumed for NSD, which is not reported here); the 2D sets are
small (18-36 slices, 10-22 patients each), so per-class figures on a handful of test patients are
indicative, not estimates. Writes ``benchmarks/results/real_foundations.json`` and prints a Markdown table.
Every step resumes or is reused in ``--work`` (prepared data, embeddings, runs, reports).

    nice -n 10 python benchmarks/real_foundations.py --work /tmp/samadapt_real_foundations
    python benchmarks/real_foundations.py --quick            # one set (MSD09 spleen), a few steps: a smoke run

About 25 min on 2 idle CPU cores (medsam_lite's encoder ~1.5 s a slice, twice over 178 slices; a PHPG step
~8 s); the recorded run took ~75 min of process time on cores shared with other work (``timings_s``,
``wall_s`` of each run). The default 32 steps of 4 slices are ~1.15 epochs of the 111 pooled training
slices: CBDP runs whole epochs (here 1, 28 iterations) and never prunes the first (nor the last), so at this
length it cannot save iterations. ``benchmarks/cbdp_real.py`` is the pruning benchmark: the same sets and
split, PHPG against PHPG + CBDP over whole epochs.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from promise_runs import adapted, issue_table, run_folder_for  # noqa: E402
from samadapt.config import FinetuneConfig, PrepareConfig, PromiseConfig, expand_dotted, make_config  # noqa: E402
from samadapt.data.prepare import assign_splits, prepare_dataset  # noqa: E402
from samadapt.data.prepared import PreparedDataset, dataset_hash, write_manifest  # noqa: E402
from samadapt.evaluation.model_comparison import BOX_FILL, evaluate_models, model_labels  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.models.embedding_cache import compute_embeddings  # noqa: E402
from samadapt.models.onnx_encoder import use_encoder_runtime  # noqa: E402
from samadapt.models.sam import load_sam  # noqa: E402
from samadapt.promise.auto_protocol import evaluate_automatic  # noqa: E402
from samadapt.training.finetune import finetune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
RESULTS = Path(__file__).resolve().parent / "results" / "real_foundations.json"
CURVAS = "ct_abdomen_multiorgan_curvas_png"
SETS = {  # key (no '_' or '-': it prefixes case ids) -> folder under REAL holding images/ and masks/
    "curvas": f"{CURVAS}/annotator1",
    "msd08": "ct_liver_vessel_tumour_msd08_png",
    "ircadb": "ct_liver_ircadb_png",
    "msd09": "ct_spleen_msd09_jpg",
    "msd02": "mr_left_atrium_msd02_png",
    "panseg": "mr_pancreas_t2w_panseg_png",
}
SKIPPED_SETS = {"ct_pancreas_nih_crop_jpg": "all 24 slices are of one patient (PANCREAS_0001): no split by patient "
                                            "is possible"}
IMAGE_SIZE = 256
MIN_COMPONENT_PX = 30  # at the source's 512 px; 30 / (512/256)^2 ~ 8 model-frame px
SPLIT = (0.6, 0.15, 0.25)
FOUNDATIONS = ("tiny", "medsam_lite")
FT_METHODS = {  # method -> FinetuneConfig settings (dotted, as --set) beyond the shared ones
    "multi-prompt FT": {},
    # the error head as when the recorded figures were measured (its default is off since: docs/phpg.md)
    "PHPG": {"objective": "phpg", "phpg.error_head": True},
    "PHPG + CBDP": {"objective": "phpg", "phpg.error_head": True, "pruning.policy": "class"},
}
PROMISE = "ProMISe auto"
COLUMNS = ("box-fill", *FOUNDATIONS, *FT_METHODS, PROMISE)


# ----------------------------------------------------------------------------- the real sets as 2D folders


def binarisers(labels_json: Path) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``{class name: rgb HxWx3 uint8 -> bool mask}`` as the set's ``labels.json`` says (exact colours or
    the thresholds written there)."""
    spec = json.loads(labels_json.read_text())
    rule = spec["threshold"]
    out = {}
    for index, entry in spec["classes"].items():
        if index == "0":
            continue
        if rule == "exact colours":
            colour = np.array(entry["rgb"], np.uint8)
            out[entry["name"]] = lambda rgb, colour=colour: np.all(rgb == colour, axis=-1)
        elif rule == "channel 0 >= 128":
            out[entry["name"]] = lambda rgb: rgb[..., 0] >= 128
        elif rule == "channel 0 >= 128 and channel 1 < 64":
            out[entry["name"]] = lambda rgb: (rgb[..., 0] >= 128) & (rgb[..., 1] < 64)
        else:
            raise ValueError(f"{labels_json}: unknown threshold rule {rule!r}")
    if len(out) > 1 and rule != "exact colours":
        raise ValueError(f"{labels_json}: a threshold rule separates one class only")
    return out


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def components(mask: np.ndarray, min_px: int = MIN_COMPONENT_PX) -> tuple[list[np.ndarray], int]:
    """The connected components (8-connected) of ``mask`` of at least ``min_px`` pixels, largest first, and
    how many smaller ones were dropped."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    kept = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_px]
    return [labelled == k for k in kept], int(n - len(kept))


def patient_and_slice(stem: str) -> tuple[str, str]:
    """``10030_spleen_28`` -> ``("10030", "28")``; ``11711_39`` -> ``("11711", "39")``."""
    parts = stem.split("_")
    return parts[0], parts[-1]


def convert_set(key: str, source: Path, labels_json: Path, out: Path) -> dict:
    """``source`` (``images/<case>_<slice>.*`` + colour ``masks/``) as samadapt's 2D folder ``out``: images
    linked as ``<key>-<case>-<slice>``, one mask per component per class. Reused when ``out/converted.json``
    exists; returns its contents (cases per patient, objects and dropped components per class)."""
    done = out / "converted.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    classes = binarisers(labels_json)
    patients: dict[str, list[str]] = {}
    objects = dict.fromkeys(classes, 0)
    dropped = dict.fromkeys(classes, 0)
    for image in sorted(p for p in (source / "images").iterdir() if p.suffix.lower() in (".png", ".jpg")):
        patient, slice_ = patient_and_slice(image.stem)
        stem = f"{key}-{patient}-{slice_}"
        (out / "images" / f"{stem}{image.suffix.lower()}").symlink_to(image.resolve())
        patients.setdefault(patient, []).append(stem)
        rgb = read_rgb(source / "masks" / image.name)
        for name, binarise in classes.items():
            kept, small = components(binarise(rgb))
            dropped[name] += small
            for k, component in enumerate(kept):
                Image.fromarray(component.astype(np.uint8) * 255).save(out / "masks" / f"{stem}_{name}_{k:03d}.png")
            objects[name] += len(kept)
    info = {"source": str(source), "patients": patients, "objects_per_class": objects,
            "components_dropped_per_class": dropped, "min_component_px": MIN_COMPONENT_PX}
    write_json_atomic(done, info)
    return info


def pooled_folder(folders: list[Path], out: Path) -> Path:
    """One 2D folder linking every image and mask of ``folders`` (case ids are prefixed with the set key)."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for folder in folders:
            for path in (folder / sub).iterdir():
                link = out / sub / path.name
                if not link.is_symlink():
                    link.symlink_to(path.resolve())
    return out


def inter_annotator(root: Path) -> dict:
    """Per-class Dice between CURVAS annotators on the slice files that two or more of them labelled."""
    annotators = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("annotator"))
    files = {a: {p.name for p in (root / a / "masks").iterdir()} for a in annotators}
    shared = sorted(n for n in set().union(*files.values()) if sum(n in f for f in files.values()) >= 2)
    patients = {a: sorted({patient_and_slice(Path(n).stem)[0] for n in f}) for a, f in files.items()}
    result = {"annotators": annotators, "slices_per_annotator": {a: len(f) for a, f in files.items()},
              "patients_per_annotator": patients, "shared_slices": shared}
    if not shared:
        result["dice_per_class"] = None
        result["why_not"] = (
            "no slice file name appears for two or more annotators: each annotator's 36 slices are different "
            f"slices ({sum(len(f) for f in files.values())} distinct slice files), even where the patients "
            "overlap, so no pixel-wise comparison of the same slice exists in this subset")
        return result
    classes = binarisers(root / "labels.json")
    scores: dict[str, list[float]] = {c: [] for c in classes}
    for name in shared:
        holders = [a for a in annotators if name in files[a]]
        masks = {a: read_rgb(root / a / "masks" / name) for a in holders}
        for i, a in enumerate(holders):
            for b in holders[i + 1:]:
                for c, binarise in classes.items():
                    x, y = binarise(masks[a]), binarise(masks[b])
                    if x.any() or y.any():
                        scores[c].append(2 * float((x & y).sum()) / float(x.sum() + y.sum()))
    result["dice_per_class"] = {c: {"dice_x100": round(100 * float(np.mean(v)), 1) if v else None, "pairs": len(v)}
                                for c, v in scores.items()}
    return result


# ----------------------------------------------------------------------------- prepared data, split by patient


def patient_of(case_id: str) -> str:
    """``msd09-10030-28`` -> ``msd09-10030`` (the set key keeps equal case numbers of two sets apart)."""
    return case_id.rsplit("-", 1)[0]


def split_by_patient(prepared: PreparedDataset, splits: dict[str, str]) -> PreparedDataset:
    """Rewrite ``prepared``'s manifest in place so that each case takes its patient's split (``splits``:
    patient -> split); the hash is recomputed (the same for the same split, so caches stay valid)."""
    cases = [{**case, "split": splits[patient_of(case["case_id"])]} for case in prepared.manifest["cases"]]
    if cases != prepared.manifest["cases"]:
        manifest = {**prepared.manifest, "cases": cases,
                    "hash": dataset_hash(prepared.root, prepared.manifest["params"], cases)}
        write_manifest(prepared.root, manifest)
    return PreparedDataset(prepared.root)


def prepared_by_patient(folder: Path, out: Path, splits: dict[str, str]) -> PreparedDataset:
    """``samadapt prepare`` of ``folder`` at 256 px (resumes), then the patient split."""
    # min_area 7 model-frame px ~ the 30 px components at 512 px (x 1/4), so prepare drops little more
    config = PrepareConfig(image_size=IMAGE_SIZE, min_area=7, split=SPLIT)
    return split_by_patient(prepare_dataset(folder, out, config), splits)


def embedded(prepared: PreparedDataset, model: str, log: Path, with_features: bool = False) -> float:
    """Compute (or finish) the embedding cache of ``model`` on ``prepared``, with onnxruntime's encoder where
    the library uses it (``samadapt embed``'s ``--encoder-runtime auto``); the library's own calls later find
    it complete. Returns the seconds spent; ``log`` (JSON) keeps the longest call per cache, i.e. the one that
    computed it, so a rerun that reuses the cache still reports what computing it cost."""
    started = time.time()
    loaded = use_encoder_runtime(load_sam(model), "auto")
    compute_embeddings(prepared, loaded, batch_size=4, with_features=with_features)
    seconds = round(time.time() - started, 1)
    kept = json.loads(log.read_text()) if log.is_file() else {}
    key = f"{prepared.root.name}/{model}" + ("+features" if with_features else "")
    kept[key] = max(seconds, kept.get(key, 0.0))
    write_json_atomic(log, kept)
    return seconds


# ----------------------------------------------------------------------------- runs


def trained(run_dir: Path, config: FinetuneConfig) -> dict:
    """Fine-tune (or finish, or reuse) the run of ``config`` in ``run_dir``; a folder of other settings is
    replaced (as :func:`promise_runs.adapted` does for ProMISe)."""
    config = run_folder_for(run_dir, config)
    started = time.time()
    result = finetune(run_dir, config)
    pruning = json.loads((run_dir / "pruning.json").read_text()) if (run_dir / "pruning.json").is_file() else None
    # a pruned run's length is whole full-data epochs (steps x batch / slices, rounded): its planner says how
    # many iterations the full data would have taken in those epochs; that, not `steps`, is the reference
    full = pruning["iterations_full_data"] if pruning else result.steps
    return {"model": str(result.model), "iterations": result.steps, "steps_setting": config.engine.steps,
            "iterations_full_data": full, "fraction_of_full": round(result.steps / full, 4),
            "wall_s": round(result.wall_s, 1), "best_val_dice": result.best_val_dice, "val_curve": result.curve,
            "pruning": pruning, "this_call_s": round(time.time() - started, 1),
            # which step model.pth holds (the library keeps the best validation step by default)
            "model_selection": json.loads(result.model.with_suffix(".json").read_text()).get("selection")}


def failure(errors: list[dict], method: str, command: str, err: BaseException) -> None:
    """Record a library failure: the method, the equivalent CLI command and the traceback's tail."""
    tail = "".join(traceback.format_exception(type(err), err, err.__traceback__))[-2500:]
    errors.append({"method": method, "command": command, "error": f"{type(err).__name__}: {err}", "traceback": tail})
    print(f"FAILED {method}: {type(err).__name__}: {err}", file=sys.stderr)


def box_scores(report: Path, labels: dict[str, str]) -> dict[str, dict[str, dict[str, dict]]]:
    """``{set: {class: {method: {dice_x100, n}}}}`` from an eval report's ``per_object.csv`` (jitter 0);
    ``labels``: the report's method label -> this benchmark's column."""
    per: dict[tuple[str, str, str], list[float]] = {}
    with (report / "per_object.csv").open() as handle:
        for row in csv.DictReader(handle):
            if float(row["jitter_px"]) != 0 or row["method"] not in labels:
                continue
            key = (row["case_id"].split("-")[0], row["class"], labels[row["method"]])
            per.setdefault(key, []).append(float(row["dice"]))
    out: dict = {}
    for (key, name, method), values in sorted(per.items()):
        out.setdefault(key, {}).setdefault(name, {})[method] = {"dice_x100": round(100 * float(np.mean(values)), 1),
                                                                "n": len(values)}
    return out


def promise_scores(report: Path) -> dict:
    """ProMISe's automatic rows of an ``eval --prompts auto`` report: per class Dice x100 on the slices
    holding the class (n = such slice-class pairs), the false-positive rate on those without it."""
    evaluation = json.loads((report / "evaluation.json").read_text())
    table = issue_table(evaluation)
    adapter = next(name for name in table["automatic"] if name.startswith("ProMISe"))  # the naive rows: frozen SAM
    pairs: dict[str, int] = {}
    fp: dict[str, list[bool]] = {}
    with (report / "automatic_pairs.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["method"] != adapter:
                continue
            if row["present"] == "True":
                pairs[row["class"]] = pairs.get(row["class"], 0) + 1
            else:
                fp.setdefault(row["class"], []).append(row["false_positive"] == "True")
    row = table["automatic"][adapter]
    per_class = {c: {"dice_x100": None if v is None else round(100 * v, 1), "n": pairs.get(c, 0),
                     "false_positive_rate": round(float(np.mean(fp[c])), 3) if fp.get(c) else None,
                     "absent_slices": len(fp.get(c, []))}
                 for c, v in row["per_class_present"].items()}
    return {"label": adapter, "per_class": per_class, "table": table}


# ----------------------------------------------------------------------------- the table


def markdown(sets: dict) -> str:
    """One row per set and class: test objects and Dice x100 per method ('-': not run or failed)."""
    def cell(entry: dict | None) -> str:
        return "-" if not entry or entry.get("dice_x100") is None else f"{entry['dice_x100']:.1f}"

    head = ["set", "class", "n"] + list(COLUMNS[:-1]) + [f"{PROMISE} (n)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, data in sets.items():
        for name, methods in data["classes"].items():
            n = (methods.get("box-fill") or {}).get("n", 0)
            promise = methods.get(PROMISE)
            auto = f"{cell(promise)} ({promise['n']})" if promise and promise.get("dice_x100") is not None else "-"
            lines.append(f"| {key} | {name} | {n} | " + " | ".join(cell(methods.get(m)) for m in COLUMNS[:-1])
                         + f" | {auto} |")
    means = mean_row(sets)
    lines.append("| mean over set-classes | | | " + " | ".join(
        "-" if means[m] is None else f"{means[m]:.1f}" for m in COLUMNS) + " |")
    return "\n".join(lines)


def runs_markdown(runs: dict, promise_runs: dict) -> str:
    """Fine-tuning runs (iterations against the full data's, wall time, best validation Dice) and ProMISe's."""
    lines = ["| run | iterations | full-data iterations | wall s | best val Dice x100 |", "|---|---|---|---|---|"]
    for method, run in runs.items():
        val = "-" if run["best_val_dice"] is None else f"{100 * run['best_val_dice']:.1f}"
        lines.append(f"| {method} (pooled) | {run['iterations']} | {run['iterations_full_data']} | {run['wall_s']:.0f}"
                     f" | {val} |")
    for key, run in promise_runs.items():
        val = "-" if run["best_val_score"] is None else f"{100 * run['best_val_score']:.1f}"
        lines.append(f"| {PROMISE} ({key}) | {run['steps']} | - | {run['wall_s']:.0f} | {val} |")
    return "\n".join(lines)


def mean_row(sets: dict) -> dict[str, float | None]:
    """Mean over every (set, class) of each method's Dice x100 (the (set, class) pairs every method has)."""
    rows = [m for data in sets.values() for m in data["classes"].values()]
    out = {}
    for method in COLUMNS:
        values = [r[method]["dice_x100"] for r in rows if r.get(method) and r[method].get("dice_x100") is not None]
        out[method] = round(float(np.mean(values)), 1) if values and len(values) == len(rows) else None
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/samadapt_real_foundations"),
                        help="folder for converted data, prepared data, caches, runs and reports (reused)")
    parser.add_argument("--data", type=Path, default=REAL)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--ft-steps", type=int, default=32,
                        help="steps of each pooled fine-tuning run (32 x 4 slices: ~1.15 epochs of 111 slices)")
    parser.add_argument("--ft-batch", type=int, default=4, help="slices per fine-tuning step")
    parser.add_argument("--box-noise", default="medsam", choices=("medsam", "sam", "mixed"),
                        help="fine-tuning box noise; the recorded runs used medsam, the library's default before "
                             "mixed (benchmarks/box_noise_real.py compares them)")
    parser.add_argument("--promise-steps", type=int, default=16, help="steps of each per-set ProMISe run")
    parser.add_argument("--promise-batch", type=int, default=4, help="slices per ProMISe step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument("--quick", action="store_true", help="one set (msd09), a few steps: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.sets, args.ft_steps, args.promise_steps = ["msd09"], 6, 4
        args.work = args.work.with_name(args.work.name + "_quick")
        if args.out == RESULTS:  # a smoke run's figures stay out of benchmarks/results
            args.out = args.work / "real_foundations_quick.json"
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the real data are not there (see ../shared/data/real/README.md)")
    started = time.time()
    work: Path = args.work
    errors: list[dict] = []
    timings: dict[str, float] = {}

    # 1. data: 2D folders, patient splits, prepared sets (pooled and per set)
    t0 = time.time()
    sets: dict[str, dict] = {}
    all_splits: dict[str, str] = {}
    for key in args.sets:
        source = args.data / SETS[key]
        labels_json = source / "labels.json" if key != "curvas" else args.data / CURVAS / "labels.json"
        info = convert_set(key, source, labels_json, work / "folders" / key)
        patients = sorted(info["patients"])
        by_patient = assign_splits(patients, SPLIT, args.seed)
        all_splits.update({f"{key}-{p}": s for p, s in by_patient.items()})
        sets[key] = {"folder": SETS[key], "labels": json.loads(labels_json.read_text())["classes"],
                     "patients": {s: [p for p in patients if by_patient[p] == s] for s in ("train", "val", "test")},
                     "slices": {s: sum(len(info["patients"][p]) for p in patients if by_patient[p] == s)
                                for s in ("train", "val", "test")},
                     "objects_per_class_all_splits": info["objects_per_class"],
                     "components_dropped_per_class": info["components_dropped_per_class"], "classes": {}}
    pooled = prepared_by_patient(pooled_folder([work / "folders" / k for k in args.sets], work / "folders" / "pooled"),
                                 work / "prepared" / "pooled", all_splits)
    per_set = {key: prepared_by_patient(work / "folders" / key, work / "prepared" / key,
                                        {p: s for p, s in all_splits.items() if p.startswith(key + "-")})
               for key in args.sets}
    inter = inter_annotator(args.data / CURVAS) if "curvas" in args.sets else None
    timings["data_s"] = round(time.time() - t0, 1)
    print(f"data ready: {len(pooled.case_ids())} slices, {timings['data_s']} s", flush=True)

    # 2. embeddings: pooled (both foundations), per set with ProMISe's features
    log = work / "embed_seconds.json"
    timings["embed_pooled_s"] = {m: embedded(pooled, m, log) for m in FOUNDATIONS}
    timings["embed_features_s"] = {k: embedded(p, "medsam_lite", log, with_features=True) for k, p in per_set.items()}
    timings["embed_s_when_computed"] = json.loads(log.read_text())
    print(f"embedded: {timings}", flush=True)

    # 3. fine-tuning on the pooled train splits, one run per method
    runs: dict[str, dict] = {}
    for method, extra in FT_METHODS.items():
        settings = {"model": "medsam_lite", "engine.steps": args.ft_steps, "engine.batch_size": args.ft_batch,
                    "engine.eval_every": max(1, args.ft_steps // 4),
                    "engine.checkpoint_every": max(1, args.ft_steps // 4), "box_noise.style": args.box_noise, **extra}
        config = make_config(FinetuneConfig, expand_dotted({"data": str(pooled.root), **settings}))
        name = re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-") + f"-s{args.ft_steps}"  # other steps: kept
        command = (f"samadapt train {pooled.root} --out {work / 'runs' / name} "
                   + " ".join(f"--set {k}={v}" for k, v in settings.items()))
        try:
            runs[method] = trained(work / "runs" / name, config)
            print(f"{method}: {runs[method]['iterations']} iterations, {runs[method]['wall_s']} s", flush=True)
        except Exception as err:  # a library failure: recorded, the other methods go on
            failure(errors, method, command, err)

    # 4. box prompts on the pooled test split: foundations zero-shot and the fine-tuned decoders
    models = list(FOUNDATIONS) + [runs[m]["model"] for m in FT_METHODS if m in runs]
    names = list(FOUNDATIONS) + [m for m in FT_METHODS if m in runs]
    labels = dict(zip(model_labels(models), names, strict=True)) | {BOX_FILL: "box-fill"}
    t0 = time.time()
    report = work / "reports" / "box"
    evaluate_models(pooled, models, report, split="test", jitters=(0,))
    timings["eval_box_s"] = round(time.time() - t0, 1)
    for key, classes in box_scores(report, labels).items():
        sets[key]["classes"] = classes

    # 5. ProMISe per set: adapt (SAM frozen) then automatic evaluation on the test split
    promise_runs: dict[str, dict] = {}
    for key, prepared in per_set.items():
        run_dir = work / "promise" / f"{key}-s{args.promise_steps}"
        engine = replace(PromiseConfig().engine, steps=args.promise_steps, batch_size=args.promise_batch,
                         eval_every=args.promise_steps, checkpoint_every=args.promise_steps,
                         warmup_steps=min(10, args.promise_steps // 4))
        config = PromiseConfig(data=str(prepared.root), model="medsam_lite", mode="apm+ips", engine=engine)
        command = (f"samadapt adapt {prepared.root} --out {run_dir} --set model=medsam_lite "
                   f"--set engine.steps={args.promise_steps} --set engine.batch_size={args.promise_batch}; "
                   f"samadapt eval {prepared.root} --prompts auto "
                   f"--adapter {run_dir} --out {work / 'reports' / ('auto_' + key)}")
        try:
            _, summary = adapted(run_dir, config)
            report = work / "reports" / f"auto_{key}"
            t0 = time.time()
            evaluate_automatic(prepared, [str(run_dir)], report, nsd_tolerance_mm=None)
            scores = promise_scores(report)
            promise_runs[key] = {**summary, "eval_s": round(time.time() - t0, 1), "label": scores["label"],
                                 "automatic_mean_over_classes": scores["table"]["automatic"],
                                 "promptable_check": scores["table"]["promptable"]}
            for name, entry in scores["per_class"].items():
                sets[key]["classes"].setdefault(name, {})[PROMISE] = entry
            print(f"ProMISe {key}: {summary['steps']} steps, {summary['wall_s']} s", flush=True)
        except Exception as err:
            failure(errors, f"{PROMISE} ({key})", command, err)

    table = markdown(sets) + "\n\n" + runs_markdown(runs, promise_runs)
    write_json_atomic(args.out, {
        "what": "per set (test split, split by patient) and class: Dice x100 (mean over objects) and n objects "
                "with tight box prompts for the box-fill baseline, tiny and medsam_lite zero-shot and medsam_lite "
                "fine-tuned on the pooled train splits (multi-prompt, PHPG, PHPG + CBDP); ProMISe automatic "
                "(apm+ips per set, no prompts): Dice on the test slices holding the class (n = slice-class pairs)",
        "caveats": ["small sets: 18-36 slices and 10-22 patients per set, 2-5 test patients; indicative only",
                    "no pixel spacing in the 2D files; Dice only",
                    "fine-tuning pools the six train splits in one run per method; ProMISe runs per set",
                    "CBDP prunes neither the first nor the last epoch: at ~1 epoch it runs the full data (compare "
                    "iterations with iterations_full_data), so its row is PHPG stopped at a whole epoch",
                    "ProMISe's steps are far below its recipe: its automatic Dice here is an early-training "
                    "figure, not ProMISe's capability"],
        "quick": args.quick, "image_size": IMAGE_SIZE, "split_fractions": SPLIT, "split_seed": args.seed,
        "min_component_px_at_512": MIN_COMPONENT_PX, "skipped_sets": SKIPPED_SETS,
        "inter_annotator_curvas": inter,
        "sets": sets, "mean_over_set_classes": mean_row(sets),
        "finetune": {"pooled_prepared": str(pooled.root), "train_slices": len(pooled.case_ids("train")),
                     "steps": args.ft_steps, "batch_size": args.ft_batch, "runs": runs},
        "promise": {"steps": args.promise_steps, "batch_size": args.promise_batch, "mode": "apm+ips",
                    "runs": promise_runs},
        "timings_s": timings, "errors": errors, "markdown": table, "machine": machine(),
        "total_s": round(time.time() - started, 1),
        "command": "python benchmarks/real_foundations.py " + " ".join(sys.argv[1:]),
    })
    print(table)
    if inter is not None:
        print(f"\nCURVAS inter-annotator Dice: {inter.get('dice_per_class') or inter.get('why_not')}")
    for err in errors:
        print(f"\nFAILED {err['method']}: {err['error']}\n  {err['command']}")
    print(f"\nwrote {args.out} ({round(time.time() - started)} s)")


if __name__ == "__main__":
    main()
