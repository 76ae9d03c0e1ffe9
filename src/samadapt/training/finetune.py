"""``samadapt train``: fine-tune SAM's mask decoder (optionally its prompt encoder) from the embedding cache.

The run folder holds ``config.yaml`` (the resolved :class:`~samadapt.config.FinetuneConfig`), the
engine's ``state.pt`` / ``metrics.jsonl`` / ``tensorboard/`` (see :mod:`samadapt.training.engine`),
``best.pth`` (the step of best validation Dice) and, at the end, ``model.pth``. Both checkpoints are plain
SAM state dicts with a JSON sidecar (base model, data, config, steps, validation Dice), loadable by
``samadapt.models.sam.load_sam`` and by ``segment_anything`` for SAM's own architectures. The image
encoder is not trained, so fine-tuned models share the base model's embedding cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from samadapt.config import FinetuneConfig, config_to_dict, load_config, save_config
from samadapt.data.prepared import PreparedDataset
from samadapt.errors import ConfigError
from samadapt.evaluation.box_protocol import predict_with_boxes
from samadapt.evaluation.metrics import dice
from samadapt.models.embedding_cache import EmbeddingCache, compute_embeddings, resolve_device
from samadapt.models.sam import LoadedModel, load_sam, save_sam
from samadapt.prompts.box_noise import BoxNoise
from samadapt.training.engine import EngineSettings, run_training
from samadapt.training.multi_prompt import MultiPromptObjective
from samadapt.training.slice_data import SliceOrder, load_slice, training_slices

CONFIG_FILE = "config.yaml"


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


def objective_from_config(config: FinetuneConfig) -> MultiPromptObjective:
    """The multi-prompt (or single-prompt) objective a config describes."""
    noise = BoxNoise(config.box_noise, config.organ_box_shift_px, config.lesion_box_shift_px,
                     config.box_shift_max_fraction, config.sam_noise_std)
    return MultiPromptObjective(config.prompting, config.max_prompts_per_slice, noise, config.loss,
                                config.iou_weight, config.prompt_reduction)


def trainable_parameters(loaded: LoadedModel, train_prompt_encoder: bool) -> dict[str, torch.nn.Parameter]:
    """Freeze SAM except the mask decoder (and the prompt encoder if asked); returns the trainable ones."""
    loaded.sam.requires_grad_(False)
    modules = ["mask_decoder"] + (["prompt_encoder"] if train_prompt_encoder else [])
    named = {}
    for module in modules:
        for name, param in getattr(loaded.sam, module).named_parameters():
            param.requires_grad_(True)
            named[f"{module}.{name}"] = param
    return named


def validation_dice(loaded: LoadedModel, prepared: PreparedDataset, cache: EmbeddingCache, split: str) -> float:
    """Mean over classes of the per-object Dice with tight boxes on ``split`` (model frame, 2D)."""
    per_class: dict[str, list[float]] = {}
    for item in predict_with_boxes(loaded.sam, prepared, cache, split):
        for obj, pred, gt in zip(item.objects, item.predicted, item.truth, strict=True):
            per_class.setdefault(obj.class_name, []).append(dice(pred, gt))
    return float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else float("nan")


def prepare_run_folder(run_dir: Path, config: FinetuneConfig, resume: bool) -> FinetuneConfig:
    """Check the run folder against ``resume`` and save the config; returns the config to run with.

    A new run needs an empty (or absent) folder. ``resume`` continues the folder's run with its saved
    config; settings given again must agree with it.
    """
    saved = run_dir / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); start the run without --resume")
        return load_config(FinetuneConfig, saved)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: folder is not empty; pass --resume to continue its run, or use a new folder")
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
    device = resolve_device(config.device)
    loaded = load_sam(config.model, device=device)
    if loaded.spec.image_size != prepared.image_size:
        raise ConfigError(f"{prepared.root}: prepared at {prepared.image_size} px but model '{config.model}' takes "
                          f"{loaded.spec.image_size} px; prepare with --image-size {loaded.spec.image_size}")
    cache = compute_embeddings(prepared, loaded, device=device, progress=embed_progress)
    named = trainable_parameters(loaded, config.train_prompt_encoder)
    train = training_slices(prepared, "train")
    has_val = bool(prepared.case_ids(config.val_split))
    order = SliceOrder(len(train), config.batch_size, config.grad_accum, config.seed)
    objective = objective_from_config(config)

    def compute_loss(step: int, micro: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        losses, totals = [], {"prompts": 0.0, "train_iou": 0.0, "prompt_s": 0.0, "data_s": 0.0}
        for index in order.indices(step, micro):
            t0 = time.perf_counter()
            sample = load_slice(prepared, cache, train[index], config.is_lesion)
            totals["data_s"] += time.perf_counter() - t0
            loss, stats = objective.slice_loss(loaded.sam, sample, generator)
            losses.append(loss)
            for key in ("prompts", "prompt_s"):
                totals[key] += stats[key]
            totals["train_iou"] += stats["train_iou"] / (config.batch_size * config.grad_accum)
        return torch.stack(losses).mean(), totals

    def info(step: int, val: float | None) -> dict:
        return {"description": f"SAM fine-tuned by samadapt train ({config.prompting}-prompt boxes)",
                "base_model": config.model, "base_checkpoint": str(loaded.checkpoint or ""),
                "data": {"prepared": str(prepared.root), "hash": prepared.hash, "classes": prepared.class_names},
                "training": {"config": config_to_dict(config), "steps": step, "val_dice": val}}

    best_path = run_dir / "best.pth"

    def save_best(step: int, score: float) -> None:
        save_sam(loaded.sam, loaded.spec, best_path, info(step, score))

    result = run_training(
        run_dir, named, EngineSettings.from_config(config), compute_loss, device,
        validate=(lambda: validation_dice(loaded, prepared, cache, config.val_split)) if has_val else None,
        save_best=save_best, on_step=on_step,
    )
    final_val = result.curve[-1][1] if result.curve else None
    model_path = run_dir / "model.pth"
    if result.steps_run or not model_path.is_file():  # a finished run's model stays as it was
        save_sam(loaded.sam, loaded.spec, model_path, info(result.steps, final_val))
    return FinetuneResult(model_path, best_path if best_path.is_file() else None, result.steps,
                          result.best_score if has_val else None, result.best_step if has_val else None,
                          result.curve, result.wall_s)
