"""The JSON prompt file of ``samadapt segment --boxes`` (documented in ``docs/inference.md``).

::

    {
      "coordinates": "voxel",                 required: "voxel" (indices x, y, z) or "world" (mm, x, y, z)
      "axis": "axial",                        optional: axial (default), coronal or sagittal
      "classes": {"liver": 1, "spleen": 2},   optional: label value per class name
      "prompts": [ PROMPT, ... ]              for one volume, or
      "cases": {"case_id": [ PROMPT, ... ]}   for a folder of volumes (case id = file name without suffix)
    }

    PROMPT = {"class": "liver", "box": [x0, y0, z0, x1, y1, z1]}                     3D box, every slice
           | {"class": "liver", "box": [...], "propagate": true}                    key slice + propagation
           | {"class": "liver", "points": [[x, y, z], ...], "labels": [1, 0, ...], "propagate": false}

Without ``classes``, values 1, 2, ... go to class names in order of first appearance. Everything is
checked on reading (:meth:`PromptFile.read`) and against each volume's grid (:meth:`PromptFile.prompts_for`):
problems raise :class:`~samadapt.errors.PromptError` naming the file, the case and the prompt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samadapt.data.orientation import AXES
from samadapt.errors import InputFileError, PromptError
from samadapt.inference.volume_prompts import COORDINATE_SYSTEMS, VoxelBox, to_voxel_index
from samadapt.inference.volume_segmentation import VolumePrompt
from samadapt.io.volume import Geometry

_TOP_KEYS = {"coordinates", "axis", "classes", "prompts", "cases", "format", "description"}
_PROMPT_KEYS = {"class", "box", "points", "labels", "propagate"}
MAX_PROMPTS = 10000


def _number_list(value: Any, length: int | None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


@dataclass
class PromptFile:
    """A parsed prompt file; ``classes`` maps every class name used to its label value."""

    path: Path
    coordinates: str
    axis: str
    classes: dict[str, int]
    prompts: list[dict] | None
    cases: dict[str, list[dict]] | None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PromptFile:
        """Read and check ``path``; raises :class:`PromptError` (or :class:`InputFileError` when unreadable)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise InputFileError(f"{path}: cannot read the prompt file ({err.strerror or err}); "
                                 "check the path") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PromptError(f"{path}: invalid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                              "fix the file (format in docs/inference.md)") from None
        if not isinstance(data, dict):
            raise PromptError(f"{path}: must hold a JSON object with 'coordinates' and 'prompts' or 'cases'")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise PromptError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
        coordinates = data.get("coordinates")
        if coordinates not in COORDINATE_SYSTEMS:
            raise PromptError(f"{path}: 'coordinates' must be \"voxel\" or \"world\" (got {coordinates!r}); "
                              "say which frame the numbers are in")
        axis = data.get("axis", "axial")
        if axis not in AXES:
            raise PromptError(f"{path}: 'axis' {axis!r}: use one of {', '.join(AXES)}")
        if ("prompts" in data) == ("cases" in data):
            raise PromptError(f"{path}: give either 'prompts' (one volume) or 'cases' (a folder of volumes)")
        prompts = data.get("prompts")
        cases = data.get("cases")
        if prompts is not None and not isinstance(prompts, list):
            raise PromptError(f"{path}: 'prompts' must be a list of prompt objects")
        if cases is not None and (not isinstance(cases, dict) or not all(isinstance(v, list) for v in cases.values())):
            raise PromptError(f"{path}: 'cases' must map case ids to lists of prompt objects")
        listed = [("", prompts)] if prompts is not None else [(f"case '{c}': ", p) for c, p in cases.items()]
        if sum(len(p) for _, p in listed) > MAX_PROMPTS:
            raise PromptError(f"{path}: more than {MAX_PROMPTS} prompts; split the file")
        classes = cls._class_table(path, data.get("classes"), listed)
        return cls(path, coordinates, axis, classes, prompts, cases)

    @staticmethod
    def _class_table(path: Path, declared: Any, listed: list[tuple[str, list]]) -> dict[str, int]:
        if declared is not None:
            if not isinstance(declared, dict) or not declared:
                raise PromptError(f"{path}: 'classes' must map class names to label values, e.g. {{\"liver\": 1}}")
            values = list(declared.values())
            if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535 for v in values):
                raise PromptError(f"{path}: class label values must be integers in 1..65535 (0 is background)")
            if len(set(values)) != len(values):
                raise PromptError(f"{path}: two classes share a label value in 'classes'; give each its own")
        table = dict(declared) if declared is not None else {}
        for where, prompts in listed:
            for i, prompt in enumerate(prompts):
                PromptFile._check_prompt(path, f"{where}prompt {i}: ", prompt)
                name = prompt["class"]
                if name not in table:
                    if declared is not None:
                        raise PromptError(f"{path}: {where}prompt {i}: unknown class '{name}'; add it to 'classes' "
                                          f"(known: {', '.join(declared)})")
                    table[name] = len(table) + 1
        return table

    @staticmethod
    def _check_prompt(path: Path, where: str, prompt: Any) -> None:
        def fail(problem: str) -> PromptError:
            return PromptError(f"{path}: {where}{problem}")

        if not isinstance(prompt, dict):
            raise fail("must be an object such as {\"class\": \"liver\", \"box\": [x0, y0, z0, x1, y1, z1]}")
        unknown = sorted(set(prompt) - _PROMPT_KEYS)
        if unknown:
            raise fail(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_PROMPT_KEYS))}")
        if not isinstance(prompt.get("class"), str) or not prompt["class"].strip():
            raise fail("needs a 'class' name")
        if ("box" in prompt) == ("points" in prompt):
            raise fail("give either 'box' or 'points' (with 'labels')")
        if "box" in prompt and not _number_list(prompt["box"], 6):
            raise fail("'box' must be 6 numbers [x0, y0, z0, x1, y1, z1] (two opposite corners)")
        if "points" in prompt:
            points, labels = prompt["points"], prompt.get("labels")
            if not isinstance(points, list) or not points or not all(_number_list(p, 3) for p in points):
                raise fail("'points' must be a non-empty list of [x, y, z]")
            if not isinstance(labels, list) or len(labels) != len(points) or any(v not in (0, 1) for v in labels) \
                    or any(isinstance(v, bool) for v in labels):
                raise fail("'labels' must give 1 (positive) or 0 (negative) for each point")
        elif "labels" in prompt:
            raise fail("'labels' belong to 'points'; a box takes none")
        if not isinstance(prompt.get("propagate", False), bool):
            raise fail("'propagate' must be true or false")

    def raw_prompts(self, case_id: str, single_volume: bool) -> list[dict]:
        """The prompt objects for ``case_id``; ``single_volume``: the input is one file (``prompts`` allowed)."""
        if self.prompts is not None:
            if not single_volume:
                raise PromptError(f"{self.path}: 'prompts' are for one volume, but the input is a folder; "
                                  "list each volume's prompts under 'cases' by case id")
            return self.prompts
        if case_id not in self.cases:
            raise PromptError(f"{self.path}: no prompts for case '{case_id}'; add it under 'cases' "
                              f"(listed: {', '.join(list(self.cases)[:5]) or 'none'}) or remove the volume")
        return self.cases[case_id]

    def prompts_for(self, case_id: str, geometry: Geometry, single_volume: bool) -> list[VolumePrompt]:
        """The case's prompts as :class:`VolumePrompt` in voxel indices, each checked to lie inside ``geometry``."""
        resolved = []
        for i, raw in enumerate(self.raw_prompts(case_id, single_volume)):
            where = f"case '{case_id}', prompt {i} ({raw['class']})"
            name = raw["class"]
            try:
                if "box" in raw:
                    box = VoxelBox.from_corners(raw["box"], geometry, self.coordinates, where)
                    resolved.append(VolumePrompt(name, self.classes[name], box=box,
                                                 propagate=raw.get("propagate", False)))
                else:
                    index = to_voxel_index(np.array(raw["points"]), geometry, self.coordinates, where)
                    on = np.unique(index[:, 2 - AXES[self.axis]])
                    if on.size != 1:
                        raise PromptError(f"{where}: clicks of one prompt must lie on one {self.axis} slice, found "
                                          f"slices {on.tolist()}; give one prompt per slice")
                    resolved.append(VolumePrompt(name, self.classes[name], points=index,
                                                 labels=np.array(raw["labels"], dtype=np.int64),
                                                 propagate=raw.get("propagate", False)))
            except PromptError as err:
                raise PromptError(f"{self.path}: {err}") from None
        return resolved

    def labels_table(self) -> dict[str, int]:
        """``{"background": 0, class: value, ...}`` for the sidecar."""
        return {"background": 0, **self.classes}
