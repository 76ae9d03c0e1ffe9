"""``samadapt train``: fine-tune SAM's mask decoder (optionally its prompt encoder) from the embedding cache.

The run folder holds ``config.yaml`` (the resolved :class:`~samadapt.config.FinetuneConfig`), the
engine's ``state.pt`` / ``metrics.jsonl`` / ``tensorboard/`` (see :mod:`samadapt.training.engine`),
``best.pth`` (the step of best validation Dice) and, at the end, ``last.pth`` (the last step) and
``model.pth``: the *selected* model, by default the best one (``select_model``), which is what ``eval``,
``segment`` and a run folder resolve to. Its sidecar's ``selection`` says which step it is, by which rule
and with which validation Dice, whether ``patience`` stopped the run early (``stopped_early``), and
``training.wall_s`` the run's wall time. All are plain
SAM state dicts with a JSON sidecar (base model, data, config, steps, validation Dice), loadable by
``samadapt.models.sam.load_sam`` and by ``segment_anything`` for SAM's own architectures. The image
encoder is not trained, so fine-tuned models share the base model's embedding cache.
"""

from __future__ import annotations

import fnmatch
import shutil
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from samadapt.data.prepared import PreparedDataset
from samadapt.errors import ConfigError, SamadaptError
from samadapt.evaluation.box_protocol import predict_with_boxes
from samadapt.io.atomic import is_temporary, write_json_atomic
from samadapt.io.folder_lock import LOCK_FILE
from samadapt.models.embedding_cache import EmbeddingCache, LiveEmbeddings, ensure_cache
from samadapt.models.error_head import ERROR_HEAD_FILE, save_error_head
from samadapt.models.lora import LoRALinear, add_lora, merge_lora
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import ModelSpec
from samadapt.models.sam import LoadedModel, load_sam, save_sam
from samadapt.overlap import dice
from samadapt.runtime import resolve_device, setup
from samadapt.settings import config_to_dict, load_config, save_config
from samadapt.training.engine import METRICS_FILE, STATE_FILE, run_training
from samadapt.training.multi_prompt import MultiPromptObjective
from samadapt.training.objective import RegionObjective
from samadapt.training.phpg import phpg_objective_from_config
from samadapt.training.pruning import EpochPlanner
from samadapt.training.slice_data import SliceOrder, load_slice, training_slices

# a samadapt.config.FinetuneConfig; not imported: config sits above training (its groups are training's settings)
FinetuneConfig = Any

CONFIG_FILE = "config.yaml"
RunConfig = TypeVar("RunConfig")


@dataclass
class FinetuneResult:
    """Paths and figures of a finished run."""

    model: Path
    best: Path | None
    steps: int
    best_val_dice: float | None
    best_step: int | None
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    selection: dict = field(default_factory=dict)  # which step model.pth is: rule, step, val_dice, last_*


def objective_from_config(config: FinetuneConfig, embed_dim: int = 256) -> RegionObjective:
    """The objective a config describes: multi-prompt (or single-prompt) boxes, or PHPG (whose error head is
    built for embeddings of ``embed_dim`` channels)."""
    if config.objective == "phpg":
        return phpg_objective_from_config(config, embed_dim)
    return MultiPromptObjective(prompting=config.prompting, max_prompts_per_slice=config.max_prompts_per_slice,
                                noise=config.box_noise, loss=config.loss, iou_weight=config.iou_weight,
                                prompt_reduction=config.prompt_reduction, loss_size=config.loss_size)


def planner_from_config(config: FinetuneConfig, train: list) -> EpochPlanner | None:
    """The epoch planner of a pruned run (None without pruning): the run's ``pruning`` group as it is. A
    pruned step takes ``engine.batch_size x engine.grad_accum`` slices of the epoch's plan; ``engine.steps``
    fixes the number of epochs."""
    if config.pruning.policy == "none":
        return None
    engine = config.engine
    epochs = max(1, round(engine.steps * engine.slices_per_step / len(train)))
    return EpochPlanner(train, config.pruning, epochs, engine.slices_per_step, engine.seed)


def write_pruning_log(run_dir: Path, policy: str, planner: EpochPlanner, step: int, finished: bool) -> None:
    """``pruning.json``: per planned epoch, slices kept (in all and per class) and its steps; iterations so far
    against a full-data run (epochs started so far, or the whole run once ``finished``)."""
    full_per_epoch = planner.iterations_full() // planner.epochs
    epochs = planner.history if finished else planner.history[:-1]  # the current epoch is still running
    if finished:
        iterations, full = step, planner.iterations_full()
    else:
        iterations, full = sum(e["steps"] for e in epochs), full_per_epoch * len(epochs)
    write_json_atomic(run_dir / "pruning.json", {
        "policy": policy, "finished": finished, "iterations": iterations, "iterations_full_data": full,
        "fraction_of_full": round(iterations / max(1, full), 4), "iterations_saved_so_far": full - iterations,
        "epochs": planner.history})


def trainable_parameters(
    loaded: LoadedModel, train_prompt_encoder: bool, lora_rank: int = 0, lora_alpha: float = 8.0, seed: int = 0
) -> dict[str, torch.nn.Parameter]:
    """Freeze SAM except the mask decoder (plus the prompt encoder, plus encoder LoRA adapters, if asked).

    LoRA adapters are added here (initialised from ``seed``); returns the trainable parameters by name.
    """
    loaded.sam.requires_grad_(False)
    modules = ["mask_decoder"] + (["prompt_encoder"] if train_prompt_encoder else [])
    named = {}
    for module in modules:
        for name, param in getattr(loaded.sam, module).named_parameters():
            param.requires_grad_(True)
            named[f"{module}.{name}"] = param
    if lora_rank > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapters = add_lora(loaded.sam.image_encoder, lora_rank, lora_alpha)
        named.update({f"image_encoder.{name}": param for name, param in adapters.items()})
    return named


def plain_copy(loaded: LoadedModel) -> torch.nn.Module:
    """The model as a plain SAM (LoRA adapters merged into a copy; the model itself when it has none)."""
    if not any(isinstance(m, LoRALinear) for m in loaded.sam.image_encoder.modules()):
        return loaded.sam
    copy = deepcopy(loaded.sam)
    merge_lora(copy.image_encoder)
    return copy


def promote_best(best_path: Path, model_path: Path, wall_s: float, selection: dict,
                 spec: ModelSpec | None = None) -> Path:
    """Save the checkpoint at ``best_path`` as ``model_path``: its sidecar (less ``name``/``architecture``,
    which ``save_sam`` writes from ``spec``, by default the checkpoint's own) with ``training.wall_s`` set to
    the run's wall time and ``selection`` added."""
    chosen = load_sam(str(best_path), device="cpu")
    chosen_info = {k: v for k, v in chosen.sidecar.items() if k not in ("name", "architecture")}
    chosen_info["training"]["wall_s"] = round(wall_s, 1)
    return save_sam(chosen.sam, spec if spec is not None else chosen.spec, model_path,
                    {**chosen_info, "selection": selection})


def validation_dice(
    loaded: LoadedModel, prepared: PreparedDataset, cache: EmbeddingCache | LiveEmbeddings, split: str
) -> float:
    """Mean over classes of the per-object Dice with tight boxes on ``split`` (model frame, 2D)."""
    per_class: dict[str, list[float]] = {}
    for item in predict_with_boxes(loaded.sam, prepared, cache, split):
        for obj, pred, gt in zip(item.objects, item.predicted, item.truth, strict=True):
            per_class.setdefault(obj.class_name, []).append(dice(pred, gt))
    return float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else float("nan")


def encode_with_grad(
    loaded: LoadedModel, prepared: PreparedDataset, items: list, device: torch.device
) -> torch.Tensor:
    """``BxCxgxg`` embeddings of training slices by the (LoRA-adapted) encoder, with gradient."""
    images = np.stack([np.asarray(prepared.images(item.case_id)[item.slice]) for item in items])
    valid_hw = np.array([prepared.meta(item.case_id)["valid_hw"] for item in items])
    return loaded.sam.image_encoder(to_model_input(images, loaded.spec, valid_hw).to(device))


# what a run leaves before its first checkpoint (no state.pt): a folder holding only these starts afresh
_STEPLESS = frozenset({CONFIG_FILE, METRICS_FILE, "tensorboard", "best.pth", "best.json", "best_adapter.pt",
                       "best_adapter.json", "pruning.json", LOCK_FILE})


def check_run_inputs(config: RunConfig) -> None:
    """Raise the error the run of ``config`` would meet at its start: the data not prepared (or changed since),
    a model that does not load or does not fit the data's frame, a device that is not here. Loads the model
    once on the CPU. (A run with more inputs extends it: ``samadapt.promise.adapt.check_adapt_inputs``.)"""
    if not config.data:
        raise ConfigError("setting data: give the prepared dataset folder (samadapt train|adapt PREPARED)")
    prepared = PreparedDataset(config.data)
    resolve_device(config.device)
    size = load_sam(config.model, device="cpu").spec.image_size
    if size != prepared.image_size:
        raise ConfigError(f"{prepared.root}: prepared at {prepared.image_size} px but model '{config.model}' takes "
                          f"{size} px; prepare with --image-size {size}")


def prepare_run_folder(
    run_dir: Path,
    config: RunConfig,
    resume: bool,
    check_inputs: Callable[[RunConfig], None] | None = None,
    regenerable: tuple[str, ...] = (),
) -> RunConfig:
    """Check the run folder against ``resume`` and the run's inputs, then save the config; returns the config
    to run with.

    Nothing is written unless the inputs check out (``check_inputs(config)`` raises what the run would meet
    at its start; by default :func:`check_run_inputs`: prepared data, model, device). A new run needs an
    empty (or absent) folder, or one whose run never saved a step (no ``state.pt``, only what such a run
    leaves: config, metrics, TensorBoard events, best model, and files matching a ``regenerable`` glob
    pattern, e.g. pretraining's generated corpus): that is cleared and the run starts afresh. ``resume``
    continues the folder's run with its saved config (read back as the class of ``config``: any run's
    config dataclass, e.g. ``PromiseConfig``); settings given again must agree with it.
    """
    check_inputs = check_inputs or check_run_inputs
    saved = run_dir / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); start the run without --resume")
        config = load_config(type(config), saved)
        try:
            check_inputs(config)
        except SamadaptError as err:
            if (run_dir / STATE_FILE).is_file():
                raise
            raise type(err)(f"{err} (the run in {run_dir} saved no step yet: run it without --resume to start "
                            "afresh, with the setting fixed)") from None
        return config
    entries = list(run_dir.iterdir()) if run_dir.exists() else []

    def stepless(name: str) -> bool:
        return name in _STEPLESS or is_temporary(name) or any(fnmatch.fnmatchcase(name, p) for p in regenerable)

    if not all(stepless(entry.name) for entry in entries):
        raise ConfigError(f"{run_dir}: folder is not empty; pass --resume to continue its run, or use a new folder")
    check_inputs(config)
    for entry in entries:  # a run that never saved a step: start afresh
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return config


def finetune(
    run_dir: Path,
    config: FinetuneConfig,
    on_step: Callable[[dict], None] = lambda record: None,
    embed_progress: Callable[[int, int], None] | None = None,
) -> FinetuneResult:
    """Run (or continue) the fine-tuning described by ``config`` in ``run_dir`` (already prepared by
    :func:`prepare_run_folder`). The embedding cache is computed first when missing."""
    if not config.data:
        raise ConfigError("train setting data: give the prepared dataset folder (samadapt train PREPARED)")
    prepared = PreparedDataset(config.data)
    ranks, device_name = setup(config.device)
    device = resolve_device(device_name)
    loaded = load_sam(config.model, device=device)
    if loaded.spec.image_size != prepared.image_size:
        raise ConfigError(f"{prepared.root}: prepared at {prepared.image_size} px but model '{config.model}' takes "
                          f"{loaded.spec.image_size} px; prepare with --image-size {loaded.spec.image_size}")
    lora = config.lora_rank > 0
    engine = config.engine
    named = trainable_parameters(loaded, config.train_prompt_encoder, config.lora_rank, config.lora_alpha, engine.seed)
    if lora:  # the encoder changes every step: encode on the fly instead of reading a cache
        cache = LiveEmbeddings(prepared, loaded, device=device)
    else:
        # a finished cache (also one with features) serves; else the ranks split the missing cases and merge
        # one cache (samadapt.models.cache_shards)
        cache = ensure_cache(prepared, loaded, device=device, ranks=ranks, progress=embed_progress)
    train = training_slices(prepared, "train")
    has_val = bool(prepared.case_ids(config.val_split))
    order = SliceOrder(len(train), engine.batch_size, engine.grad_accum, engine.seed)
    planner = planner_from_config(config, train)
    objective = objective_from_config(config, loaded.spec.prompt_embed_dim)
    error_head = getattr(objective, "error_head", None)  # PHPG's: trains with the decoder, saved beside it
    if error_head is not None:
        named.update({f"error_head.{n}": p for n, p in error_head.to(device).named_parameters()})

    def batch(step: int, micro: int) -> tuple[list[int], list[float]]:
        if planner is None:
            indices = order.indices(step, micro)
            return indices, [1.0] * len(indices)
        indices, weights = planner.batch(step)  # one micro-batch per step: accumulation is folded in
        rows = slice(micro * engine.batch_size, (micro + 1) * engine.batch_size)
        return indices[rows], weights[rows]

    def compute_loss(step: int, micro: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        losses, totals = [], {"prompts": 0.0, "train_iou": 0.0, "prompt_s": 0.0, "data_s": 0.0}
        indices, weights = batch(step, micro)
        indices, weights = ranks.shard(indices), ranks.shard(weights)  # this rank's share of the micro-batch
        if not indices:  # a short last step of a pruned epoch (or fewer slices than ranks)
            if planner is not None:
                record_scores([])
            return next(iter(named.values())).sum() * 0, totals
        items = [train[index] for index in indices]
        t0 = time.perf_counter()
        samples = [load_slice(prepared, None if lora else cache, item, config.is_lesion) for item in items]
        totals["data_s"] += time.perf_counter() - t0
        if lora:
            embeddings = encode_with_grad(loaded, prepared, items, device)
            for b, sample in enumerate(samples):
                sample.embedding = embeddings[b : b + 1]
        scores = []
        for index, weight, sample in zip(indices, weights, samples, strict=True):
            per_prompt, chosen, stats = objective.slice_losses(loaded.sam, sample, generator)
            scores.append((index, chosen.tolist(), per_prompt.detach().cpu().tolist()))
            losses.append(objective.reduce(per_prompt) * weight)
            for key in ("prompts", "prompt_s"):
                totals[key] += stats[key]
            totals["train_iou"] += stats["train_iou"] / engine.slices_per_step
        if planner is not None:
            record_scores(scores)
        return torch.stack(losses).sum() / engine.batch_size, totals

    def record_scores(scores: list) -> None:
        """Give the planner every rank's latest object losses, so all ranks plan alike."""
        for rank_scores in ranks.gather(scores):
            for index, chosen, values in rank_scores:
                planner.record(index, chosen, values)

    def info(step: int, val: float | None) -> dict:
        lora_note = f", encoder LoRA rank {config.lora_rank} merged" if lora else ""
        prompts = "PHPG simulated users" if config.objective == "phpg" else f"{config.prompting}-prompt boxes"
        return {"description": f"SAM fine-tuned by samadapt train ({prompts}{lora_note})",
                "base_model": config.model, "base_checkpoint": str(loaded.checkpoint or ""),
                "data": {"prepared": str(prepared.root), "hash": prepared.hash, "classes": prepared.class_names},
                "training": {"config": config_to_dict(config), "steps": step, "val_dice": val}}

    best_path = run_dir / "best.pth"
    logged_epochs = [0]

    def log_pruning(record: dict) -> None:
        """Per epoch of a pruned run: slices kept per class and iterations saved so far (pruning.json)."""
        if planner is not None:
            record["epoch"] = planner.plan.epoch
            if len(planner.history) != logged_epochs[0]:
                logged_epochs[0] = len(planner.history)
                write_pruning_log(run_dir, config.pruning.policy, planner, record["step"], finished=False)
        on_step(record)

    def save_best(step: int, score: float) -> None:
        save_sam(plain_copy(loaded), loaded.spec, best_path, info(step, score))

    result = run_training(
        run_dir, named, engine, compute_loss, device,
        validate=(lambda: validation_dice(loaded, prepared, cache, config.val_split)) if has_val else None,
        save_best=save_best, on_step=log_pruning, schedule=planner,
    )
    if planner is not None and ranks.is_main:
        write_pruning_log(run_dir, config.pruning.policy, planner, result.steps, finished=True)
    final_val = result.curve[-1][1] if result.curve else None
    model_path, last_path = run_dir / "model.pth", run_dir / "last.pth"
    use_best = config.select_model == "best" and has_val and best_path.is_file()
    selected = {"rule": config.select_model if use_best or config.select_model == "last" else "last (no validation)",
                "step": result.best_step if use_best else result.steps,
                "val_dice": result.best_score if use_best else final_val,
                "last_step": result.steps, "last_val_dice": final_val, "stopped_early": result.stopped_early}
    if ranks.is_main and (result.steps_run or not model_path.is_file()):  # a finished run's model stays
        last_info = info(result.steps, final_val)
        last_info["training"]["wall_s"] = round(result.wall_s, 1)
        save_sam(plain_copy(loaded), loaded.spec, last_path, last_info)
        if use_best:
            promote_best(best_path, model_path, result.wall_s, selected)
        else:
            save_sam(plain_copy(loaded), loaded.spec, model_path, {**last_info, "selection": selected})
        if error_head is not None:
            save_error_head(error_head, run_dir / ERROR_HEAD_FILE,
                            {"model": last_path.name, **info(result.steps, final_val)})
    return FinetuneResult(model_path, best_path if best_path.is_file() else None, result.steps,
                          result.best_score if has_val else None, result.best_step if has_val else None,
                          result.curve, result.wall_s, selected)
