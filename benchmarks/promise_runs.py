"""What the ProMISe benchmarks share: adaptation runs that resume in a work folder, and the issue's table
read off an automatic evaluation (``samadapt eval --prompts auto``)."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from samadapt.config import PromiseConfig, config_to_dict, load_config
from samadapt.promise.adapt import AdaptResult, adapt, prepare_adapt_folder
from samadapt.training.finetune import CONFIG_FILE, prepare_run_folder


def run_folder_for(run_dir: Path, config, prepare=prepare_run_folder):
    """The config to run ``config`` with in ``run_dir``: a folder of the same settings is resumed (or reused
    when finished), one of other settings is replaced. Any run config class (``FinetuneConfig``,
    ``PromiseConfig``) with its folder step ``prepare`` (``prepare_adapt_folder`` for ProMISe)."""
    saved = run_dir / CONFIG_FILE
    if saved.is_file() and config_to_dict(load_config(type(config), saved)) != config_to_dict(config):
        shutil.rmtree(run_dir)
    return prepare(run_dir, config, resume=saved.is_file())


def adapted(run_dir: Path, config: PromiseConfig) -> tuple[AdaptResult, dict]:
    """Train (or finish, or reuse) the run of ``config`` in ``run_dir``; a folder of other settings is replaced."""
    config = run_folder_for(run_dir, config, prepare_adapt_folder)
    started = time.time()
    result = adapt(run_dir, config)
    summary = {"mode": config.mode, "steps": result.steps, "wall_s": round(result.wall_s, 1),
               "seconds_per_epoch": round(result.seconds_per_epoch, 2),
               "trainable_parameters": result.trainable_parameters, "best_val_score": result.best_val_score,
               "curve": result.curve, "this_call_s": round(time.time() - started, 1)}
    return result, summary


def _round(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 4)


def issue_table(evaluation: dict) -> dict:
    """``{automatic: {method: {dice_present, dice_all_slices, dice_3d, false_positive_rate, per_class}},
    promptable: {method: dice}}``: means over classes, from an ``evaluation.json`` of the automatic protocol."""
    by_method: dict[str, dict] = {}
    for row in evaluation["all_slices_and_3d"]:
        entry = by_method.setdefault(row["method"], {"all": [], "3d": []})
        if not math.isnan(row["dice_all_slices"]):
            entry["all"].append(row["dice_all_slices"])
        if not math.isnan(row["dice_3d"]):
            entry["3d"].append(row["dice_3d"])
    automatic = {}
    for name, scores in evaluation["automatic"].items():
        extra = by_method.get(name, {"all": [], "3d": []})
        automatic[name] = {
            "dice_present": _round(scores["present"]["mean_over_classes"]),
            "dice_all_slices": _round(sum(extra["all"]) / len(extra["all"])) if extra["all"] else None,
            "dice_3d": _round(sum(extra["3d"]) / len(extra["3d"])) if extra["3d"] else None,
            "false_positive_rate": _round(scores["false_positive_rate"]),
            "per_class_present": {c: _round(v["dice"]) for c, v in scores["present"]["per_class"].items()},
        }
    promptable = {name: _round(v["mean_over_classes"]) for name, v in evaluation["promptable"].items()}
    return {"automatic": automatic, "promptable": promptable}


def print_table(table: dict) -> None:
    """The table on stdout, x100."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:5.1f}"

    print(f"{'automatic, mean over classes':48s} present  all-slices  3D    FP-rate")
    for name, row in table["automatic"].items():
        print(f"{name:48s} {pct(row['dice_present'])}  {pct(row['dice_all_slices'])}      "
              f"{pct(row['dice_3d'])} {pct(row['false_positive_rate'])}")
    print("promptable check, Dice per object, mean over classes")
    for name, value in table["promptable"].items():
        print(f"{name:48s} {pct(value)}")
