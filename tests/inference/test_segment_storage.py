"""``samadapt segment`` on a full disk: one error line, exit code 2, and no half-written case (issue 19)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.data.phantoms import generate_phantom
from samadapt.inference import segment_cases as segment_module
from samadapt.io.atomic import is_temporary
from samadapt.io.volume import write_volume
from support import error_after_bars, one_line_error

CASES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, voxel_box) -> tuple[Path, Path]:
    """``(folder, prompts)``: three small phantom NIfTI cases and a liver box for each."""
    root = tmp_path_factory.mktemp("segment_storage")
    prompts = {}
    for seed, name in enumerate(CASES):
        phantom = generate_phantom(np.random.default_rng([5, seed]), size=(6, 32, 32), spacing=(10.0, 10.0, 24.0))
        write_volume(phantom.image, phantom.geometry, root / "in" / f"{name}.nii.gz")
        prompts[name] = [{"class": "liver", "box": voxel_box(np.isin(phantom.label, (1, 10)))}]
    (root / "prompts.json").write_text(json.dumps({"coordinates": "voxel", "cases": prompts}))
    return root / "in", root / "prompts.json"


def _args(inputs, out: Path, micro_run: Path) -> list[str]:
    return ["segment", str(inputs[0]), "--boxes", str(inputs[1]), "--out", str(out), "--model", str(micro_run)]


def test_a_full_disk_at_the_first_write_is_one_line_and_leaves_no_folder(inputs, micro_run, tmp_path):
    """RLIMIT_FSIZE (SIGXFSZ ignored) stands in for a full disk: every file over 1 kB is refused (EFBIG)."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        from samadapt.cli import app
        sys.argv = ["samadapt", *{_args(inputs, out, micro_run)!r}]
        app()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = error_after_bars(done.stderr, "file size limit")
    assert line.startswith(f"samadapt: error: {out}/alpha.json: "), line
    assert not out.exists()


@pytest.mark.parametrize("failing_write", ["volume", "final sidecar"])
def test_a_full_disk_midway_keeps_finished_cases_and_nothing_of_the_failed_one(inputs, micro_run, tmp_path,
                                                                                monkeypatch, failing_write):
    out = tmp_path / "out"
    real_volume, real_json = segment_module.write_volume, segment_module.write_json_atomic

    def write_volume(labels, geometry, path, *args, **kwargs):
        if path.name == "beta.nii.gz" and failing_write == "volume":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_volume(labels, geometry, path, *args, **kwargs)

    def write_json_atomic(path, data):
        if path.name == "beta.json" and data["finished"] is not None and failing_write == "final sidecar":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_json(path, data)

    monkeypatch.setattr(segment_module, "write_volume", write_volume)
    monkeypatch.setattr(segment_module, "write_json_atomic", write_json_atomic)
    failed = CliRunner().invoke(app, _args(inputs, out, micro_run))
    assert failed.exit_code == 2
    error_after_bars(failed.stderr, "beta", "no space left on its disk")
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "alpha.nii.gz"]  # beta: neither file
    assert json.loads((out / "alpha.json").read_text())["finished"] is not None

    monkeypatch.setattr(segment_module, "write_volume", real_volume)
    monkeypatch.setattr(segment_module, "write_json_atomic", real_json)
    alpha = (out / "alpha.nii.gz").stat().st_mtime_ns
    again = CliRunner().invoke(app, _args(inputs, out, micro_run))
    assert again.exit_code == 0, again.output
    assert "1 already done" in again.stdout and (out / "alpha.nii.gz").stat().st_mtime_ns == alpha
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}{s}" for c in CASES for s in (".json", ".nii.gz"))
    assert not [p for p in out.iterdir() if is_temporary(p.name)]


def test_an_output_that_cannot_be_created_is_one_line(inputs, micro_run, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    one_line_error(CliRunner().invoke(app, _args(inputs, taken / "out", micro_run)), str(taken))
    assert taken.read_text() == "x"
