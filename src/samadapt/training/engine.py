"""The training engine every adaptation method runs on: optimiser, schedule, checkpoints, logging.

A method supplies the trainable parameters and ``compute_loss(step, micro, generator)``, which builds its
own micro-batch (a function of ``step`` and ``micro``, plus at most the state of a :class:`Schedule`, which
is checkpointed) and draws every random choice (prompt noise, object subsets) from ``generator``. The
engine owns the rest:

- AdamW; linear warm-up, then cosine decay over the step count or over a :class:`Schedule`'s progress;
  ``grad_accum`` micro-batches per step; gradient clipping; autocast on CUDA when ``amp`` (bf16 where
  supported, else fp16 with a ``GradScaler``), never on CPU, where bf16 is slower than fp32.
- ``<run>/state.pt`` every ``checkpoint_every`` steps, after any step that ends ``checkpoint_seconds``
  or more after the last checkpoint (slow machines lose at most that much work), and at the end,
  atomically: trainable weights, optimiser, schedule state, scaler, prompt generator, step, best
  validation score. A killed run restarted on the same folder continues from there and ends with the
  same weights as an uninterrupted one (a checkpoint holds the whole state at a step boundary, so where
  it falls does not change the result).
- ``validate()`` every ``eval_every`` steps and at the end; the best score triggers ``save_best``. It
  returns the score, or a mapping of figures whose ``score`` entry is the score (the others are recorded
  beside it as ``val_<name>``: a method that measures several things, e.g. box and click IoU).
  Early stopping: with ``patience`` > 0 the run ends after ``patience`` validations in a row without a
  gain (a score above the last gain by more than ``min_delta``), validations within the warm-up not
  counted; the best step is kept either way. What stops it is a function of the checkpointed curve, so a
  resumed run stops alike.
- ``<run>/metrics.jsonl`` (one record per step, validation records carry ``val_*`` keys) and TensorBoard
  events under ``<run>/tensorboard``.
- Under ``torchrun`` (:mod:`samadapt.runtime`): gradients and step statistics are summed over
  the ranks, validation runs on rank 0, and rank 0 alone writes; ``compute_loss`` takes its rank's shard
  and divides by the global batch.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from samadapt.errors import CheckpointError, ConfigError
from samadapt.io.atomic import atomic_path, remove_stale_temporaries
from samadapt.runtime import current
from samadapt.settings import check_flags, check_integers, check_numbers, setting_error

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class EngineSettings:
    """The ``engine`` settings group of every training command (``--set engine.lr=1e-4``): the step, the
    optimiser and the bookkeeping. Defaults are ``samadapt train``'s; a command may declare its own
    (``PromiseConfig``).

    - ``steps``: optimiser steps (a pruned run: its length in full-data epochs, see ``pruning``);
      ``batch_size`` slices per micro-batch (the method's), ``grad_accum`` micro-batches per step.
    - AdamW at ``lr`` (0: no update) with ``weight_decay``; linear warm-up over ``warmup_steps``, then cosine to
      ``min_lr_fraction`` x ``lr``; gradients clipped at ``grad_clip`` (0: off); bf16/fp16 autocast on CUDA
      when ``amp`` (never on CPU). ``seed`` drives the data order, the prompt draws and new weights.
    - Checkpoints every ``checkpoint_every`` steps and once ``checkpoint_seconds`` have passed since the last
      (0: by steps only); validation every ``eval_every`` steps; with ``patience`` > 0 the run stops once
      that many validations in a row after the warm-up gained no more than ``min_delta`` (0: never).
    """

    steps: int = 300
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    amp: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    checkpoint_seconds: float = 60.0  # also checkpoint once this long has passed since the last one (0: off)
    eval_every: int = 50
    patience: int = 0  # stop after this many validations in a row without a better score (0: never)
    min_delta: float = 0.0  # what "better" means for patience: above the last gain by more than this

    def __post_init__(self) -> None:
        bad = setting_error("engine")
        check_integers(self, ("steps", "batch_size", "grad_accum", "checkpoint_every", "eval_every"), 1, bad)
        check_integers(self, ("warmup_steps", "seed", "patience"), 0, bad)
        # lr 0 is a valid engine run (a pretraining phase that only evaluates); train and adapt refuse it
        # (RunConfig.check_run_settings), where it could only waste the run
        check_numbers(self, ("lr", "weight_decay", "grad_clip", "checkpoint_seconds", "min_delta"), bad)
        check_numbers(self, ("min_lr_fraction",), bad, fraction=True)
        check_flags(self, ("amp",), bad)

    @property
    def slices_per_step(self) -> int:
        """``batch_size x grad_accum``."""
        return self.batch_size * self.grad_accum


@dataclass
class TrainingResult:
    """What a finished run reports: steps done, best validation score and step, the validation curve, and
    how many of the steps this call ran (0 when the folder held a finished run). ``wall_s`` counts the
    training time of every call up to the last checkpoint, plus this call's. ``stopped_early``: the run
    ended by ``patience`` before its planned length."""

    steps: int
    best_score: float
    best_step: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    steps_run: int = 0
    stopped_early: bool = False


class Schedule(Protocol):
    """How long a run lasts when that is not a fixed step count (data pruning: epochs of varying length).

    ``progress(step)``: fraction of the run done after ``step`` steps, in [0, 1] (drives the cosine);
    ``finished(step)``: whether the run ends there. Its ``state_dict`` is saved with the checkpoints.
    """

    def progress(self, step: int) -> float: ...
    def finished(self, step: int) -> bool: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def validations_without_gain(curve: list[tuple[int, float]], min_delta: float = 0.0, after: int = 0) -> int:
    """How many validations of ``curve`` (``(step, score)`` in step order) came after the last gain, a score
    above every earlier gain by more than ``min_delta``, not counting those at steps <= ``after`` (the
    warm-up: scores there say little about where the run is going). NaN scores are never a gain."""
    reference, last_gain = -math.inf, 0
    for at, score in curve:
        if score > reference + min_delta:  # -inf + min_delta is -inf: the first real score is a gain
            reference, last_gain = score, at
    return sum(1 for at, _ in curve if at > max(last_gain, after))


def lr_factor(settings: EngineSettings, step: int, progress: float | None = None) -> float:
    """Multiplier of ``lr`` at ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine to
    ``min_lr_fraction`` over the rest of the run (``progress`` in [0, 1]; by default from the step count)."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if progress is None:
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.min_lr_fraction
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


_STATE_KEYS = ("parameters", "optimizer", "generators", "step", "best_score", "best_step", "curve", "train_s")


def load_state(path: Path, required: tuple[str, ...] = _STATE_KEYS) -> dict:
    """Read the checkpoint ``path`` (``weights_only``, on the CPU); :class:`CheckpointError` when it is
    truncated or corrupt (one line, no torch warning): there is no earlier checkpoint to fall back on.
    ``required``: the entries it must hold (by default the engine's; ``()`` to inspect another layout)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
        what = None if isinstance(state, dict) and all(key in state for key in required) else "entries missing"
    except Exception as err:  # torch raises several types for a cut or damaged file
        what = type(err).__name__
    if what is not None:
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupt ({what}) and there is no earlier one; start the run "
            "again without --resume into a new folder"
        )
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of ``path`` after ``step`` (written after the last checkpoint of a killed run)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):  # a line cut short by the interruption
            continue
    with atomic_path(path, suffix=".jsonl") as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def _autocast(device: torch.device, amp: bool) -> tuple[Callable[[], object], torch.amp.GradScaler | None]:
    """(context factory, scaler or None): autocast on CUDA only; fp16 needs a scaler, bf16 does not."""
    if not amp or device.type != "cuda":
        return nullcontext, None
    if torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16), None
    return lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _tensorboard(run_dir: Path, purge_step: int):
    """A TensorBoard writer whose events after ``purge_step`` (a resumed run's repeated steps) are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step or None)


def run_training(
    run_dir: Path,
    named_parameters: dict[str, torch.nn.Parameter],
    settings: EngineSettings,
    compute_loss: Callable[[int, int, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    device: torch.device,
    validate: Callable[[], float | Mapping[str, float]] | None = None,
    save_best: Callable[[int, float], None] | None = None,
    on_step: Callable[[dict], None] = lambda record: None,
    schedule: Schedule | None = None,
) -> TrainingResult:
    """Train ``named_parameters`` for ``settings.steps`` steps into ``run_dir`` (resuming if it has a state).

    Args:
        named_parameters: the trainable parameters by name (their values are what ``state.pt`` keeps).
        compute_loss: ``(step, micro, generator) -> (scalar loss, statistics)`` for micro-batch ``micro``
            of ``step``; the loss of each micro-batch is divided by ``grad_accum`` here, the statistics
            are summed over the micro-batches of a step.
        validate: returns the validation score (higher is better), or figures with the score as ``score``
            (the others recorded as ``val_<name>``); called on rank 0, under no_grad (and autocast).
        save_best: ``(step, score)`` called when a validation score beats every earlier one.
        on_step: receives each step's record (``step``, ``loss``, ``lr``, ``step_s``, statistics, ``val_score``);
            on rank 0 only.
        schedule: when the run's length is not ``settings.steps`` (see :class:`Schedule`); ``settings.steps``
            then only caps it. Its state is checkpointed and restored with the rest.
    """
    ranks = current()
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)  # of atomic writes a killed run left (e.g. a 0-byte .state.pt.*.tmp.pt)
    parameters = list(named_parameters.values())
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)

    def progress(at: int) -> float | None:
        return schedule.progress(at) if schedule is not None else None

    def planned_end(at: int) -> bool:
        return at >= settings.steps or (schedule is not None and schedule.finished(at))

    def early_stop() -> bool:
        stale = validations_without_gain(curve, settings.min_delta, settings.warmup_steps)
        return settings.patience > 0 and stale >= settings.patience

    def finished(at: int) -> bool:
        return planned_end(at) or early_stop()

    autocast, scaler = _autocast(device, settings.amp)
    generator = torch.Generator().manual_seed(settings.seed + ranks.rank)  # each rank its own prompt draws
    step, best_score, best_step, curve, earlier_s = 0, -math.inf, 0, [], 0.0
    state_path, metrics_path = run_dir / STATE_FILE, run_dir / METRICS_FILE
    if state_path.is_file():
        state = load_state(state_path)
        if len(state["generators"]) != ranks.world:  # each rank continues its own prompt-noise stream
            raise ConfigError(f"{state_path}: the run was checkpointed with {len(state['generators'])} process(es); "
                              f"resume it with as many (torchrun --nproc_per_node ...), not {ranks.world}")
        with torch.no_grad():
            for name, param in named_parameters.items():
                param.copy_(state["parameters"][name])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generators"][ranks.rank])
        step, best_score, best_step = int(state["step"]), float(state["best_score"]), int(state["best_step"])
        curve = [(int(s), float(v)) for s, v in state["curve"].tolist()]
        earlier_s = float(state["train_s"])
        if ranks.is_main:
            truncate_metrics(metrics_path, step)
    last_checkpoint = time.monotonic()

    def checkpoint() -> None:
        generators = ranks.gather(generator.get_state())
        if not ranks.is_main:
            return
        state = {"parameters": {n: p.detach().cpu() for n, p in named_parameters.items()},
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict() if schedule else {},
                 "generators": generators, "step": step, "best_score": best_score,
                 "best_step": best_step, "curve": torch.tensor(curve, dtype=torch.float64).reshape(-1, 2),
                 "train_s": earlier_s + time.time() - started}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        with atomic_path(state_path, suffix=".pt") as tmp:
            torch.save(state, tmp)

    def checkpoint_due() -> bool:
        """Whether this step ends with a checkpoint (rank 0's clock decides for every rank)."""
        if step % settings.checkpoint_every == 0 or finished(step):
            return True
        if settings.checkpoint_seconds <= 0:
            return False
        late = ranks.is_main and time.monotonic() - last_checkpoint >= settings.checkpoint_seconds
        return bool(ranks.broadcast(late))

    def run_validation() -> tuple[float, dict[str, float]]:
        """(score, the other figures as ``val_<name>``: rank 0's, empty on the others)."""
        score, figures = None, {}
        if ranks.is_main:
            with torch.no_grad(), autocast():
                result = validate()
            figures = dict(result) if isinstance(result, Mapping) else {"score": result}
            score = float(figures.pop("score"))
        return float(ranks.broadcast(score)), {f"val_{name}": value for name, value in figures.items()}

    writer = _tensorboard(run_dir, step) if ranks.is_main else None
    started, first_step = time.time(), step
    try:
        while not finished(step):
            t0 = time.perf_counter()
            lr = settings.lr * lr_factor(settings, step, progress(step))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            losses, totals = [], {}
            for micro in range(settings.grad_accum):
                with autocast():
                    loss, stats = compute_loss(step, micro, generator)
                scaled = loss / settings.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                losses.append(float(loss.detach()))
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
            ranks.sum_gradients(parameters)
            totals = ranks.sum({**totals, "loss": sum(losses) / len(losses)})
            step_loss = totals.pop("loss")
            if scaler is not None:
                scaler.unscale_(optimizer)
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            record = {"step": step, "loss": step_loss, "lr": lr,
                      "step_s": round(time.perf_counter() - t0, 4), **totals}
            if validate is not None and (step % settings.eval_every == 0 or finished(step)):
                score, figures = run_validation()
                record.update({"val_score": score, **figures})
                curve.append((step, score))
                if score > best_score:
                    best_score, best_step = score, step
                    if save_best is not None and ranks.is_main:
                        save_best(step, score)
            if ranks.is_main:
                with open(metrics_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, step)
                on_step(record)
            if checkpoint_due():
                checkpoint()
                last_checkpoint = time.monotonic()
    finally:
        if writer is not None:
            writer.close()
    wall_s = earlier_s + time.time() - started if step > first_step else earlier_s
    return TrainingResult(step, best_score, best_step, curve, wall_s, step - first_step,
                          stopped_early=early_stop() and not planned_end(step))
