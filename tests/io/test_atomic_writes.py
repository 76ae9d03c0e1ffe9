"""Atomic writes: flushed to disk before the rename, storage failures as one StorageError naming the final
path with nothing left behind, and the stale temporaries of killed writes recognised and removed."""

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

import samadapt.io.atomic as atomic
from samadapt.errors import StorageError
from samadapt.io.atomic import (
    atomic_dir,
    atomic_path,
    is_temporary,
    remove_stale_temporaries,
    write_json_atomic,
)


def test_atomic_path_fsyncs_the_file_then_the_folder_around_the_rename(tmp_path, monkeypatch):
    synced: list[tuple[str, bool]] = []
    real = atomic.fsync_path

    def record(path):
        synced.append((Path(path).name, (tmp_path / "out.json").exists()))
        real(path)

    monkeypatch.setattr(atomic, "fsync_path", record)
    write_json_atomic(tmp_path / "out.json", {"a": 1})
    (name, renamed_yet), (folder, renamed_after) = synced
    assert name.startswith(".out.json.") and not renamed_yet  # the temporary's data, before the rename
    assert folder == tmp_path.name and renamed_after  # the folder's entry, after it
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": 1}


@pytest.mark.parametrize("failure, advice", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
    (OSError("1048576 requested and 520128 written"), "could not be written in full"),  # numpy on a full disk
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "written in full"),
])
def test_a_full_disk_is_a_storage_error_naming_the_file_and_leaves_nothing(tmp_path, failure, advice):
    final = tmp_path / "state.pt"
    final.write_text("old")
    with pytest.raises(StorageError) as caught, atomic_path(final, suffix=".pt") as tmp:
        tmp.write_bytes(b"half")
        raise failure
    message = str(caught.value)
    assert message.startswith(f"{final}: ") and advice in message and "\n" not in message
    assert isinstance(caught.value, OSError)  # code that handled the OSError still does
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="bug"), atomic_path(tmp_path / "x.json"):
        raise ValueError("bug")
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.json"):
        open(tmp_path / "missing")  # noqa: SIM115
    assert list(tmp_path.iterdir()) == []


def test_a_path_below_a_file_is_a_storage_error_naming_the_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(StorageError, match="taken: is a file where a folder is needed"):
        write_json_atomic(tmp_path / "taken" / "out.json", {})
    with pytest.raises(StorageError, match="taken: is a file where a folder is needed"), \
            atomic_dir(tmp_path / "taken" / "cases"):
        pass


def test_atomic_dir_names_the_final_folder_when_its_contents_fail(tmp_path):
    final = tmp_path / "report"
    with pytest.raises(StorageError) as caught, atomic_dir(final) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "table.csv"))
    assert str(caught.value).startswith(f"{final}: no space left")
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_fails_in_one_error_without_leftovers(tmp_path):
    """A real short write: RLIMIT_FSIZE (with SIGXFSZ ignored) makes the kernel refuse what passes the limit."""
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        import numpy as np
        from samadapt.errors import StorageError
        from samadapt.io.atomic import atomic_path, write_json_atomic
        def save_npy(path, array):
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, array)

        for write in (lambda: write_json_atomic({str(tmp_path / "big.json")!r}, list(range(5000))),
                      lambda: save_npy({str(tmp_path / "big.npy")!r}, np.zeros(5000))):
            try:
                write()
            except StorageError as err:
                print(err)
        save_npy({str(tmp_path / "small.npy")!r}, np.zeros(100))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    json_line, npy_line = result.stdout.strip().splitlines()
    assert json_line.startswith(f"{tmp_path / 'big.json'}: file too large")  # EFBIG from write()
    assert npy_line.startswith(f"{tmp_path / 'big.npy'}: could not be written in full")  # numpy's short write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.npy"]
    assert np.load(tmp_path / "small.npy").shape == (100,)


def test_temporary_names_are_recognised_and_stale_ones_removed(tmp_path):
    names = []
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "state.pt", suffix=".pt") as tmp:
        names.append(tmp.name)
        raise KeyboardInterrupt
    with atomic_path(tmp_path / "scan.nii.gz", suffix=".nii.gz") as tmp:
        names.append(tmp.name)
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "cases") as tmp:
        names.append(tmp.name)
    assert all(is_temporary(name) for name in names), names
    # what a kill -9 mid-write leaves, and what must stay
    (tmp_path / ".state.pt.k2x_9abc.tmp.pt").write_bytes(b"")
    (tmp_path / ".cache.json.0123abcd.tmp").write_text("{")
    (tmp_path / ".phantom_000.q1w2e3r4.tmp").mkdir()
    (tmp_path / ".phantom_000.q1w2e3r4.tmp" / "images.npy").write_bytes(b"x")
    keep = [".hidden", "notes.tmp", ".a.tmp", "model.pth", ".x.TOOLONGNAME.tmp"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".cache.json.0123abcd.tmp", ".phantom_000.q1w2e3r4.tmp",
                                               ".state.pt.k2x_9abc.tmp.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "cases", "scan.nii.gz"])
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_fsync_path_tolerates_a_file_system_without_fsync(tmp_path, monkeypatch):
    def no_fsync(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", no_fsync)
    write_json_atomic(tmp_path / "a.json", [1])
    assert json.loads((tmp_path / "a.json").read_text()) == [1]
