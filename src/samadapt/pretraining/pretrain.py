"""Pretrain samadapt's small foundation model from scratch with SAM's promptable recipe.

The run folder holds ``config.yaml``, the generated corpus (``corpus.npz``, reused on resume),
``state.pt`` (model, optimiser, step and RNG state, written atomically every ``checkpoint_every`` steps),
``metrics.jsonl``, and at the end ``model.pth`` + ``model.json`` (a plain SAM state dict and its sidecar).
A killed run started again with the same folder continues from its last checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from samadapt.config import PretrainConfig, config_to_dict, load_config, save_config
from samadapt.data.shapes import generate_corpus
from samadapt.errors import ConfigError
from samadapt.io.atomic import atomic_path
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import REGISTRY, ModelSpec
from samadapt.models.sam import build_sam, load_sam, save_sam
from samadapt.pretraining.evaluate import evaluate_on_shapes
from samadapt.pretraining.interactive import InteractiveRecipe, interactive_loss
from samadapt.training.engine import EngineSettings, lr_factor, truncate_metrics


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_fraction * lr`` at the last step."""
    schedule = EngineSettings(steps=config.steps, warmup_steps=config.warmup_steps,
                              min_lr_fraction=config.min_lr_fraction)
    return config.lr * lr_factor(schedule, step)


def initialisation_record(sidecar: dict) -> dict:
    """What a continued run records of the checkpoint it started from (``init_from``).

    The starting checkpoint's own ``training`` record (command, settings, steps and, recursively, where
    *it* started from) and its final ``metrics``, so that the sidecar of the last stage lists every
    command needed to reproduce the model. ``total_steps`` counts the steps of all earlier stages; a
    checkpoint without a samadapt sidecar (e.g. an official SAM file) contributes none.
    """
    training = sidecar.get("training", {})
    return {"training": training, "metrics": sidecar.get("metrics", {}),
            "total_steps": int(training.get("total_steps", training.get("steps", 0)))}


def _load_corpus(run_dir: Path, n: int, seed: int, size: int, progress) -> tuple[np.ndarray, np.ndarray]:
    path = run_dir / f"corpus_{seed}_{n}_{size}.npz"
    if path.is_file():
        data = np.load(path)
        return data["images"], data["instances"]
    images, instances = generate_corpus(n, seed, size, progress=progress)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, images=images, instances=instances)
    return images, instances


def _augment(image: np.ndarray, inst: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations of the square (``code`` in 0..7)."""
    if code & 4:
        image, inst = image[:, ::-1], inst[:, ::-1]
    k = code & 3
    return np.rot90(image, k).copy(), np.rot90(inst, k).copy()


def pretrain(
    run_dir: Path,
    config: PretrainConfig,
    on_step: Callable[[dict], None] = lambda record: None,
) -> Path:
    """Run (or resume) pretraining into ``run_dir``; returns the path of the final ``model.pth``.

    ``on_step`` receives each step's metrics record (``step``, ``loss``, ``lr``, first/last-round IoU and,
    at evaluation steps, ``eval_box_iou`` / ``eval_point_iou``), also written to ``metrics.jsonl``.
    """
    if config.model not in REGISTRY:
        raise ConfigError(f"model '{config.model}' is not a registered architecture; use one of {sorted(REGISTRY)}")
    spec = REGISTRY[config.model]
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    if saved.is_file() and config_to_dict(load_config(PretrainConfig, saved)) != config_to_dict(config):
        raise ConfigError(f"{saved}: this run folder was started with other settings; use a new folder")
    save_config(config, saved)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(run_dir, config, spec, on_step)
    finally:
        torch.set_num_threads(threads_before)


def _run(run_dir: Path, config: PretrainConfig, spec: ModelSpec, on_step: Callable[[dict], None]) -> Path:
    """The training loop of :func:`pretrain` (settings already validated and saved)."""
    images, instances = _load_corpus(run_dir, config.corpus_images, config.corpus_seed, spec.image_size, None)
    eval_images, eval_instances = _load_corpus(run_dir, config.eval_images, config.eval_seed, spec.image_size, None)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        sam = build_sam(spec).train()
    lineage: dict = {}
    if config.init_from:
        initial = load_sam(config.init_from)
        if initial.spec.architecture() != spec.architecture():
            raise ConfigError(f"{config.init_from}: not a '{config.model}' checkpoint; init_from must match the model")
        sam.load_state_dict(initial.sam.state_dict())
        lineage = initialisation_record(initial.sidecar)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    state_path = run_dir / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = int(state["step"])
        truncate_metrics(run_dir / "metrics.jsonl", step)

    def checkpoint() -> None:
        with atomic_path(state_path, suffix=".pt") as tmp:
            torch.save({"model": sam.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": torch.tensor(step)}, tmp)

    reduced = InteractiveRecipe(
        correction_rounds=config.correction_rounds,
        mask_only_rounds=config.mask_only_rounds,
        point_first_probability=config.point_first_probability,
    )
    full = InteractiveRecipe()
    box_only = InteractiveRecipe(correction_rounds=0, mask_only_rounds=0, point_first_probability=0.0)
    box_until = int(config.steps * config.box_warmup_fraction)
    full_from = int(config.steps * (1 - config.full_recipe_fraction))
    metrics_file = run_dir / "metrics.jsonl"
    started = time.time()
    while step < config.steps:
        recipe = full if step >= full_from else box_only if step < box_until else reduced
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        picks = torch.randint(0, len(images), (config.batch_size,), generator=generator).tolist()
        codes = torch.randint(0, 8, (config.batch_size,), generator=generator).tolist()
        batch, targets = [], []
        for index, code in zip(picks, codes, strict=True):
            image, inst = _augment(images[index], instances[index], code)
            ids = np.unique(inst)
            ids = ids[ids > 0]
            order = torch.randperm(len(ids), generator=generator)[: config.objects_per_image].numpy()
            chosen = torch.as_tensor(ids[np.sort(order)].astype(np.int64))
            batch.append(image)
            targets.append(torch.as_tensor(inst.astype(np.int64))[None] == chosen[:, None, None])
        optimizer.zero_grad(set_to_none=True)
        embeddings = sam.image_encoder(to_model_input(np.stack(batch), spec))
        # back-propagated round by round: the memory of one decoder round, not of all (interactive_loss)
        loss, stats = interactive_loss(sam, embeddings, targets, recipe, generator, backward=True)
        torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        record = {"step": step, "loss": float(loss.detach()), "lr": learning_rate(config, step - 1),
                  "rounds": 1 + recipe.correction_rounds + recipe.mask_only_rounds,
                  "elapsed_s": round(time.time() - started, 1), **stats}
        if step % config.eval_every == 0 or step == config.steps:
            record.update({f"eval_{k}": v for k, v in evaluate_on_shapes(
                sam, spec, eval_images, eval_instances, seed=config.eval_seed).items()})
        with open(metrics_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        on_step(record)
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint()

    final = evaluate_on_shapes(sam, spec, eval_images, eval_instances, seed=config.eval_seed)
    command = " ".join(["samadapt", "pretrain", str(run_dir)] + [
        f"--set {k}={v}" for k, v in config_to_dict(config).items()
        if v != config_to_dict(PretrainConfig()).get(k)])
    info = {
        "description": "samadapt-tiny: small SAM pretrained from scratch on a synthetic shape corpus",
        "preprocessing": {"image_size": spec.image_size, "pixel_mean": list(spec.pixel_mean),
                          "pixel_std": list(spec.pixel_std), "input": "uint8 RGB or grey replicated"},
        "training": {"command": command, "config": config_to_dict(config), "steps": step,
                     "total_steps": step + lineage.get("total_steps", 0),
                     "corpus_seed": config.corpus_seed, "eval_seed": config.eval_seed,
                     "python": sys.version.split()[0], "torch": torch.__version__,
                     **({"initialised_from": lineage} if lineage else {})},
        "metrics": {f"heldout_{k}": v for k, v in final.items()},
    }
    return save_sam(sam, spec, run_dir / "model.pth", info)
