"""Fine-tuning throughput: samadapt's way against the naive way, ratios within one run, per objective.

**Naive** (what most SAM fine-tuning projects do): every training slice is stored as its float32
``3xSxS`` model input (``.npy`` per slice: 0.75 MiB at 256 px, 12 MiB at 1024 px); each step loads its
slices' files, runs the frozen image encoder on them (under ``no_grad``) and trains the mask decoder on
**one** box per slice. **samadapt**: ``samadapt train`` as it runs (:func:`samadapt.training.finetune.
finetune`): fp16 embeddings read from the cache, the mask decoder trained on every object of the slice
in one pass (``multi-prompt``), or one object (``single``: the cache alone), or PHPG's simulated users
(``objective=phpg``, when this samadapt has it: one first prompt and the correction rounds, all regions per
pass). Both run on the same training engine (AdamW step, gradient clipping, metrics), from the same
phantoms, with the same ``batch_size`` slices per step; the figure is each step's ``step_s`` as the engine
logs it, the median over the steps after ``warmup`` of ``rounds`` runs that alternate between the
configurations (machine noise hits them alike).

Objects per second count the prompts a step trains (``prompts`` in the metrics): one per slice for naive
and single, every object for multi-prompt, every region for PHPG (each decoded ``1 + rounds`` times).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from perf.timing import sig
from samadapt.config import FinetuneConfig
from samadapt.data.prepared import PreparedDataset
from samadapt.errors import SamadaptError
from samadapt.models.preprocess import to_model_input
from samadapt.models.sam import LoadedModel, load_sam
from samadapt.training.engine import METRICS_FILE, EngineSettings, run_training
from samadapt.training.finetune import finetune, objective_from_config, prepare_run_folder, trainable_parameters
from samadapt.training.phpg import PHPGSettings
from samadapt.training.slice_data import SliceOrder, TrainingSlice, load_slice, training_slices


def write_naive_inputs(prepared: PreparedDataset, spec, items: list[TrainingSlice], folder: Path) -> dict:
    """``<case>_<slice>.npy``: each slice's float32 ``3xSxS`` model input (normalised, padded), the naive store."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for item in items:
        path = folder / f"{item.case_id}_{item.slice:04d}.npy"
        if not path.is_file():
            image = np.array(prepared.images(item.case_id)[item.slice])[None]
            valid_hw = prepared.meta(item.case_id).get("valid_hw")
            np.save(path, to_model_input(image, spec, valid_hw)[0].numpy().astype(np.float32))
        paths[(item.case_id, item.slice)] = path
    return paths


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def naive_run(run_dir: Path, loaded: LoadedModel, prepared: PreparedDataset, config: FinetuneConfig,
              paths: dict, train: list[TrainingSlice]) -> list[dict]:
    """The naive loop on the training engine; per-step records with ``encoder_s`` and ``data_s``."""
    objective = objective_from_config(dataclasses.replace(config, prompting="single"), loaded.spec.prompt_embed_dim)
    named = trainable_parameters(loaded, train_prompt_encoder=False)
    engine = config.engine
    order = SliceOrder(len(train), engine.batch_size, engine.grad_accum, engine.seed)
    encoder = loaded.sam.image_encoder

    def compute_loss(step: int, micro: int, generator: torch.Generator):
        items = [train[i] for i in order.indices(step, micro)]
        t0 = time.perf_counter()
        x = torch.from_numpy(np.stack([np.load(paths[(item.case_id, item.slice)]) for item in items]))
        t1 = time.perf_counter()
        with torch.no_grad():
            embeddings = encoder(x)
        t2 = time.perf_counter()
        losses, prompts = [], 0.0
        for b, item in enumerate(items):
            sample = load_slice(prepared, None, item, config.is_lesion)
            sample.embedding = embeddings[b : b + 1]
            loss, stats = objective.slice_loss(loaded.sam, sample, generator)
            losses.append(loss)
            prompts += stats["prompts"]
        return torch.stack(losses).mean(), {"prompts": prompts, "data_s": t1 - t0, "encoder_s": t2 - t1}

    run_training(run_dir, named, config.engine, compute_loss, torch.device("cpu"))
    return _records(run_dir)


def samadapt_run(run_dir: Path, config: FinetuneConfig) -> list[dict]:
    """``samadapt train`` with ``config`` (cache already computed); its per-step records."""
    prepare_run_folder(run_dir, config, resume=False)
    finetune(run_dir, config)
    return _records(run_dir)


def objectives(base: FinetuneConfig) -> dict[str, FinetuneConfig]:
    """samadapt's configurations to time: cache + single prompt, cache + multi-prompt, PHPG where it exists."""
    found = {"cache_single": dataclasses.replace(base, prompting="single"),
             "cache_multi_prompt": dataclasses.replace(base, prompting="multi")}
    try:
        found["cache_phpg"] = dataclasses.replace(base, objective="phpg", phpg=PHPGSettings(error_head=True))
    except (TypeError, SamadaptError):  # no PHPG objective in this samadapt
        pass
    return found


def summarise(records: list[dict], batch_size: int) -> dict:
    step_s = statistics.median(r["step_s"] for r in records)
    prompts = statistics.mean(r.get("prompts", 0.0) for r in records)
    row = {"steps_timed": len(records), "median_step_s": sig(step_s), "objects_per_step": round(prompts, 2),
           "objects_per_s": sig(prompts / step_s), "slices_per_s": sig(batch_size / step_s)}
    if records and "encoder_s" in records[0]:
        row["encoder_fraction_of_step"] = round(statistics.median(r["encoder_s"] / r["step_s"] for r in records), 3)
        row["data_fraction_of_step"] = round(statistics.median(r["data_s"] / r["step_s"] for r in records), 3)
    return row


def finetune_section(work: Path, prepared: PreparedDataset, quick: bool) -> dict:
    """Naive vs samadapt fine-tuning steps on ``prepared`` (embedded with tiny), per objective."""
    steps, warmup, rounds = (6, 2, 1) if quick else (14, 3, 2)
    engine = EngineSettings(steps=steps, batch_size=4, warmup_steps=0, checkpoint_every=steps, eval_every=steps)
    base = FinetuneConfig(data=str(prepared.root), model="tiny", engine=engine, device="cpu")
    train = training_slices(prepared, "train")
    order = SliceOrder(len(train), engine.batch_size, 1, engine.seed)
    used = {i for step in range(steps) for i in order.indices(step)}
    loaded = load_sam("tiny")
    paths = write_naive_inputs(prepared, loaded.spec, [train[i] for i in sorted(used)], work / "naive_inputs")
    configs = objectives(base)
    timed: dict[str, list[dict]] = {"naive": [], **{name: [] for name in configs}}
    runs = work / "finetune_runs"
    shutil.rmtree(runs, ignore_errors=True)  # run folders of an earlier suite run in the same --work
    for round_index in range(rounds):
        folder = runs / f"round{round_index}"
        timed["naive"] += naive_run(folder / "naive", load_sam("tiny"), prepared, base, paths, train)[warmup:]
        for name, config in configs.items():
            timed[name] += samadapt_run(folder / name, config)[warmup:]
    rows = {name: summarise(records, engine.batch_size) for name, records in timed.items()}
    naive = rows["naive"]
    ratios = {name: {"objects_per_s": round(row["objects_per_s"] / naive["objects_per_s"], 2),
                     "slices_per_s": round(row["slices_per_s"] / naive["slices_per_s"], 2)}
              for name, row in rows.items() if name != "naive"}
    file_bytes = next(iter(paths.values())).stat().st_size
    return {"model": "tiny", "batch_size": engine.batch_size, "steps_per_run": steps, "warmup_steps_dropped": warmup,
            "rounds": rounds, "configurations": rows, "ratio_vs_naive": ratios,
            "naive_file_bytes_per_slice": file_bytes}
