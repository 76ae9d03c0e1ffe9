"""Helpers several test modules share (importable as ``support``: pyproject's pytest ``pythonpath``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from samadapt.data.prepared import PreparedDataset, dataset_hash, write_case, write_manifest


def one_line_error(result, *words: str) -> str:
    """The single stderr line of a CLI call that failed as a user error (exit 2, ``samadapt: error: ...``, no
    traceback); it must name every one of ``words``."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def error_after_bars(stderr: str, *words: str) -> str:
    """The error line of a command that failed after it showed progress: the last line of ``stderr`` and its
    only error line (no traceback); what comes before it may only be tqdm's progress bars (``\\r``-separated,
    with cursor moves; ``desc: 40%|...``, ``desc: 4slice [00:00, ...]``) or a status line (``desc: 00:00``).
    It must name every one of ``words``."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr).replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("samadapt: error: "), stderr
    assert not [line for line in lines[:-1] if "error" in line.lower() or "Traceback" in line], stderr
    bar = re.compile(r"[^:]+: (.*\|.*|\d+\S* \[[^]]*\]|\d\d:\d\d)")
    assert all(bar.fullmatch(line) for line in lines[:-1]), stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


def torchrun(*samadapt_args: str, ranks: int = 2, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node ranks -m samadapt ...`` with one thread per rank; asserts that
    it succeeded. On failure the message is the ranks' own output (progress bars dropped), where an abort or
    a traceback of a rank shows, rather than the tail of torchrun's summary."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "samadapt", *samadapt_args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=timeout)
    lines = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", done.stderr).replace("\r", "\n").splitlines()
    shown = "\n".join(line for line in lines if line.strip() and "|" not in line)
    assert done.returncode == 0, f"exit {done.returncode}:\n{shown[:6000]}"
    return done


def killed_midway(script: str, ready: Callable[[], bool], log: Path, timeout: float = 240.0) -> None:
    """Run ``python -c script`` and ``kill -9`` it as soon as ``ready()`` holds (polled every 20 ms); fails if
    the process ended on its own first. Its output goes to ``log`` (a pipe could fill up and stall it)."""
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                assert process.poll() is None, f"ended before the kill (exit {process.returncode}): {log.read_text()}"
                assert time.monotonic() < deadline, f"not ready after {timeout} s: {log.read_text()}"
                time.sleep(0.02)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, (process.returncode, log.read_text())


def synthetic_prepared(
    root: Path, image_size: int, cases: dict[str, tuple[int, tuple[int, int], bool]], seed: int, tag: str
) -> PreparedDataset:
    """A prepared dataset of random pixels and no objects, written the way ``prepare`` writes one.

    Args:
        cases: case id -> (slices, valid (h, w) at the top left of the ``image_size`` frame, RGB?).
        tag: goes into the params, so datasets of different tests hash differently.
    """
    rng = np.random.default_rng(seed)
    params = {"image_size": image_size, "test": tag}
    rows = []
    for cid, (n, (h, w), rgb) in cases.items():
        channels = (3,) if rgb else ()
        images = np.zeros((n, image_size, image_size) + channels, dtype=np.uint8)
        images[:, :h, :w] = rng.integers(0, 256, size=(n, h, w) + channels, dtype=np.uint8)
        labels = np.zeros((n, image_size, image_size), dtype=np.uint16)
        write_case(root, cid, images, labels, [], {"valid_hw": [h, w], "params": params})
        rows.append({"case_id": cid, "split": "train", "n_slices": n, "n_objects": 0})
    write_manifest(root, {
        "format_version": 1, "source": {"root": "synthetic", "layout": "nnunet", "name": "test"},
        "params": params, "image_size": image_size,
        "classes": [{"name": "organ", "values": [1], "index": 1}], "cases": rows, "split_seed": 0,
        "hash": dataset_hash(root, params, rows), "skipped": [],
    })
    return PreparedDataset(root)


# what `samadapt train` saved as config.yaml before the groups (samadapt at 4c29bf5), verbatim
OLD_TRAIN_CONFIG = """\
data: /data/prepared
model: tiny
steps: 4
batch_size: 2
grad_accum: 1
lr: 0.001
weight_decay: 0.01
warmup_steps: 2
min_lr_fraction: 0.05
grad_clip: 1.0
amp: true
seed: 0
checkpoint_every: 2
checkpoint_seconds: 60.0
eval_every: 3
patience: 0
min_delta: 0.0
val_split: val
device: cpu
select_model: best
prompting: multi
max_prompts_per_slice: 32
train_prompt_encoder: false
lora_rank: 0
lora_alpha: 8.0
box_noise: sam
organ_box_shift_px: 5.0
lesion_box_shift_px: 2.0
box_shift_max_fraction: 0.25
sam_noise_std: 0.1
lesion_classes: null
loss: dice+bce
iou_weight: 1.0
prompt_reduction: mean
loss_size: null
pruning: class
prune_ratio: 0.5
prune_anneal_fraction: 0.125
prune_min_class_share: 0.0
prune_protected_classes: null
prune_rare_class_share: 0.1
objective: phpg
phpg_correction_rounds: 1
phpg_mask_only_rounds: 1
phpg_first_weights: null
phpg_correction_weights: null
phpg_error_head: true
phpg_guidance_mix: 0.5
phpg_error_weight: 1.0
phpg_recompute_passes: false
"""

# and what `samadapt adapt` saved
OLD_ADAPT_CONFIG = """\
data: /data/prepared
model: tiny
steps: 4
batch_size: 8
grad_accum: 1
lr: 0.001
weight_decay: 0.0
warmup_steps: 20
min_lr_fraction: 0.05
grad_clip: 1.0
amp: true
seed: 0
checkpoint_every: 50
checkpoint_seconds: 60.0
eval_every: 50
patience: 0
min_delta: 0.0
val_split: val
device: cpu
mode: apm+ips
classes: null
apm_kind: resnet
apm_size: auto
apm_init: prior
num_points: 16
num_positive: 8
presence_head: true
presence_weight: 1.0
ips_hidden: 0
ips_prompts: mixed
negative_margin: 0.5
promptable_weight: 1.0
multimask_output: true
"""

# and what `samadapt pretrain` saved before its engine group (samadapt at 6e5329b), for the micro run of
# tests/pretraining/test_pretrain.py (its CONFIG)
OLD_PRETRAIN_CONFIG = """\
model: test_micro
steps: 4
batch_size: 2
objects_per_image: 2
lr: 0.0005
min_lr_fraction: 0.05
weight_decay: 0.05
warmup_steps: 1
grad_clip: 1.0
corpus_images: 6
corpus_seed: 0
eval_images: 2
eval_seed: 1000003
seed: 0
correction_rounds: 1
mask_only_rounds: 1
point_first_probability: 0.5
box_warmup_fraction: 0.5
full_recipe_fraction: 0.25
eval_every: 2
checkpoint_every: 2
threads: 1
init_from: null
grad_accum: 1
amp: true
checkpoint_seconds: 60.0
patience: 0
min_delta: 0.0
select_model: last
device: cpu
"""
