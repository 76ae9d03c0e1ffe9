"""The training engine: schedule, accumulation, exact resume, best checkpoint, metrics and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samadapt.training.engine import (
    EngineSettings,
    TrainingResult,
    lr_factor,
    run_training,
    validations_without_gain,
)

CPU = torch.device("cpu")


class KilledError(RuntimeError):
    pass


def _problem(seed: int = 0):
    """A small regression: a linear layer fits y = x W* on batches that depend on the step only."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(6, 3)
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(42))

    def batch(step: int, micro: int, size: int = 8) -> torch.Tensor:
        return torch.randn(size, 6, generator=torch.Generator().manual_seed(1000 * step + micro))

    def compute_loss(step, micro, generator):
        x = batch(step, micro)
        noise = 0.01 * torch.randn(x.shape[0], 3, generator=generator)  # exercises the saved generator
        loss = ((model(x) - x @ target - noise) ** 2).mean()
        return loss, {"samples": float(x.shape[0])}

    return model, dict(model.named_parameters()), compute_loss


def _settings(**kw) -> EngineSettings:
    base = dict(steps=12, lr=0.05, warmup_steps=3, checkpoint_every=4, eval_every=4)
    return EngineSettings(**{**base, **kw})


def test_lr_warms_up_then_decays_to_the_floor():
    s = _settings(steps=100, warmup_steps=10, min_lr_fraction=0.1)
    assert lr_factor(s, 0) == pytest.approx(0.1)
    assert lr_factor(s, 9) == pytest.approx(1.0)
    assert lr_factor(s, 55) < lr_factor(s, 20) < 1.0
    assert lr_factor(s, 100) == pytest.approx(0.1)


def test_training_lowers_the_loss_and_logs_every_step(tmp_path: Path):
    model, named, compute_loss = _problem()
    records = []
    result = run_training(tmp_path, named, _settings(steps=30), compute_loss, CPU, on_step=records.append)
    assert isinstance(result, TrainingResult) and result.steps == 30
    assert records[-1]["loss"] < 0.3 * records[0]["loss"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 31))
    assert lines[0]["samples"] == 8.0 and lines[0]["lr"] == pytest.approx(0.05 / 3)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_killed_and_resumed_run_ends_with_the_same_weights(tmp_path: Path):
    model, named, compute_loss = _problem()
    run_training(tmp_path / "straight", named, _settings(), compute_loss, CPU)
    straight = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model, named, compute_loss = _problem()

    def kill_at_7(record):
        if record["step"] == 7:  # after the step-4 checkpoint: steps 5-7 are lost and redone
            raise KilledError

    with pytest.raises(KilledError):
        run_training(tmp_path / "killed", named, _settings(), compute_loss, CPU, on_step=kill_at_7)
    model, named, compute_loss = _problem(seed=5)  # a fresh process: other initial weights
    result = run_training(tmp_path / "killed", named, _settings(), compute_loss, CPU)
    assert result.steps == 12
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight[key]), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the lost steps' records were replaced, not duplicated


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path):
    """Two micro-batches of 8 accumulate to the gradient of their mean: the same update as one batch of 16."""
    model_a, named_a, _ = _problem()
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(9))
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))

    def whole(step, micro, generator):
        return ((model_a(x) - x @ target) ** 2).mean(), {}

    run_training(tmp_path / "a", named_a, _settings(steps=3, grad_clip=0.0), whole, CPU)
    model_b, named_b, _ = _problem()

    def halves(step, micro, generator):
        part = x[8 * micro : 8 * micro + 8]
        return ((model_b(part) - part @ target) ** 2).mean(), {}

    run_training(tmp_path / "b", named_b, _settings(steps=3, grad_accum=2, grad_clip=0.0), halves, CPU)
    for (key, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_validation_keeps_the_best_step(tmp_path: Path):
    model, named, compute_loss = _problem()
    scores = iter([0.2, 0.7, 0.5])
    saved = []
    result = run_training(tmp_path, named, _settings(), compute_loss, CPU, validate=lambda: next(scores),
                          save_best=lambda step, score: saved.append((step, score)))
    assert saved == [(4, 0.2), (8, 0.7)]
    assert (result.best_step, result.best_score) == (8, 0.7)
    assert result.curve == [(4, 0.2), (8, 0.7), (12, 0.5)]


def test_validation_figures_beside_the_score_are_recorded(tmp_path: Path):
    """A method that measures several things returns them with the score (pretraining: box and click IoU)."""
    model, named, compute_loss = _problem()
    figures = iter([{"score": 0.2, "box_iou": 0.3, "objects": 5}, {"score": 0.6, "box_iou": 0.1, "objects": 5},
                    {"score": 0.4, "box_iou": 0.9, "objects": 5}])
    saved = []
    result = run_training(tmp_path, named, _settings(), compute_loss, CPU, validate=lambda: next(figures),
                          save_best=lambda step, score: saved.append((step, score)))
    assert result.curve == [(4, 0.2), (8, 0.6), (12, 0.4)] and saved == [(4, 0.2), (8, 0.6)]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validated = [{k: v for k, v in r.items() if k.startswith("val_")} for r in records if "val_score" in r]
    assert validated == [{"val_score": 0.2, "val_box_iou": 0.3, "val_objects": 5},
                         {"val_score": 0.6, "val_box_iou": 0.1, "val_objects": 5},
                         {"val_score": 0.4, "val_box_iou": 0.9, "val_objects": 5}]


def test_patience_stops_the_run_after_validations_without_a_better_score(tmp_path: Path):
    """Scores peak at the 2nd validation (step 4); with patience 2 the 3rd and 4th validations bring nothing
    better, so the run stops at step 8 of 20; the same folder resumed stays stopped."""
    scores = [0.5, 0.8, 0.7, 0.6, 0.9, 0.95, 0.99, 0.99, 0.99, 0.99]
    settings = _settings(steps=20, eval_every=2, checkpoint_every=100, patience=2)
    model, named, compute_loss = _problem()
    feed = iter(scores)
    result = run_training(tmp_path, named, settings, compute_loss, CPU, validate=lambda: next(feed))
    assert (result.steps, result.best_step, result.best_score, result.stopped_early) == (8, 4, 0.8, True)
    assert result.curve == [(2, 0.5), (4, 0.8), (6, 0.7), (8, 0.6)]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 8
    again = run_training(tmp_path, named, settings, compute_loss, CPU, validate=lambda: next(feed))
    assert (again.steps, again.steps_run, again.stopped_early) == (8, 0, True)

    model, named, compute_loss = _problem()  # the same scores without patience: all 20 steps
    feed = iter(scores)
    full = run_training(tmp_path / "full", named, _settings(steps=20, eval_every=2), compute_loss, CPU,
                        validate=lambda: next(feed))
    assert (full.steps, full.best_step, full.stopped_early) == (20, 14, False)  # 0.99 first at step 14


def test_patience_ignores_the_warm_up_and_gains_below_min_delta():
    curve = [(2, 0.9), (4, 0.1), (6, 0.1), (8, 0.1)]
    assert validations_without_gain(curve) == 3
    assert validations_without_gain(curve, after=5) == 2  # steps 2 and 4 are in a 5-step warm-up
    creeping = [(10, 0.80), (20, 0.805), (30, 0.81), (40, 0.83)]
    assert validations_without_gain(creeping) == 0
    assert validations_without_gain(creeping, min_delta=0.04) == 3  # none is 0.04 above 0.80
    assert validations_without_gain(creeping, min_delta=0.025) == 0  # 0.83 > 0.80 + 0.025: a gain at step 40
    assert validations_without_gain([(5, float("nan")), (10, float("nan"))]) == 2


def test_a_run_that_ends_on_its_last_step_did_not_stop_early(tmp_path: Path):
    model, named, compute_loss = _problem()
    feed = iter([0.9, 0.1, 0.1])
    result = run_training(tmp_path, named, _settings(patience=2), compute_loss, CPU, validate=lambda: next(feed))
    assert (result.steps, result.best_step, result.stopped_early) == (12, 4, False)


def test_autocast_is_for_cuda_only_and_settings_come_from_a_method_config():
    from samadapt.config import FinetuneConfig
    from samadapt.training.engine import _autocast

    factory, scaler = _autocast(CPU, amp=True)
    with factory():
        assert not torch.is_autocast_enabled("cpu")
    assert scaler is None
    from samadapt.config import load_config, parse_overrides

    config = load_config(FinetuneConfig, None, parse_overrides(["engine.steps=7", "engine.lr=1e-3",
                                                                "engine.grad_accum=2"]))
    settings = config.engine  # the group is the engine's settings object, passed as it is
    assert isinstance(settings, EngineSettings)
    assert (settings.steps, settings.lr, settings.grad_accum, settings.amp) == (7, 1e-3, 2, True)


class _Clock:
    """Stands in for the engine's ``time`` module: real wall time, a monotonic clock the test advances."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        import time

        return time.time()

    def perf_counter(self) -> float:
        import time

        return time.perf_counter()


def test_slow_steps_are_checkpointed_on_time_and_resume_exactly(tmp_path: Path, monkeypatch):
    """25 s per step, checkpoint_every far away, checkpoint_seconds=60: a checkpoint after steps 3, 6, 9."""
    import samadapt.training.engine as engine

    clock = _Clock()
    monkeypatch.setattr(engine, "time", clock)
    settings = _settings(checkpoint_every=1000, checkpoint_seconds=60.0)
    model, named, compute_loss = _problem()
    run_training(tmp_path / "straight", named, settings, compute_loss, CPU)
    straight = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model, named, compute_loss = _problem()
    saved_steps = []

    def slow_loss(step, micro, generator):
        clock.now += 25.0
        return compute_loss(step, micro, generator)

    def kill_at_8(record):
        state = tmp_path / "killed" / "state.pt"
        if state.is_file():
            saved_steps.append(torch.load(state, weights_only=True)["step"])
        if record["step"] == 8:
            raise KilledError

    with pytest.raises(KilledError):
        run_training(tmp_path / "killed", named, settings, slow_loss, CPU, on_step=kill_at_8)
    assert sorted(set(saved_steps)) == [3, 6]  # by time; by steps alone nothing before the end
    model, named, compute_loss = _problem(seed=5)
    result = run_training(tmp_path / "killed", named, settings, compute_loss, CPU)
    assert result.steps == 12 and result.steps_run == 6
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight[key]), key

    from samadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="engine setting checkpoint_seconds=-1"):
        EngineSettings(checkpoint_seconds=-1)
    assert EngineSettings(checkpoint_seconds=5).checkpoint_seconds == 5
