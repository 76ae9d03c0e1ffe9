"""An advisory lock per output folder, so that two processes never write one embedding cache or run folder.

:func:`lock_folder` takes an exclusive ``fcntl.flock`` on ``<folder>/.samadapt.lock`` without waiting and
writes who holds it (pid, host, command, start time) into that file. A second process finds the lock held
and gets a :class:`~samadapt.errors.FolderInUseError` saying who holds it. The kernel drops the lock when
its process ends, even by ``kill -9``: a lock file left behind that way is taken over by the next process.
Releasing deletes the file; a process that opened it just before is told by the changed inode and retries.
On platforms without ``fcntl``, and in a folder this process may not write (where any write would fail
anyway), the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from samadapt.errors import FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_FILE = ".samadapt.lock"


def _command_line() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "-m", "-c", ""):
        program = "samadapt"
    text = shlex.join([program, *sys.argv[1:]])
    return text if len(text) <= 200 else text[:197] + "..."


def _holder(path: Path) -> str:
    """Who holds the lock, from what it wrote into the lock file (or a plain 'another process')."""
    try:
        info = json.loads(path.read_text())
        return (f"pid {int(info['pid'])} on {info['host']} (`{info['command']}`, since "
                f"{info['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class FolderLock:
    """A held folder lock; :meth:`release` (or leaving its ``with`` block) gives it back."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder, self.path, self._fd = folder, folder / LOCK_FILE, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike[str]) -> FolderLock:
    """Take the lock of ``folder`` (which must exist) without waiting.

    Raises:
        FolderInUseError: another process holds it; the message names the folder and the holder.
    """
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover
        return FolderLock(folder, None)
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return FolderLock(folder, None)  # a folder this process cannot write: nothing to guard here
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(
                f"{folder}: in use by {_holder(path)}; wait for it to finish or stop it, then rerun"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released (and deleted) it while we opened it: take a fresh one
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return FolderLock(folder, fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[FolderLock]:
    """:func:`lock_folder` for the span of a ``with`` block."""
    lock = lock_folder(folder)
    try:
        yield lock
    finally:
        lock.release()
