"""Errors the user can fix.

Each subclass stands for one kind of failure; its message names the offending file (or setting) and what
to do about it. The command line turns any :class:`SamadaptError` into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re


class SamadaptError(Exception):
    """Base class of every error caused by input the user can fix."""


class InputFileError(SamadaptError):
    """A file or folder is missing, unreadable, corrupt or of an unsupported format."""


class GeometryMismatchError(SamadaptError):
    """Image and label (or two volumes that must share a grid) disagree in shape, spacing or orientation."""


class DatasetError(SamadaptError):
    """A dataset's layout or description (dataset.json, labels, splits) is wrong or empty."""


class CheckpointError(SamadaptError):
    """A model checkpoint is missing, of the wrong architecture, or fails its checksum."""


class CacheError(SamadaptError):
    """An embedding cache does not match the model or the prepared data it is used with."""


class ConfigError(SamadaptError):
    """A configuration value or command-line option is invalid."""


class PromptError(SamadaptError):
    """A prompt (box, points, mask, class) is malformed, of mismatched shape or lies outside its image."""


class StorageError(SamadaptError, OSError):
    """Output cannot be written: the disk is full, the file system read-only, permission is denied, or the
    path cannot hold a file there (a file where a folder is needed, a name too long). Also an ``OSError``, so
    code that handled the original ``OSError`` still does."""


class FolderInUseError(SamadaptError):
    """Another process holds the lock of an output folder (an embedding cache, a run folder)."""


_ADVICE = {getattr(errno, name): advice for name, advice in (  # (names this platform lacks are skipped)
    ("ENOSPC", "no space left on its disk; free some space or write to another disk, then rerun"),
    ("EDQUOT", "disk quota exceeded; free some space or write to another disk, then rerun"),
    ("EFBIG", "file too large for the file size limit (ulimit -f) or the file system; raise the limit or "
              "write to another disk, then rerun"),
    ("EROFS", "on a read-only file system; choose an output path you can write to"),
    ("EACCES", "permission denied; fix its permissions or choose another path"),
    ("EPERM", "operation not permitted; fix its permissions or choose another path"),
    ("ENOTDIR", "part of this path is a file, not a folder; choose another path"),
    ("EISDIR", "is a folder where a file is expected; choose another path"),
    ("ENAMETOOLONG", "name too long for the file system; choose a shorter path"),
    ("EEXIST", "exists already and is not a folder; choose another path"),
) if hasattr(errno, name)}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk (no errno)
_TORCH_WRITE = ("PytorchStreamWriter", "inline_container.cc", "file write failed")  # torch.save on a full disk
_WRITE_FAILED = ("could not be written in full: its disk is full or a file size limit (ulimit -f) was reached; "
                 "free some space or write to another disk, then rerun")


def storage_advice(err: BaseException) -> str | None:
    """What to do about ``err`` when it is a storage failure the user can fix (see :class:`StorageError`),
    else None. Besides ``OSError`` errnos, this recognises the errno-less reports of a full disk by numpy
    (``"N requested and M written"``) and by ``torch.save`` (its stream writer's enforce failures)."""
    if isinstance(err, OSError) and err.errno in _ADVICE:
        return _ADVICE[err.errno]
    if isinstance(err, OSError) and err.errno is None and _SHORT_WRITE.search(str(err)):
        return _WRITE_FAILED
    if isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITE):
        return _WRITE_FAILED
    return None


def storage_error(err: BaseException, path: str | os.PathLike[str] | None = None,
                  override: bool = False) -> StorageError | None:
    """``err`` as a :class:`StorageError` saying ``<path>: <what to do>`` (None when it is not a storage
    failure). The path is the one the error names, else (or with ``override``) ``path``; a
    :class:`StorageError` stays as it is."""
    if isinstance(err, StorageError):
        return err
    advice = storage_advice(err)
    if advice is None:
        return None
    named = getattr(err, "filename", None)
    where = path if override or named is None else named
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    if getattr(err, "errno", None) in (errno.ENOTDIR, errno.EEXIST) and where is not None and os.path.isfile(where):
        advice = "is a file where a folder is needed; choose another path"
    return StorageError(f"{where}: {advice}" if where is not None else advice)
