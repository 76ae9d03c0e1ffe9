"""Atomic writes: a file or folder appears complete under its final name, or not at all.

The content is flushed to disk (``fsync``) before the rename, and the folder after it, so a crash or power
cut leaves either the old file or the new one. A temporary is named ``.<final name>.<8 random>.tmp<suffix>``
beside its final path; one that a killed process left behind is removed by
:func:`remove_stale_temporaries` when the next job on that folder starts. A write that fails for lack of
space, permission or a usable path raises :class:`~samadapt.errors.StorageError` naming the final path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from samadapt.errors import StorageError, storage_error


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
# what atomic_path / atomic_dir name their temporaries: tempfile's 8 random characters between the final name
# and ".tmp" (plus the suffix)
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^/]*)?$")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or folder's) data and metadata to disk; a file system without fsync is let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _storage_failure(err: BaseException, final: Path, tmp: Path | None) -> BaseException:
    """``err`` as a StorageError when it is a storage failure (naming ``final`` unless it names a path other
    than the temporary ``tmp`` and what lies in it), else ``err`` itself. A StorageError of a nested atomic
    write inside the temporary folder ``tmp`` (which is gone by the time it is read) is renamed to ``final``."""
    if isinstance(err, StorageError) and tmp is not None and str(err).startswith(os.fspath(tmp) + os.sep):
        inner = str(err)[len(os.fspath(tmp)):]
        return StorageError(f"{final}: {inner.split(': ', 1)[1]}") if ": " in inner else err
    named = getattr(err, "filename", None)
    ours = named is None or is_temporary(Path(os.fsdecode(named)).name) or (
        tmp is not None and os.fsdecode(named).startswith(os.fspath(tmp)))
    translated = storage_error(err, final, override=ours)
    return translated if translated is not None else err


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is flushed to disk and renamed onto ``final``.

    The temporary name keeps ``suffix`` (e.g. ``".nii.gz"``) so writers that dispatch on extension work.
    On any exception the temporary file is removed and ``final`` is left untouched; a full disk, a
    read-only folder, a denied permission or a path that cannot be a file raise
    :class:`~samadapt.errors.StorageError` naming ``final``.
    """
    final = Path(final)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any other file
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        translated = _storage_failure(err, final, tmp)
        if translated is err:
            raise
        raise translated from None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` as a whole.

    Storage failures raise :class:`~samadapt.errors.StorageError` naming ``final`` (the temporary folder
    is removed either way).
    """
    final = Path(final)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        translated = _storage_failure(err, final, tmp)
        if translated is err:
            raise
        raise translated from None


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is how :func:`atomic_path` / :func:`atomic_dir` name their temporaries."""
    return bool(_TEMPORARY.match(name))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that killed atomic writes left in ``folder`` (not its subfolders); returns them.

    Call it only while no other process writes into ``folder`` (with its lock held, see
    :mod:`samadapt.io.folder_lock`): a live writer's temporary looks just like a stale one.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not is_temporary(entry.name):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        except OSError:  # e.g. a read-only folder: nothing can be written there either
            continue
        removed.append(entry)
    return removed
