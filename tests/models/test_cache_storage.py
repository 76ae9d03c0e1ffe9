"""The embedding cache on a full disk and under a second job: space checked and allocated before anything is
memory-mapped (no SIGBUS), one error line, nothing half-written, one job per cache folder."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import samadapt.models.embedding_cache as embedding_cache
from samadapt.cli import app
from samadapt.data.prepared import PreparedDataset
from samadapt.errors import FolderInUseError, StorageError
from samadapt.io.folder_lock import LOCK_FILE, folder_lock
from samadapt.models.embedding_cache import EmbeddingCache, compute_embeddings, embedding_shape, npy_file_size
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import LoadedModel, build_sam, save_sam
from support import synthetic_prepared

SPEC = REGISTRY["test_micro"]  # 64 px input, 4x4 grid, C = 32: 1 kB of fp16 per slice
SLICES = {"c0": 5, "c1": 3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    cases = {cid: (n, (SPEC.image_size, SPEC.image_size), False) for cid, n in SLICES.items()}
    return synthetic_prepared(tmp_path_factory.mktemp("prepared"), SPEC.image_size, cases, 0, "cache_storage")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_sam(build_sam(SPEC), SPEC, tmp_path_factory.mktemp("model") / "micro.pth")


def _model() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(build_sam(SPEC), SPEC, None, {})


def _case_bytes(cid: str) -> int:
    return npy_file_size((SLICES[cid], *embedding_shape(SPEC)))


def test_partials_are_allocated_not_sparse(prepared, tmp_path, monkeypatch):
    """Each ``.partial`` holds its disk blocks before it is memory-mapped: its pages never need new blocks, so a
    full disk cannot SIGBUS the process mid-batch."""
    seen = []
    real = embedding_cache._open_partial

    def spy(path, shape, resume):
        mm = real(path, shape, resume)
        seen.append((path.name, path.stat().st_size, path.stat().st_blocks * 512))
        return mm

    monkeypatch.setattr(embedding_cache, "_open_partial", spy)
    compute_embeddings(prepared, _model(), out=tmp_path / "cache", batch_size=2)
    assert [name for name, _, _ in seen] == ["c0.npy.partial", "c1.npy.partial"]
    for name, size, blocks in seen:
        assert size == _case_bytes(name.split(".")[0]) and blocks >= size


def _failing_fallocate(fail_on: int):
    calls = []
    real = os.posix_fallocate

    def fallocate(fd, offset, length):
        calls.append(length)
        if len(calls) == fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    return fallocate


def test_a_full_disk_at_allocation_is_one_error_and_leaves_no_partial(prepared, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    monkeypatch.setattr(os, "posix_fallocate", _failing_fallocate(fail_on=2))  # c0 fits, c1 does not
    with pytest.raises(StorageError) as caught:
        compute_embeddings(prepared, _model(), out=out, batch_size=2)
    assert str(caught.value).startswith(f"{out / 'c1.npy.partial'}: no space left on its disk")
    assert sorted(p.name for p in out.iterdir()) == ["c0.npy", "cache.json"]  # c0 finished; no partial, no lock
    assert EmbeddingCache(out).case_ids == ["c0"]
    monkeypatch.undo()
    finished = compute_embeddings(prepared, _model(), out=out, batch_size=2)  # space freed: it resumes
    whole = compute_embeddings(prepared, _model(), out=tmp_path / "whole", batch_size=2)
    for cid in SLICES:
        assert (finished.root / f"{cid}.npy").read_bytes() == (whole.root / f"{cid}.npy").read_bytes()


def test_embed_on_a_full_disk_prints_one_line(prepared, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    monkeypatch.setattr(os, "posix_fallocate", _failing_fallocate(fail_on=1))
    result = CliRunner().invoke(app, ["embed", str(prepared.root), "--model", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"samadapt: error: {out / 'c0.npy.partial'}: no space left on its disk; free some space or write to "
        "another disk, then rerun"]
    assert not out.exists()  # the folder it made, and nothing else


def test_too_little_free_space_is_refused_before_anything_is_written(prepared, checkpoint, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(embedding_cache.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4000, 4000))
    out = tmp_path / "cache"
    result = CliRunner().invoke(app, ["embed", str(prepared.root), "--model", str(checkpoint), "--out", str(out)])
    need = _case_bytes("c0") + _case_bytes("c1")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"samadapt: error: {out}: the embedding cache needs {need / 1e3:.1f} kB more disk space but only 4.0 kB "
        "is free there; free some space or put the cache on another disk (embed --out), then rerun"]
    assert not out.exists()


def test_a_file_size_limit_fails_in_one_line_not_by_a_signal(prepared, tmp_path):
    """A real refusal by the kernel: RLIMIT_FSIZE below a case's file (SIGXFSZ ignored) makes the allocation
    fail as a full disk would; a sparse memory map would have died by SIGBUS instead."""
    out = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({_case_bytes("c0") - 1000}, {_case_bytes("c0") - 1000}))
        from samadapt.cli import app
        sys.argv = ["samadapt", "embed", {str(prepared.root)!r}, "--model", "test_micro", "--out", {str(out)!r}]
        app()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"samadapt: error: {out / 'c0.npy.partial'}: file too large for the file size limit (ulimit -f) or the "
        "file system; raise the limit or write to another disk, then rerun"]
    assert not out.exists()


def test_a_second_job_on_a_cache_is_refused_and_touches_nothing(prepared, checkpoint, tmp_path):
    out = tmp_path / "cache"

    def stop_after_first_batch(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_embeddings(prepared, _model(), out=out, batch_size=2, progress=stop_after_first_batch)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with folder_lock(out):  # the first job, still running
        with pytest.raises(FolderInUseError, match=f"{out}: in use by pid {os.getpid()} on "):
            compute_embeddings(prepared, _model(), out=out, batch_size=2)
        result = CliRunner().invoke(app, ["embed", str(prepared.root), "--model", str(checkpoint),
                                          "--out", str(out)])
        assert result.exit_code == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"samadapt: error: {out}: in use by pid {os.getpid()}")
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_FILE} == before
    compute_embeddings(prepared, _model(), out=out, batch_size=2)
    assert not (out / LOCK_FILE).exists()


def test_a_cache_job_removes_stale_temporaries(prepared, tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / ".cache.json.k2x_9abc.tmp").write_bytes(b"")  # what a kill -9 during a progress write leaves
    (out / "notes.txt").write_text("mine")
    compute_embeddings(prepared, _model(), out=out, batch_size=2)
    assert sorted(p.name for p in out.iterdir()) == ["c0.npy", "c1.npy", "cache.json", "notes.txt"]


def test_a_read_only_finished_cache_still_opens(prepared, tmp_path, monkeypatch):
    """The lock of a folder this process may not write is a no-op: a finished cache needs no write."""
    out = tmp_path / "cache"
    compute_embeddings(prepared, _model(), out=out, batch_size=2)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    cache = compute_embeddings(prepared, _model(), out=out, batch_size=2)
    assert sorted(cache.case_ids) == sorted(SLICES)
    shutil.rmtree(out)
