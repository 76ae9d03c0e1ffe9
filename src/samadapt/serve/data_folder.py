"""The data folder of ``samadapt serve``: the only place the server reads volumes from.

Paths from requests are relative to the folder. A path is refused unless, after resolving ``..`` and
symbolic links, it still lies inside the folder: absolute paths, ``..`` escapes and links pointing out all
fail with :class:`~samadapt.errors.InputFileError` (HTTP 403 at the app), naming only the relative path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from samadapt.errors import ConfigError, InputFileError
from samadapt.io.volume import VOLUME_SUFFIXES

LISTED_SUFFIXES = tuple(s for s in VOLUME_SUFFIXES if s not in (".nhdr",))
MAX_LISTED = 2000
MAX_DEPTH = 4


class OutsideDataFolderError(InputFileError):
    """A requested path leaves the data folder (or is absolute)."""


class VolumeNotFoundError(InputFileError):
    """A requested volume is not in the data folder (or the server has none)."""


class DataFolder:
    """Volumes under ``root``: listing (files with volume suffixes, folders of ``.dcm`` files) and safe lookup."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ConfigError(f"{root}: data folder does not exist; pass --data with an existing folder")

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` inside the folder; :class:`OutsideDataFolderError` if it would leave it."""
        text = str(relative).replace("\\", "/")
        pure = PurePosixPath(text)
        if not text or pure.is_absolute() or ".." in pure.parts or "\x00" in text:
            raise OutsideDataFolderError(f"{relative}: give a path relative to the data folder, without '..'")
        candidate = (self.root / pure).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise OutsideDataFolderError(f"{relative}: lies outside the data folder")
        if not candidate.exists():
            raise VolumeNotFoundError(f"{relative}: no such volume in the data folder")
        return candidate

    def list_volumes(self) -> list[str]:
        """Relative POSIX paths of the volumes below the folder (at most ``MAX_LISTED``, ``MAX_DEPTH`` deep)."""
        found: list[str] = []
        for current, dirs, files in os.walk(self.root, followlinks=False):
            here = Path(current)
            depth = len(here.relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
            names = sorted(f for f in files if not f.startswith("."))
            if here != self.root and any(f.lower().endswith(".dcm") for f in names):
                found.append(here.relative_to(self.root).as_posix())
            found.extend((here / f).relative_to(self.root).as_posix() for f in names
                         if f.lower().endswith(LISTED_SUFFIXES) and (here / f).resolve().is_relative_to(self.root))
            if len(found) >= MAX_LISTED:
                break
        return sorted(found)[:MAX_LISTED]

    def hide(self, message: str) -> str:
        """``message`` with the folder's absolute path replaced by ``<data>`` (error texts sent to clients)."""
        return message.replace(str(self.root), "<data>")
