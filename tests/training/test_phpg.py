"""The PHPG objective on a real (micro) SAM: one pass per round for all regions, SAM's recipe, CBDP, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import FinetuneConfig, make_config, merge_settings
from samadapt.models.decoder import SamDecoder
from samadapt.models.error_head import load_error_head
from samadapt.models.sam import load_sam, read_state_dict
from samadapt.prompts.behaviour_mixture import first_mixture
from samadapt.prompts.click_behaviours import CentreClick
from samadapt.training.finetune import finetune, prepare_run_folder
from samadapt.training.losses import bce_loss, dice_loss, iou_head_loss
from samadapt.training.phpg import PHPGObjective, PHPGSettings, phpg_objective_from_config
from samadapt.training.slice_data import SliceSample


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return load_sam("test_micro").sam


def _sample(n: int = 5) -> SliceSample:
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    for i in range(n):
        masks[i, 4 + 12 * i : 14 + 12 * i, 5 + 3 * i : 24 + 6 * i] = True
    embedding = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(1))
    return SliceSample(embedding, masks, [f"c{i}" for i in range(n)], torch.zeros(n, dtype=torch.bool))


def _objective(phpg: dict | None = None, **kw) -> PHPGObjective:
    """The objective of a run with the ``phpg`` group ``phpg`` (as in a config file); ``kw`` replace its fields."""
    config = FinetuneConfig(objective="phpg", phpg=PHPGSettings(**(phpg or {})))
    objective = phpg_objective_from_config(config, embed_dim=32)
    return replace(objective, **kw)


def test_the_error_head_is_off_by_default_and_built_when_asked():
    assert FinetuneConfig().phpg.error_head is False
    assert _objective().error_head is None
    assert _objective({"error_head": True}).error_head.embed_dim == 32


def _count_passes(sam, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = sam.mask_decoder.predict_masks

    def counting(**kwargs):
        out = original(**kwargs)
        calls.append(out[0].shape[0])
        return out

    monkeypatch.setattr(sam.mask_decoder, "predict_masks", counting)
    return calls


def test_all_regions_share_one_pass_per_round_and_both_learners_get_gradients(sam, monkeypatch):
    calls = _count_passes(sam, monkeypatch)
    objective = _objective({"correction_rounds": 3, "mask_only_rounds": 2, "error_head": True})
    losses, chosen, stats = objective.slice_losses(sam, _sample(5), torch.Generator().manual_seed(0))
    assert calls == [5] * 6  # first round + 3 corrections + 2 mask-only rounds, all five regions each time
    assert losses.shape == (5,) and chosen.tolist() == [0, 1, 2, 3, 4]
    assert stats["prompts"] == 5 and stats["rounds"] == 6 and 0 <= stats["train_iou"] <= 1 and stats["error_bce"] > 0
    sam.zero_grad()
    objective.reduce(losses).backward()
    assert sam.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    assert objective.error_head.body[0].weight.grad.abs().sum() > 0


def test_one_region_per_pass_is_the_same_work_split_into_passes(sam, monkeypatch):
    calls = _count_passes(sam, monkeypatch)
    objective = _objective({"correction_rounds": 1, "mask_only_rounds": 1, "error_head": True}, regions_per_pass=1)
    losses, _, stats = objective.slice_losses(sam, _sample(4), torch.Generator().manual_seed(0))
    assert calls == [1] * 12 and losses.shape == (4,) and stats["prompts"] == 4


def test_the_generator_decides_every_prompt(sam):
    objective = _objective({"error_head": False})
    a = objective.slice_losses(sam, _sample(), torch.Generator().manual_seed(3))[0]
    torch.manual_seed(123)
    b = objective.slice_losses(sam, _sample(), torch.Generator().manual_seed(3))[0]
    c = objective.slice_losses(sam, _sample(), torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_single_click_takes_the_best_of_sams_three_outputs(sam):
    sample = _sample(3)
    objective = PHPGObjective(first=first_mixture({"click_centre": 1}), correction_rounds=0, mask_only_rounds=0,
                              loss_size=64)
    losses, _, _ = objective.slice_losses(sam, sample, torch.Generator())
    prompts = CentreClick()(sample.masks, torch.Generator())
    with torch.no_grad():
        low, iou = SamDecoder(sam).all_outputs(sample.embedding, prompts)
        logits = F.interpolate(low, (64, 64), mode="bilinear", align_corners=False)
        target = sample.masks[:, None].float().expand_as(logits)
        per_output = dice_loss(logits, target) + bce_loss(logits, target) + iou_head_loss(iou, logits, target > 0.5)
    torch.testing.assert_close(losses.detach(), per_output[:, 1:].min(dim=1).values)



def test_a_round_scores_only_the_outputs_each_region_uses():
    """Single-mask output for well-specified prompts, the best of 1..3 for ambiguous ones: the same losses as
    scoring all four outputs of every region and choosing afterwards."""
    g = torch.Generator().manual_seed(0)
    low_res, iou = torch.randn(5, 4, 16, 16, generator=g), torch.rand(5, 4, generator=g)
    masks = _sample(5).masks
    objective = PHPGObjective(loss_size=32)
    everything = objective._mask_loss(low_res, iou, masks)
    for ambiguous in ([False] * 5, [True] * 5, [True, False, False, True, False]):
        ambiguous = torch.tensor(ambiguous)
        expected = torch.where(ambiguous, everything[:, 1:].min(dim=1).values, everything[:, 0])
        torch.testing.assert_close(objective._round_loss(low_res, iou, masks, ambiguous), expected)


def test_recomputing_the_passes_gives_the_same_losses_and_gradients(sam):
    """Activation checkpointing trades memory for one more forward; the training signal is unchanged."""
    results = []
    for recompute in (False, True):
        phpg = {"correction_rounds": 2, "mask_only_rounds": 1, "error_head": True}
        objective = _objective(phpg, recompute_passes=recompute)
        sam.zero_grad()
        losses, _, _ = objective.slice_losses(sam, _sample(4), torch.Generator().manual_seed(5))
        objective.reduce(losses).backward()
        grads = [p.grad.clone() for p in [*sam.mask_decoder.parameters(), *objective.error_head.parameters()]
                 if p.grad is not None]
        results.append((losses.detach(), grads))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b)
    assert len(grads_a) == len(grads_b) > 0
    for x, y in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(x, y)

def _config(prepared, base, **kw) -> FinetuneConfig:
    """A short PHPG run's settings; ``kw`` as in a config file (groups as dicts)."""
    values = dict(data=str(prepared.root), model=str(base), objective="phpg", phpg=dict(correction_rounds=1),
                  engine=dict(steps=6, batch_size=2, checkpoint_every=2, eval_every=3, warmup_steps=2, lr=1e-3))
    return make_config(FinetuneConfig, merge_settings(values, kw, FinetuneConfig))


def _run(run_dir: Path, config: FinetuneConfig, **kw):
    prepare_run_folder(run_dir, config, resume=False)
    return finetune(run_dir, config, **kw)


def test_phpg_training_learns_and_saves_a_plain_sam_with_its_error_head(micro_prepared, base, run_dir):
    records = []
    result = _run(run_dir, _config(micro_prepared, base, engine={"steps": 30, "lr": 3e-3, "eval_every": 30},
                                   phpg={"error_head": True}), on_step=records.append)
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.85 * first
    before, after = read_state_dict(base), read_state_dict(result.model)
    assert {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])} == {"mask_decoder"}
    assert load_sam(str(result.model)).spec.image_size == 64  # model.pth: a plain SAM state dict
    head = load_error_head(run_dir / "error_head.pth")
    sidecar = json.loads((run_dir / "error_head.json").read_text())
    # the head is trained with the decoder of the last step: it names last.pth (model.pth is the selected step)
    assert sidecar["model"] == "last.pth" and sidecar["training"]["config"]["objective"] == "phpg"
    assert head.embed_dim == 32
    assert "PHPG" in json.loads(result.model.with_suffix(".json").read_text())["description"]


def test_phpg_with_class_pruning_runs_fewer_steps_and_resumes_exactly(micro_prepared, base, tmp_path):
    config = _config(micro_prepared, base, pruning={"policy": "class", "min_class_share": 0.0},
                     engine={"steps": 24, "batch_size": 4, "eval_every": 50, "checkpoint_every": 3},
                     phpg={"correction_rounds": 1, "mask_only_rounds": 0, "error_head": True})
    straight = _run(tmp_path / "straight", config)
    log = json.loads((tmp_path / "straight" / "pruning.json").read_text())
    assert log["finished"] and log["iterations"] == straight.steps < log["iterations_full_data"]

    class KilledError(RuntimeError):
        pass

    def kill(record):
        if record["step"] == 7:
            raise KilledError

    with pytest.raises(KilledError):
        _run(tmp_path / "killed", config, on_step=kill)
    resumed = finetune(tmp_path / "killed", prepare_run_folder(tmp_path / "killed", config, resume=True))
    assert resumed.steps == straight.steps
    a, b = read_state_dict(straight.model), read_state_dict(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    heads = [torch.load(p / "error_head.pth", weights_only=True) for p in (tmp_path / "straight", tmp_path / "killed")]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


@pytest.mark.parametrize("setting, expected", [
    ("objective=phgp", "objective"),
    ("phpg.first_weights={box_tigth: 1}", "known: box_tight"),
    ("phpg.guidance_mix=2", "phpg setting guidance_mix=2"),
    ("phpg.recompute_passes=sometimes", "phpg setting recompute_passes='sometimes'"),
    ("phpg_correction_rounds=8", "phpg_correction_rounds is now phpg.correction_rounds"),
])
def test_cli_bad_phpg_settings_exit_2_with_one_line(micro_prepared, tmp_path, setting, expected):
    result = CliRunner().invoke(app, ["train", str(micro_prepared.root), "--out", str(tmp_path / "r"),
                                      "--set", setting])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("samadapt: error:") and expected in lines[0]
