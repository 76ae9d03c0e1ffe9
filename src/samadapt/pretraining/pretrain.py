"""Pretrain samadapt's small foundation model from scratch with SAM's promptable recipe, on the training engine.

The run folder holds ``config.yaml``, the generated corpus (``corpus_<seed>_<n>_<size>.npz``, reused on
resume), the engine's ``state.pt`` / ``metrics.jsonl`` / ``tensorboard/`` (:mod:`samadapt.training.engine`:
AdamW, warm-up and cosine, checkpoints, ``torchrun``, AMP on CUDA, early stopping), ``best.pth`` (the step of
best held-out score) and at the end ``model.pth`` + ``model.json`` (a plain SAM state dict and its sidecar:
how it was made, its held-out IoU and which step it is). The folder follows ``train``'s rule
(:func:`prepare_pretrain_folder`): a new run needs an empty folder, or one whose run saved no step; a killed
run continues from its last checkpoint with ``--resume``, to the same weights as an uninterrupted run.

Validation, every ``eval_every`` steps on the held-out corpus: mean IoU with a tight box and with one click
(``val_box_iou``, ``val_point_iou`` in ``metrics.jsonl``); its score, the mean of the two, picks ``best.pth``.

Under ``torchrun`` each rank draws its share of the ``batch_size`` images from its own generator (images are
drawn with replacement, so the union is distributed as one draw of ``batch_size``); the step statistics
``rounds`` and ``iou_last`` are over all ranks, the first-round IoU by prompt kind (``iou_first_box`` /
``iou_first_point``) is recorded only in a single process (a rank's mean over the kind it happened to draw
does not add up across ranks).
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

from samadapt.config import PretrainConfig, config_to_dict, dotted_settings, load_config
from samadapt.data.shapes import generate_corpus
from samadapt.errors import CheckpointError, ConfigError
from samadapt.io.atomic import atomic_path
from samadapt.models.preprocess import to_model_input
from samadapt.models.registry import REGISTRY, ModelSpec
from samadapt.models.sam import build_sam, load_sam, save_sam
from samadapt.pretraining.evaluate import evaluate_on_shapes
from samadapt.pretraining.interactive import InteractiveRecipe, interactive_loss
from samadapt.runtime import Ranks, resolve_device, setup
from samadapt.training.engine import METRICS_FILE, STATE_FILE, load_state, lr_factor, run_training
from samadapt.training.finetune import CONFIG_FILE, prepare_run_folder, promote_best

CORPUS_FILES = "corpus_*.npz"  # regenerable: a folder holding only these (and a step-less run's files) restarts
# what pretraining's state.pt held before it ran on the engine (a folder of that time resumes: see below)
_LEGACY_STATE_KEYS = ("model", "optimizer", "generator", "step")


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``engine.lr``, then cosine decay to ``engine.min_lr_fraction * engine.lr`` at the last
    step."""
    return config.engine.lr * lr_factor(config.engine, step)


def validation_score(figures: dict[str, float]) -> float:
    """The held-out score that selects a step: the mean of box and 1-click IoU (a promptable model serves
    both prompts)."""
    return (figures["box_iou"] + figures["point_iou"]) / 2


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


def check_pretrain_inputs(config: PretrainConfig) -> None:
    """Raise the error a pretraining run of ``config`` would meet at its start (nothing written): a model
    that is not a registered architecture, a device that is not here, an ``init_from`` checkpoint that does
    not load or is another architecture."""
    if config.model not in REGISTRY:
        raise ConfigError(f"model '{config.model}' is not a registered architecture; use one of {sorted(REGISTRY)}")
    resolve_device(config.device)
    if config.init_from:
        initial = load_sam(config.init_from, device="cpu")
        if initial.spec.architecture() != REGISTRY[config.model].architecture():
            raise ConfigError(f"{config.init_from}: not a '{config.model}' checkpoint; init_from must match the model")


def prepare_pretrain_folder(run_dir: Path, config: PretrainConfig, resume: bool) -> PretrainConfig:
    """``train``'s run-folder rule for pretraining (:func:`samadapt.training.finetune.prepare_run_folder`):
    inputs checked before anything is written; a new run needs an empty folder or one whose run saved no step
    (its corpus counts as regenerable); ``resume`` continues with the saved config, which is returned."""
    return prepare_run_folder(run_dir, config, resume, check_inputs=check_pretrain_inputs, regenerable=(CORPUS_FILES,))


def _load_corpus(run_dir: Path, n: int, seed: int, size: int, write: bool) -> tuple[np.ndarray, np.ndarray]:
    """The corpus of ``n`` images of ``seed``: read from the run folder, else generated (and saved when
    ``write``). A saved corpus that does not read back as expected is generated again (it is a function of
    its name)."""
    path = run_dir / f"corpus_{seed}_{n}_{size}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                images, instances = data["images"], data["instances"]
            if images.shape == (n, size, size, 3) and instances.shape == (n, size, size):
                return images, instances
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    images, instances = generate_corpus(n, seed, size)
    if write:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, images=images, instances=instances)
    return images, instances


def _augment(image: np.ndarray, inst: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations of the square (``code`` in 0..7)."""
    if code & 4:
        image, inst = image[:, ::-1], inst[:, ::-1]
    k = code & 3
    return np.rot90(image, k).copy(), np.rot90(inst, k).copy()


def engine_loss(
    parameters: list[torch.nn.Parameter],
    backpropagating_loss: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a computation that back-propagates itself, in a form the engine back-propagates.

    ``backpropagating_loss()`` leaves its gradients in the parameters' ``.grad`` and returns its loss
    detached (:func:`interactive_loss` with ``backward=True`` does so round by round, to hold the graph of
    one decoder round instead of all). Those gradients ``g`` are taken out (gradients already held, of
    earlier micro-batches, are set aside and put back) and carried by the returned loss: its value is
    ``scale`` x the loss, its gradient ``scale`` x ``g`` (a term ``sum(p * g) - sum(p * g).detach()``, zero
    in value), so the engine's own scaling (1/``grad_accum``, an fp16 loss scale) applies as to any loss.
    The backward inside runs unscaled: under fp16 autocast (GPUs without bf16) small gradients may
    underflow there.
    """
    held = [param.grad for param in parameters]
    for param in parameters:
        param.grad = None
    loss, stats = backpropagating_loss()
    produced = [param.grad for param in parameters]
    for param, grad in zip(parameters, held, strict=True):
        param.grad = grad
    carrier = parameters[0].sum() * 0  # keeps a graph when no gradient came (no objects)
    for param, grad in zip(parameters, produced, strict=True):
        if grad is not None:
            carrier = carrier + (param * grad).sum()
    return scale * (loss.detach() + (carrier - carrier.detach())), stats


def _legacy_state_to_engine(run_dir: Path, named: dict[str, torch.nn.Parameter]) -> None:
    """Rewrite a ``state.pt`` of pretraining before it ran on the engine (model, optimizer, generator, step)
    in the engine's layout, so that its run resumes where it stopped: the same weights, AdamW moments (the
    parameters in the same order) and generator, the validation curve from its ``metrics.jsonl``
    (``eval_box_iou`` / ``eval_point_iou`` records) and its training time from the records' ``elapsed_s``.
    A ``state.pt`` in the engine's layout is left alone; a damaged one is a :class:`CheckpointError`."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        return
    state = load_state(path, required=())
    if "parameters" in state or not all(key in state for key in _LEGACY_STATE_KEYS):
        return  # the engine's (or damaged: load_state says which when the engine reads it)
    missing = [name for name in named if name not in state["model"]]
    if missing:
        raise CheckpointError(f"{path}: a pretraining checkpoint of another model (no '{missing[0]}'); start the "
                              "run again without --resume into a new folder")
    step = int(state["step"])
    curve, train_s, previous = [], 0.0, 0.0
    metrics = run_dir / METRICS_FILE
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if not isinstance(record, dict) or record.get("step", step + 1) > step:
            continue
        if "eval_box_iou" in record:
            curve.append((record["step"], validation_score(
                {"box_iou": record["eval_box_iou"], "point_iou": record["eval_point_iou"]})))
        elapsed = float(record.get("elapsed_s", 0.0))  # from each call's start: a drop marks a resumed call
        train_s, previous = (train_s + previous, elapsed) if elapsed < previous else (train_s, elapsed)
    best_step, best_score = max(curve, key=lambda point: point[1]) if curve else (0, -float("inf"))
    converted = {"parameters": {name: state["model"][name] for name in named}, "optimizer": state["optimizer"],
                 "schedule": {}, "generators": [state["generator"]], "step": step, "best_score": best_score,
                 "best_step": best_step, "curve": torch.tensor(curve, dtype=torch.float64).reshape(-1, 2),
                 "train_s": train_s + previous}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(converted, tmp)


def pretrain(
    run_dir: Path,
    config: PretrainConfig,
    on_step: Callable[[dict], None] = lambda record: None,
) -> Path:
    """Run (or continue) the pretraining of ``config`` in ``run_dir``, set up by :func:`prepare_pretrain_folder`;
    returns the path of the final ``model.pth``.

    ``on_step`` receives each step's record (the engine's: ``step``, ``loss``, ``lr``, ``step_s``; the
    recipe's ``rounds``, first/last-round IoU; at validation steps ``val_score``, ``val_box_iou``,
    ``val_point_iou``, ``val_objects``), also written to ``metrics.jsonl``; on rank 0 only.
    """
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"{run_dir}: not a pretraining run folder (no {CONFIG_FILE}); start it with "
                          "`samadapt pretrain` (or prepare_pretrain_folder)")
    if config_to_dict(load_config(PretrainConfig, saved)) != config_to_dict(config):
        raise ConfigError(f"{saved}: this run folder was started with other settings; use a new folder")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(run_dir, config, on_step)
    finally:
        torch.set_num_threads(threads_before)


def _build(config: PretrainConfig, spec: ModelSpec, device: torch.device) -> tuple[Sam, dict]:
    """The model a run starts from (seeded random weights, or ``init_from``) and its lineage record."""
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.engine.seed)
        sam = build_sam(spec)
    lineage: dict = {}
    if config.init_from:
        initial = load_sam(config.init_from, device="cpu")  # its architecture checked at the start
        sam.load_state_dict(initial.sam.state_dict())
        lineage = initialisation_record(initial.sidecar)
    return sam.to(device).train(), lineage


def _batch_loss(config: PretrainConfig, ranks: Ranks, images: np.ndarray, instances: np.ndarray, sam: Sam,
                spec: ModelSpec, device: torch.device) -> Callable:
    """The engine's ``compute_loss(step, micro, generator)``: this rank's share of ``batch_size`` random
    corpus images (each flipped/rotated at random), up to ``objects_per_image`` objects each, through the
    recipe of the step's phase (boxes only, then the reduced rounds, then SAM's full recipe)."""
    reduced = InteractiveRecipe(correction_rounds=config.correction_rounds, mask_only_rounds=config.mask_only_rounds,
                                point_first_probability=config.point_first_probability)
    full = InteractiveRecipe()
    box_only = InteractiveRecipe(correction_rounds=0, mask_only_rounds=0, point_first_probability=0.0)
    box_until = int(config.engine.steps * config.box_warmup_fraction)
    full_from = int(config.engine.steps * (1 - config.full_recipe_fraction))
    parameters = list(sam.parameters())
    count = len(ranks.shard(range(config.engine.batch_size)))
    share = count / config.engine.batch_size / config.engine.grad_accum  # of the step's mean (loss and statistics)

    def compute_loss(step: int, micro: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        recipe = full if step >= full_from else box_only if step < box_until else reduced
        rounds = 1 + recipe.correction_rounds + recipe.mask_only_rounds
        if count == 0:  # more ranks than images
            return parameters[0].sum() * 0, {"rounds": 0.0, "iou_last": 0.0}
        picks = torch.randint(0, len(images), (count,), generator=generator).tolist()
        codes = torch.randint(0, 8, (count,), generator=generator).tolist()
        batch, targets = [], []
        for index, code in zip(picks, codes, strict=True):
            image, inst = _augment(images[index], instances[index], code)
            ids = np.unique(inst)
            ids = ids[ids > 0]
            order = torch.randperm(len(ids), generator=generator)[: config.objects_per_image].numpy()
            chosen = torch.as_tensor(ids[np.sort(order)].astype(np.int64))
            batch.append(image)
            targets.append(torch.as_tensor(inst.astype(np.int64))[None] == chosen[:, None, None])

        def backpropagating_loss() -> tuple[torch.Tensor, dict[str, float]]:
            embeddings = sam.image_encoder(to_model_input(np.stack(batch), spec).to(device))
            # back-propagated round by round: the memory of one decoder round, not of all (interactive_loss)
            return interactive_loss(sam, embeddings, targets, recipe, generator, backward=True)

        loss, stats = engine_loss(parameters, backpropagating_loss, scale=count / config.engine.batch_size)
        stats = {**stats, "rounds": rounds}
        if ranks.world > 1:
            stats = {key: stats.get(key, 0.0) for key in ("rounds", "iou_last")}
        return loss, {key: value * share for key, value in stats.items()}

    return compute_loss


def _run(run_dir: Path, config: PretrainConfig, on_step: Callable[[dict], None]) -> Path:
    """The run of :func:`pretrain` (settings checked and saved)."""
    spec = REGISTRY[config.model]
    ranks, device_name = setup(config.device)
    device = resolve_device(device_name)
    images, instances = _load_corpus(run_dir, config.corpus_images, config.corpus_seed, spec.image_size,
                                     write=ranks.is_main)
    eval_images, eval_instances = _load_corpus(run_dir, config.eval_images, config.eval_seed, spec.image_size,
                                               write=ranks.is_main)
    sam, lineage = _build(config, spec, device)
    named = dict(sam.named_parameters())
    error = None
    if ranks.is_main:
        try:
            _legacy_state_to_engine(run_dir, named)
        except Exception as err:  # every rank stops, not only this one
            error = err
    ranks.raise_together(error)

    latest: dict[str, float] = {}  # the figures of the latest validation

    def validate() -> dict[str, float]:
        latest.clear()
        latest.update(evaluate_on_shapes(sam, spec, eval_images, eval_instances, seed=config.eval_seed))
        return {"score": validation_score(latest), **latest}

    def info(step: int, figures: dict[str, float], wall_s: float | None = None) -> dict:
        defaults = dotted_settings(config_to_dict(PretrainConfig()))
        command = " ".join(["samadapt", "pretrain", str(run_dir)] + [
            f"--set {k}={v}" for k, v in dotted_settings(config_to_dict(config)).items() if v != defaults.get(k)])
        training = {"command": command, "config": config_to_dict(config), "steps": step,
                    "total_steps": step + lineage.get("total_steps", 0),
                    "corpus_seed": config.corpus_seed, "eval_seed": config.eval_seed,
                    "python": sys.version.split()[0], "torch": torch.__version__}
        if wall_s is not None:
            training["wall_s"] = round(wall_s, 1)
        if lineage:
            training["initialised_from"] = lineage
        return {
            "description": "samadapt-tiny: small SAM pretrained from scratch on a synthetic shape corpus",
            "preprocessing": {"image_size": spec.image_size, "pixel_mean": list(spec.pixel_mean),
                              "pixel_std": list(spec.pixel_std), "input": "uint8 RGB or grey replicated"},
            "training": training,
            "metrics": {f"heldout_{k}": v for k, v in figures.items()},
        }

    best_path, model_path = run_dir / "best.pth", run_dir / "model.pth"

    def save_best(step: int, score: float) -> None:
        save_sam(sam, spec, best_path, info(step, latest))

    result = run_training(run_dir, named, config.engine,
                          _batch_loss(config, ranks, images, instances, sam, spec, device), device,
                          validate=validate, save_best=save_best, on_step=on_step)
    if not ranks.is_main or not (result.steps_run or not model_path.is_file()):  # a finished run's model stays
        return model_path
    final = dict(latest) if result.steps_run else evaluate_on_shapes(  # the last step was validated
        sam, spec, eval_images, eval_instances, seed=config.eval_seed)
    use_best = config.select_model == "best" and best_path.is_file()
    selection = {"rule": config.select_model, "step": result.best_step if use_best else result.steps,
                 "val_score": result.best_score if use_best else validation_score(final),
                 "last_step": result.steps, "stopped_early": result.stopped_early}
    last = info(result.steps, final, result.wall_s)
    if use_best:
        save_sam(sam, spec, run_dir / "last.pth", last)
        return promote_best(best_path, model_path, result.wall_s, selection, spec)
    return save_sam(sam, spec, model_path, {**last, "selection": selection})
