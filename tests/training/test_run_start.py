"""Starting a run (``train`` / ``adapt``): inputs checked before anything is written, a folder whose run saved
no step restarts without --resume, one command per run folder, stale temporaries and a corrupt state.pt."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import FinetuneConfig, save_config
from samadapt.errors import CheckpointError
from samadapt.io.folder_lock import LOCK_FILE, folder_lock
from samadapt.training.engine import STATE_FILE, load_state

FAST = ["--set", "engine.steps=2", "--set", "engine.batch_size=2", "--set", "engine.eval_every=2",
        "--set", "engine.checkpoint_every=1"]


def _invoke(command: str, prepared: Path, out: Path, *args: str):
    return CliRunner().invoke(app, [command, str(prepared), "--out", str(out), *args])


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt: error: "), lines
    return lines[0]


@pytest.fixture()
def tampered(micro_prepared, tmp_path) -> Path:
    """A copy of the prepared data with one case's images cut short after prepare."""
    root = tmp_path / "tampered"
    shutil.copytree(micro_prepared.root, root)
    images = sorted(root.glob("cases/*/images.npy"))[0]
    images.write_bytes(images.read_bytes()[:200])
    return root


@pytest.mark.parametrize("command", ["train", "adapt"])
@pytest.mark.parametrize("case", ["model", "unprepared", "tampered", "device", "image size"])
def test_a_bad_start_writes_nothing(micro_prepared, base, tampered, tmp_path, command, case):
    if case == "device" and torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    out = tmp_path / "run"
    prepared, args, expected = micro_prepared.root, ["--set", f"model={base}"], None
    if case == "model":
        args, expected = ["--set", "model=no_such_model.pth"], "no_such_model.pth: neither a checkpoint file"
    elif case == "unprepared":
        prepared = tmp_path / "raw_folder"
        prepared.mkdir()
        expected = f"{prepared / 'manifest.json'}: missing"
    elif case == "tampered":
        prepared, expected = tampered, str(tampered / "cases")
    elif case == "device":
        args, expected = [*args, "--set", "device=cuda"], "no CUDA GPU is available; use --device cpu"
    else:
        args, expected = ["--set", "model=tiny"], "prepared at 64 px but model 'tiny' takes 256 px"
    line = _one_error_line(_invoke(command, prepared, out, *args, *FAST))
    assert expected in line
    assert not out.exists()  # nothing written: a plain rerun with the setting fixed is not refused
    if case == "model" and command == "train":
        fixed = _invoke(command, prepared, out, "--set", f"model={base}", *FAST)
        assert fixed.exit_code == 0, fixed.output


def test_a_bad_start_in_an_existing_empty_folder_keeps_the_folder_empty(micro_prepared, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _one_error_line(_invoke("train", micro_prepared.root, out, "--set", "model=nope.pth"))
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_folder_whose_run_saved_no_step_restarts_without_resume(micro_prepared, base, tmp_path):
    """What an earlier version left after a failed start (config.yaml with the bad model), plus what a run
    killed before its first checkpoint leaves: --resume explains, and a plain run starts afresh."""
    out = tmp_path / "run"
    save_config(FinetuneConfig(data=str(micro_prepared.root), model="no_such_model.pth"), out / "config.yaml")
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    (out / "best.pth").write_bytes(b"stale")
    (out / ".state.pt.k2x_9abc.tmp.pt").write_bytes(b"")  # a kill -9 during the first checkpoint

    line = _one_error_line(_invoke("train", micro_prepared.root, out, "--resume"))
    assert "no_such_model.pth" in line and "without --resume" in line
    changed = _one_error_line(_invoke("train", micro_prepared.root, out, "--resume", "--set", f"model={base}"))
    assert "saved no step yet, so a run without --resume starts it afresh" in changed

    result = _invoke("train", micro_prepared.root, out, "--set", f"model={base}", *FAST)
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the old record went
    assert not (out / "tensorboard" / "events.out.tfevents.1").exists()
    assert str(base) in (out / "config.yaml").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp.pt") or p.name == LOCK_FILE]

    again = _one_error_line(_invoke("train", micro_prepared.root, out, "--set", f"model={base}", *FAST))
    assert "folder is not empty; pass --resume" in again  # this one has steps: never cleared


def test_a_folder_with_foreign_files_is_not_cleared(micro_prepared, base, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: x\n")
    (out / "notes.txt").write_text("mine")
    line = _one_error_line(_invoke("train", micro_prepared.root, out, "--set", f"model={base}"))
    assert "folder is not empty" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]


def test_a_run_folder_in_use_is_refused_naming_the_holder(micro_prepared, base, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out):
        line = _one_error_line(_invoke("train", micro_prepared.root, out, "--set", f"model={base}", *FAST))
        assert line.startswith(f"samadapt: error: {out}: in use by pid {os.getpid()} on ")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the holder's, nothing of ours
    result = _invoke("train", micro_prepared.root, out, "--set", f"model={base}", *FAST)
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_FILE).exists()  # released when the command ended


def test_resume_removes_the_temporary_of_a_killed_checkpoint(micro_prepared, base, tmp_path):
    out = tmp_path / "run"
    assert _invoke("train", micro_prepared.root, out, "--set", f"model={base}", *FAST).exit_code == 0
    stale = out / ".state.pt.a1b2c3d4.tmp.pt"
    stale.write_bytes(b"")
    result = _invoke("train", micro_prepared.root, out, "--resume")
    assert result.exit_code == 0, result.output
    assert not stale.exists()


def test_a_truncated_state_is_one_line_naming_it(micro_prepared, base, tmp_path):
    out = tmp_path / "run"
    assert _invoke("train", micro_prepared.root, out, "--set", f"model={base}", *FAST).exit_code == 0
    state = out / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    line = _one_error_line(_invoke("train", micro_prepared.root, out, "--resume"))
    assert line.startswith(f"samadapt: error: {state}: checkpoint is truncated or corrupt")
    assert line.endswith("start the run again without --resume into a new folder")


@pytest.mark.parametrize("content", [b"", b"\x80\x35" + bytes(64), b"PK\x03\x04" + os.urandom(64)])
def test_load_state_refuses_damaged_files_quietly(tmp_path, recwarn, content):
    path = tmp_path / STATE_FILE
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(path)
    torch.save({"step": 1}, path)  # a loadable file missing the state's entries
    with pytest.raises(CheckpointError, match=r"\(entries missing\)"):
        load_state(path)
    assert not recwarn.list  # (b"\x80\x35": torch warns of pickle protocol 53 unless silenced)
