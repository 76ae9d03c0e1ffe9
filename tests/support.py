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
