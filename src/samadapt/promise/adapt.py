"""``samadapt adapt``: train ProMISe's APM and/or IPS with every SAM parameter frozen.

Runs on the shared engine (:func:`samadapt.training.engine.run_training`: resume, checkpoints, metrics,
TensorBoard, autocast on CUDA only, ``torchrun`` data parallelism like ``samadapt train``). The run folder
holds ``config.yaml`` (the resolved :class:`~samadapt.config.PromiseConfig`), the engine's ``state.pt`` /
``metrics.jsonl`` / ``tensorboard/``, ``best_adapter.pt`` (+ ``.json``) at the best validation score and,
at the end, ``adapter.pt`` + ``adapter.json`` (:mod:`samadapt.promise.adapter`). SAM's weights are never
written: the sidecar names the base model and the sha256 of its weights, checked at load time and checked
unchanged at the end of training.

Data: the training slices holding an object of the adapter's classes, in the engine's resumable order
(:class:`~samadapt.training.slice_data.SliceOrder`), read from the embedding cache; modes with an APM need
the cache's multi-level features, computed first when missing (``samadapt embed --features``).

Validation score (higher is better, on ``val_split``): with an APM, the automatic Dice (per class mask,
over the slices where the class is present, mean over classes); for ``ips``, the Dice with ground-truth
boxes and point sets (fixed seed), the mean of the two, mean over classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from samadapt.data.prepared import PreparedDataset
from samadapt.errors import ConfigError
from samadapt.models.embedding_cache import EmbeddingCache, ensure_cache
from samadapt.models.sam import LoadedModel, load_sam, sam_digest
from samadapt.overlap import dice
from samadapt.promise.adapter import ADAPTER_FILE, BEST_ADAPTER_FILE, AdapterSpec, PromiseAdapter, save_adapter
from samadapt.promise.apm import class_priors, initial_point_layout, resolve_apm_size
from samadapt.promise.objective import AdaptedSlice, PromiseObjective, ground_truth_prompts, prompts_to
from samadapt.promise.predict import automatic_masks, prompted_masks
from samadapt.promise.samples import class_boxes, load_promise_slice, promise_slices
from samadapt.runtime import resolve_device, setup
from samadapt.settings import config_to_dict
from samadapt.training.engine import run_training
from samadapt.training.finetune import check_run_inputs, prepare_run_folder
from samadapt.training.slice_data import SliceOrder, TrainingSlice

if TYPE_CHECKING:
    from samadapt.config import PromiseConfig

VALIDATION_SEED = 12345


@dataclass
class AdaptResult:
    """Paths and figures of a finished ``samadapt adapt`` run."""

    adapter: Path
    best: Path | None
    steps: int
    best_val_score: float | None
    best_step: int | None
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    seconds_per_epoch: float = 0.0
    trainable_parameters: int = 0
    stopped_early: bool = False  # ``patience`` ended the run before ``steps``


def build_adapter(
    loaded: LoadedModel, config: PromiseConfig, classes: list[str], train: list[TrainingSlice],
    base_digest: str,
) -> PromiseAdapter:
    """A fresh adapter for ``loaded`` (initialised from ``config.engine.seed``, never from the global RNG); with
    ``apm_init=prior`` each class's points start around its mean box on the ``train`` slices."""
    spec = loaded.spec
    decoder = loaded.sam.mask_decoder
    adapter_spec = AdapterSpec(
        classes=tuple(classes), image_size=spec.image_size, feature_dim=spec.encoder_embed_dim,
        feature_levels=len(spec.feature_block_indexes), grid=spec.embedding_size,
        transformer_dim=decoder.transformer_dim, num_mask_tokens=decoder.num_mask_tokens,
        has_apm=config.has_apm, has_ips=config.has_ips, apm_kind=config.apm_kind,
        apm_size=resolve_apm_size(config.apm_size, spec.encoder_embed_dim), num_points=config.num_points,
        num_positive=config.num_positive, presence_head=config.presence_head, ips_hidden=config.ips_hidden,
        multimask=config.multimask_output)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.engine.seed)
        adapter = PromiseAdapter(adapter_spec, config.model, base_digest)
    if adapter.apm is not None and config.apm_init == "prior":
        priors = class_priors(class_boxes(train, classes), spec.image_size)
        layout = initial_point_layout(priors, config.num_positive, config.num_points - config.num_positive,
                                      spec.image_size)
        adapter.apm.points.set_layout(layout)
    return adapter


def validation_score(
    adapter: PromiseAdapter, loaded: LoadedModel, prepared: PreparedDataset, cache: EmbeddingCache,
    slices: list[TrainingSlice], objective: PromiseObjective,
) -> float:
    """The run's validation score (module docstring): mean over classes of the per-slice Dice."""
    device = next(adapter.parameters()).device
    per_class: dict[int, list[float]] = {}
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    was_training = adapter.training
    adapter.eval()
    try:
        for item in slices:
            sample = load_promise_slice(prepared, cache, item, adapter.classes, adapter.has_apm)
            embedding = sample.embedding.to(device)
            if adapter.has_apm:
                masks, _ = automatic_masks(adapter, loaded.sam, embedding, sample.features.to(device),
                                           sample.valid_hw, presence_threshold=None)
                for k, truth in zip(sample.class_indices.tolist(), sample.class_masks.numpy(), strict=True):
                    per_class.setdefault(k, []).append(dice(masks[k].cpu().numpy(), truth))
                continue
            shift = adapter.token_shift(embedding)
            names = [adapter.classes.index(obj.class_name) for obj in item.objects]
            scores = np.zeros(len(names))
            for kind in ("box", "points"):
                prompts = ground_truth_prompts(sample.object_masks, kind, objective.num_positive,
                                               objective.num_points - objective.num_positive, generator,
                                               sample.valid_hw, objective.negative_margin)
                masks = prompted_masks(loaded.sam, embedding, shift, adapter.multimask, prompts_to(prompts, device),
                                       adapter.spec.image_size, sample.valid_hw).cpu().numpy()
                scores += [dice(m, t) / 2 for m, t in zip(masks, sample.object_masks.numpy(), strict=True)]
            for k, score in zip(names, scores, strict=True):
                per_class.setdefault(k, []).append(float(score))
    finally:
        adapter.train(was_training)
    return float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else float("nan")


def check_adapt_inputs(config: PromiseConfig) -> None:
    """Raise the error ``adapt`` would meet at its start: those of any run
    (:func:`~samadapt.training.finetune.check_run_inputs`), and ``classes`` the prepared data lacks."""
    check_run_inputs(config)
    PreparedDataset(config.data).select_classes(config.classes, "adapt setting classes")


def prepare_adapt_folder(run_dir: Path, config: PromiseConfig, resume: bool) -> PromiseConfig:
    """:func:`~samadapt.training.finetune.prepare_run_folder` with ProMISe's input checks: nothing is written
    unless :func:`check_adapt_inputs` passes. Returns the config to run with."""
    return prepare_run_folder(run_dir, config, resume, check_inputs=check_adapt_inputs)


def adapt(
    run_dir: Path,
    config: PromiseConfig,
    on_step: Callable[[dict], None] = lambda record: None,
    embed_progress: Callable[[int, int], None] | None = None,
    loaded: LoadedModel | None = None,
) -> AdaptResult:
    """Run (or continue) the ProMISe training that ``config`` describes in ``run_dir`` (already set up by
    :func:`prepare_adapt_folder`).

    ``loaded`` may pass the base model already in memory (it must be ``config.model``); it is frozen
    (``requires_grad=False`` everywhere) and its weights are checked unchanged at the end.
    """
    if not config.data:
        raise ConfigError("adapt setting data: give the prepared dataset folder (samadapt adapt PREPARED)")
    prepared = PreparedDataset(config.data)
    ranks, device_name = setup(config.device)
    device = resolve_device(device_name)
    loaded = loaded or load_sam(config.model, device=device)
    loaded.sam.to(device)
    if loaded.spec.image_size != prepared.image_size:
        raise ConfigError(f"{prepared.root}: prepared at {prepared.image_size} px but model '{config.model}' takes "
                          f"{loaded.spec.image_size} px; prepare with --image-size {loaded.spec.image_size}")
    loaded.sam.requires_grad_(False)
    loaded.sam.eval()
    classes = prepared.select_classes(config.classes, "adapt setting classes")  # the classes the adapter learns
    cache = ensure_cache(prepared, loaded, config.has_apm, device, ranks, embed_progress)
    train = promise_slices(prepared, "train", classes)
    val = promise_slices(prepared, config.val_split, classes) if prepared.case_ids(config.val_split) else []
    digest = sam_digest(loaded.sam)
    adapter = build_adapter(loaded, config, classes, train, digest).to(device).train()
    named = dict(adapter.named_parameters())
    objective = PromiseObjective(
        presence_weight=config.presence_weight, ips_prompts=config.ips_prompts, num_positive=config.num_positive,
        num_points=config.num_points, negative_margin=config.negative_margin, multimask=config.multimask_output)
    engine = config.engine
    order = SliceOrder(len(train), engine.batch_size, engine.grad_accum, engine.seed)
    n_params = adapter.trainable_parameter_count()
    averaged = ["mask_loss", "train_iou"]  # per-slice statistics, averaged over the step's slices
    if config.has_apm and config.presence_head:
        averaged += ["presence_loss", "presence_acc"]
    if config.mode == "apm+ips" and config.promptable_weight > 0:
        averaged.append("prompted_mask_loss")

    def compute_loss(step: int, micro: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        indices = ranks.shard(order.indices(step, micro))
        totals = {"prompts": 0.0, "data_s": 0.0, **dict.fromkeys(averaged, 0.0)}  # the same keys on every rank
        if not indices:
            return next(iter(named.values())).sum() * 0, totals
        t0 = time.perf_counter()
        samples = [load_promise_slice(prepared, cache, train[i], classes, config.has_apm) for i in indices]
        totals["data_s"] = time.perf_counter() - t0
        embeddings = torch.cat([s.embedding for s in samples]).to(device)
        shifts = adapter.token_shift(embeddings)
        points = presence = None
        if config.has_apm:
            points, presence = adapter.predict_points(torch.cat([s.features for s in samples]).to(device))
        losses = []
        per_slice = engine.slices_per_step
        for b, sample in enumerate(samples):
            shift = None if shifts is None else shifts[b : b + 1]
            adapted = AdaptedSlice(sample, shift)
            if config.has_apm:
                adapted.points, adapted.labels = points[b], adapter.point_labels(points.shape[1], device)
                adapted.presence_logits = None if presence is None else presence[b]
            loss, stats = objective.slice_loss(loaded.sam, adapted, generator)
            if config.has_apm and shift is not None and config.promptable_weight > 0:
                prompted, prompted_stats = objective.prompted_loss(loaded.sam, sample, shift, generator)
                loss = loss + config.promptable_weight * prompted
                stats["prompted_mask_loss"] = prompted_stats["mask_loss"]
            losses.append(loss)
            totals["prompts"] += stats["prompts"]
            for key in averaged:
                totals[key] += stats[key] / per_slice
        return torch.stack(losses).sum() / engine.batch_size, totals

    def info(step: int, val_score: float | None, wall_s: float | None = None) -> dict:
        steps_per_epoch = len(train) / engine.slices_per_step
        training = {"steps": step, "epochs": round(step / steps_per_epoch, 3), "val_score": val_score,
                    "trainable_parameters": n_params, "training_slices": len(train)}
        if wall_s is not None:
            training |= {"wall_s": round(wall_s, 2),
                         "seconds_per_epoch": round(wall_s / max(step, 1) * steps_per_epoch, 3)}
        return {"description": f"ProMISe adapter ({config.mode}) for frozen SAM '{config.model}' by samadapt adapt",
                "mode": config.mode, "base_checkpoint": str(loaded.checkpoint or ""),
                "data": {"prepared": str(prepared.root), "hash": prepared.hash, "classes": prepared.class_names},
                "config": config_to_dict(config), "training": training}

    def save_best(step: int, score: float) -> None:
        save_adapter(adapter, run_dir / BEST_ADAPTER_FILE, info(step, score))

    result = run_training(
        run_dir, named, engine, compute_loss, device,
        validate=(lambda: validation_score(adapter, loaded, prepared, cache, val, objective)) if val else None,
        save_best=save_best, on_step=on_step,
    )
    if sam_digest(loaded.sam) != digest:  # the method's promise; a failure here is a bug, not bad input
        raise RuntimeError("SAM's weights changed during adaptation")
    final_val = result.curve[-1][1] if result.curve else None
    path = run_dir / ADAPTER_FILE
    steps_per_epoch = len(train) / engine.slices_per_step
    if ranks.is_main and (result.steps_run or not path.is_file()):  # a finished run's adapter stays
        save_adapter(adapter, path, info(result.steps, final_val, result.wall_s))
    best = run_dir / BEST_ADAPTER_FILE
    return AdaptResult(path, best if best.is_file() else None, result.steps,
                       result.best_score if val else None, result.best_step if val else None, result.curve,
                       result.wall_s, result.wall_s / max(result.steps, 1) * steps_per_epoch, n_params,
                       result.stopped_early)
