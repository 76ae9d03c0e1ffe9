"""Data-parallel fine-tuning under torchrun (2 CPU processes, gloo): the same model as one process."""

from __future__ import annotations

import json

import torch

from samadapt.config import FinetuneConfig, make_config
from samadapt.models.sam import read_state_dict
from samadapt.runtime import Ranks
from samadapt.settings import expand_dotted
from samadapt.training.finetune import finetune, prepare_run_folder
from support import torchrun

SETTINGS = {"box_noise.style": "none", "engine.batch_size": 4, "engine.steps": 24, "engine.eval_every": 12,
            "engine.checkpoint_every": 12, "pruning.policy": "class", "pruning.min_class_share": 0.0,
            "engine.lr": 1e-3, "engine.warmup_steps": 2}


def test_shards_split_a_batch_without_overlap():
    items = list(range(7))
    shards = [Ranks(r, 3).shard(items) for r in range(3)]
    assert sorted(sum(shards, [])) == items and shards[0] == [0, 3, 6]


def test_torchrun_two_ranks_match_one_process(micro_prepared, base, tmp_path):
    single = tmp_path / "single"
    values = {"data": str(micro_prepared.root), "model": str(base), **SETTINGS}
    config = make_config(FinetuneConfig, expand_dotted(values))
    prepare_run_folder(single, config, resume=False)
    finetune(single, config)

    ddp = tmp_path / "ddp"
    done = torchrun("train", str(micro_prepared.root), "--out", str(ddp), "--set", f"model={base}",
                    *[arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")])
    assert done.stdout.count("model written to") == 1  # rank 0 alone reports and writes

    a, b = read_state_dict(single / "model.pth"), read_state_dict(ddp / "model.pth")
    assert a.keys() == b.keys()
    # Two ranks sum gradients in another order than one process (gloo's all-reduce), so float32 gradients
    # differ in their last bits, by how much depends on the CPU's kernels. AdamW divides each gradient by its
    # own running scale: where a gradient is rounding noise, the runs may step apart by up to Adam's largest
    # update, lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr per step (Kingma & Ba, sec. 2.1). That bounds
    # every weight, whatever the machine; the claim "the same run" is checked where it lives: (almost) every
    # weight agrees to float32 noise (measured here: 7e-6 at most), and so do the two runs' loss curves.
    bound = 2 * 3.2 * SETTINGS["engine.lr"] * SETTINGS["engine.steps"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=bound, msg=key)
        # per tensor, 0.1% of its weights may be noisy coordinates, and at least one (a small bias)
        far = int((~torch.isclose(a[key], b[key], rtol=1e-4, atol=1e-5)).sum())
        assert far <= max(1, a[key].numel() // 1000), (key, far)
    curves = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)] for run in (single, ddp)]
    assert len(curves[0]) == len(curves[1]) > 0
    for one, two in zip(*curves, strict=True):  # float32 noise on losses of order 1: 1e-3 is a wide margin
        assert abs(one - two) <= 1e-3 * max(abs(one), abs(two)), curves
    plans = [json.loads((run / "pruning.json").read_text()) for run in (single, ddp)]
    assert plans[0]["iterations"] == plans[1]["iterations"] < plans[0]["iterations_full_data"]
    assert [e["slices"] for e in plans[0]["epochs"]] == [e["slices"] for e in plans[1]["epochs"]]
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, plans[1]["iterations"] + 1))
