"""Errors the user can fix.

Each subclass stands for one kind of failure; its message names the offending file (or setting) and what
to do about it. The command line turns any :class:`SamadaptError` into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
