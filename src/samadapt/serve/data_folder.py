"""The data folder of ``samadapt serve``: the only place the server reads volumes from.

Paths from requests are relative to the folder. A path is refused unless, after resolving ``..`` and
symbolic links, it still lies inside the folder: absolute paths, ``..`` escapes and links pointing out all
fail with :class:`~samadapt.errors.InputFileError` (HTTP 403 at the app), naming only the relative path.
What the listing does not show cannot be opened by name either (HTTP 404, as a missing file): names that
start with ``.`` (or lie in such a folder), files without a listed suffix, folders without ``.dcm`` files,
anything more than ``MAX_DEPTH`` folders deep or below a linked folder (the listing does not follow folder
links). A path the file system cannot even look up (a name too long) is a plain 400.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from samadapt.errors import ConfigError, InputFileError
from samadapt.io.volume import VOLUME_SUFFIXES

LISTED_SUFFIXES = VOLUME_SUFFIXES  # detached headers (.nhdr, .mhd) are opened from here: uploads cannot hold them
MAX_LISTED = 2000
MAX_DEPTH = 4
SHOWN_PATH = 120  # characters of a requested path echoed in an error


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
        shown = text if len(text) <= SHOWN_PATH else text[: SHOWN_PATH - 3] + "..."
        try:
            candidate = (self.root / pure).resolve()
            if candidate != self.root and self.root not in candidate.parents:
                raise OutsideDataFolderError(f"{shown}: lies outside the data folder")
            if not candidate.exists() or not self._listed(pure, candidate):
                raise VolumeNotFoundError(f"{shown}: no such volume in the data folder")
        except OSError as err:  # ENAMETOOLONG, ELOOP, ...: nothing the folder lists
            raise InputFileError(f"{shown}: {(err.strerror or 'cannot be looked up').lower()}; "
                                 "give the path of a volume the folder lists") from None
        return candidate

    def _listed(self, relative: PurePosixPath, target: Path) -> bool:
        """Whether :meth:`list_volumes` would show ``relative`` (ignoring ``MAX_LISTED``); ``target``: its real path."""
        parts = relative.parts
        if not parts or any(part.startswith(".") for part in parts) or len(parts) - 1 > MAX_DEPTH:
            return False
        folder = self.root
        for part in parts[:-1]:  # os.walk does not descend into linked folders
            folder = folder / part
            if folder.is_symlink():
                return False
        if target.is_dir():
            return len(parts) - 1 < MAX_DEPTH and any(f.is_file() and not f.name.startswith(".")
                                                      and f.name.lower().endswith(".dcm") for f in target.iterdir())
        return parts[-1].lower().endswith(LISTED_SUFFIXES)

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
