"""``samadapt segment``: volumes in (one file, or a folder of them), label volumes out, geometry kept.

Inputs: a volume file (NIfTI, NRRD, MHA/MHD), a DICOM series folder, or a folder holding volume files
and/or DICOM series subfolders (one case each). The case id is the file name without its suffix and
without nnU-Net's ``_0000`` channel suffix.

Outputs, per case, in ``OUT``:

- ``<case_id>.nii.gz``: the label volume on the input's exact grid (size, spacing, origin, direction; NIfTI
  stores them as float32, so a NIfTI input's geometry comes back bit for bit);
- ``<case_id>.json``: the sidecar: ``labels`` (``{"background": 0, class: value}``), the source, the
  model, the mode, per-object slices and stop reasons, timing, and ``request``: a signature of everything
  that decided the result.

Each case is written in three atomic steps: a provisional sidecar (``"finished": null``), the label volume,
then the final sidecar. A failure while a case is written (a full disk) removes that case's files, and an
``OUT`` the run created stays only if a case was finished in it, so nothing half-written is left; only a
``kill -9`` can leave a provisional sidecar. A rerun skips a case whose finished sidecar holds the same
``request`` (same input file, model checkpoint, prompts and settings) and redoes any other, so a killed run
resumes and a changed prompt is never answered with a stale volume. Every case's prompts are checked
against its grid before the first case is segmented, and so is every NIfTI input for NaN or infinite voxels
(which ITK's NIfTI reader would turn into 0 without a word).

Files segment did not write are never replaced: a ``<case_id>.json`` in ``OUT`` that is not a segment
sidecar, or a ``<case_id>.nii.gz`` without one, stops the run before any case is segmented (move the file
away or choose another ``--out``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from samadapt.data.prepared import source_signature
from samadapt.errors import ConfigError, InputFileError
from samadapt.inference.prompt_file import PromptFile
from samadapt.inference.propagation import PropagationSettings
from samadapt.inference.segmenter import Segmenter
from samadapt.inference.volume_segmentation import (
    AutoSettings,
    VolumeSegmentation,
    segment_volume,
    segment_volume_auto,
)
from samadapt.inference.volume_slices import VolumeSlices
from samadapt.io.atomic import write_json_atomic
from samadapt.io.volume import (
    VOLUME_SUFFIXES,
    Geometry,
    check_nifti_finite,
    check_path_encodable,
    is_volume_path,
    read_geometry,
    read_volume,
    write_volume,
)
from samadapt.progress import BarFactory, no_bars
from samadapt.settings import check_groups, command_settings, expand_dotted, setting_error

OUTPUT_SUFFIX = ".nii.gz"
SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class Case:
    """One input volume: its id and its file (or DICOM folder)."""

    case_id: str
    path: Path


def case_id_of(path: Path) -> str:
    """File name without volume suffix and without a trailing nnU-Net channel suffix ``_0000``."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if name.endswith("_0000") and len(name) > 5 else name


def find_cases(source: str | os.PathLike[str]) -> list[Case]:
    """The cases of ``source`` (see the module docstring), sorted by case id; duplicate ids are refused, and
    so are paths that are not UTF-8 (the image reader would abort on them)."""
    source = Path(source)
    check_path_encodable(source)
    if not source.exists():
        raise InputFileError(f"{source}: no such file or folder; give a volume file or a folder of volumes")
    if source.is_file():
        if not is_volume_path(source):
            raise InputFileError(f"{source}: not a volume file; use one of {', '.join(VOLUME_SUFFIXES)} "
                                 "or a DICOM folder")
        return [Case(case_id_of(source), source)]
    entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
    volumes = [p for p in entries if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
    series = [p for p in entries if p.is_dir()]
    if not volumes and not series:
        if any(p.is_file() for p in entries):
            return [Case(source.name, source)]  # the folder itself is a DICOM series
        raise InputFileError(f"{source}: holds no volumes; give a volume file or a folder of volumes")
    for path in volumes + series:
        check_path_encodable(path)
    cases = [Case(case_id_of(p), p) for p in volumes + series]
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputFileError(f"{source}: several volumes share case id '{duplicates[0]}'; rename or move one")
    return sorted(cases, key=lambda c: c.case_id)


def _source_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


@dataclass
class SegmentSettings:
    """What besides prompts decides the result (the settings of ``samadapt segment``): windowing (``window``,
    ``modality``: CT or MR, None to guess), and the groups ``propagation`` (:class:`PropagationSettings`)
    and ``auto`` (:class:`AutoSettings`). ``axis`` comes from the prompt file, not from the settings."""

    window: str = "auto"
    modality: str | None = None
    axis: str = field(default="axial", metadata={"setting": False})
    propagation: PropagationSettings = field(default_factory=PropagationSettings)
    auto: AutoSettings = field(default_factory=AutoSettings)

    def __post_init__(self) -> None:
        check_groups(self, setting_error("segment"))
        self.window = str(self.window)
        if self.modality is not None and str(self.modality).upper() not in ("CT", "MR"):
            raise ConfigError(f"modality '{self.modality}': use CT or MR (anything without Hounsfield units is MR "
                              "here)")
        self.modality = str(self.modality).upper() if self.modality is not None else None


def segment_settings(window: str | None = None, modality: str | None = None, overrides: dict | None = None,
                     config: str | os.PathLike[str] | None = None) -> SegmentSettings:
    """The settings of ``samadapt segment``: defaults < the YAML file ``config`` < ``window`` / ``modality``
    (when not None) < ``overrides`` (``--set``: ``propagation.KEY`` and ``auto.KEY``, nested or dotted; e.g.
    ``{"propagation.margin_px": 2, "auto.min_score": 0.5}``)."""
    return command_settings(SegmentSettings, config, {"window": window, "modality": modality},
                            expand_dotted(overrides or {}))


@dataclass
class SegmentSummary:
    """Cases written and skipped (already done), with the output folder."""

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds_per_slice: float = 0.0


def _model_identity(segmenter: Segmenter, model_label: str) -> dict:
    checkpoint = segmenter.loaded.checkpoint
    files = source_signature([checkpoint]) if checkpoint is not None and Path(checkpoint).is_file() else []
    return {"model": model_label, "architecture": segmenter.loaded.spec.architecture(), "checkpoint": files}


def _request(case: Case, model: dict, adapter: str | None, prompts: PromptFile | None, settings: SegmentSettings,
             single: bool) -> dict:
    prompt_part = None if prompts is None else {
        "coordinates": prompts.coordinates, "axis": prompts.axis, "classes": prompts.classes,
        "prompts": prompts.raw_prompts(case.case_id, single)}
    request = {"format": SIDECAR_FORMAT, "source": source_signature(_source_files(case.path)), "model": model,
               "adapter": adapter, "prompts": prompt_part, "window": settings.window, "modality": settings.modality,
               "axis": settings.axis, "propagation": asdict(settings.propagation), "auto": asdict(settings.auto)}
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
    return {"sha256": digest, **request}


def output_paths(out: Path, case_id: str) -> tuple[Path, Path]:
    """``(OUT/<case_id>.nii.gz, OUT/<case_id>.json)``."""
    return out / f"{case_id}{OUTPUT_SUFFIX}", out / f"{case_id}.json"


def _read_sidecar(path: Path) -> dict | None:
    """The sidecar at ``path`` when it is one that segment wrote (a JSON object with a ``request`` signature);
    None when there is no such file or it is something else."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict) or not isinstance(
            data["request"].get("sha256"), str) or not isinstance(data.get("case_id"), str):
        return None
    return data


def check_outputs_are_ours(out: Path, case_ids: list[str]) -> None:
    """Raise :class:`ConfigError` when ``out`` holds a ``<case_id>.json`` that is not a segment sidecar, or
    a ``<case_id>.nii.gz`` without one: segment would replace a file it did not write."""
    for case_id in case_ids:
        volume_path, sidecar_path = output_paths(out, case_id)
        for path in (volume_path, sidecar_path):
            if path.exists() and not path.is_file():
                raise ConfigError(f"{path}: is a folder where segment writes its output for case '{case_id}'; "
                                  "move it away or choose another --out")
        if sidecar_path.exists():
            if _read_sidecar(sidecar_path) is None:
                raise ConfigError(f"{sidecar_path}: exists and is not a `samadapt segment` sidecar, so it would "
                                  "be replaced; move it away or choose another --out")
        elif volume_path.exists():
            raise ConfigError(f"{volume_path}: exists without the sidecar {sidecar_path.name} that segment "
                              "writes with its volumes, so it would be replaced; move it away or choose "
                              "another --out")


def _is_done(out: Path, case_id: str, request: dict) -> bool:
    volume_path, sidecar_path = output_paths(out, case_id)
    if not volume_path.is_file():
        return False
    sidecar = _read_sidecar(sidecar_path)
    return sidecar is not None and sidecar.get("finished") is not None and (
        sidecar["request"]["sha256"] == request["sha256"])


def segment_cases(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    segmenter: Segmenter,
    prompts: PromptFile | None = None,
    settings: SegmentSettings | None = None,
    model_label: str = "",
    adapter_label: str | None = None,
    bars: BarFactory = no_bars,
    on_case: Callable[[str, str], None] | None = None,
) -> SegmentSummary:
    """Segment every case of ``source`` into ``out`` from ``prompts`` (or automatically when None).

    Args:
        segmenter: the model (with a ProMISe adapter for automatic mode).
        prompts: a :class:`PromptFile`; None runs :func:`segment_volume_auto`.
        settings: windowing, propagation and automatic-mode settings (the axis comes from ``prompts``).
        bars: progress bars (one over cases, one over the slices of the current case).
        on_case: ``on_case(case_id, "written" | "skipped")`` after each case.
    """
    source, out = Path(source), Path(out)
    settings = settings or SegmentSettings()
    if prompts is not None:
        settings = replace(settings, axis=prompts.axis)
    elif not segmenter.has_auto:
        raise ConfigError("automatic segmentation needs a ProMISe adapter with an APM (--auto --adapter RUN); "
                          "or give --boxes")
    cases = find_cases(source)
    if out.resolve() == source.resolve() or (source.is_dir() and source.resolve() in out.resolve().parents):
        raise ConfigError(f"{out}: write the label volumes outside the input folder {source}")
    single = source.is_file() or (len(cases) == 1 and cases[0].path == source)
    check_path_encodable(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; give a folder for the label volumes (--out)")
    blocking = next((p for p in out.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # found now, not when the first case is written
        raise ConfigError(f"{blocking}: is a file where a folder of --out {out} is needed; choose another --out")
    check_outputs_are_ours(out, [case.case_id for case in cases])
    planned = []
    model = _model_identity(segmenter, model_label)
    for case in cases:  # check every case's prompts against its grid before segmenting anything
        geometry = read_geometry(case.path)
        check_nifti_finite(case.path)  # ITK would read NaN as 0; other formats keep them (VolumeSlices refuses)
        case_prompts = prompts.prompts_for(case.case_id, geometry, single) if prompts is not None else None
        planned.append((case, case_prompts, _request(case, model, adapter_label, prompts, settings, single)))
    summary = SegmentSummary(out)
    created = not out.exists()
    try:
        _segment_planned(out, planned, segmenter, prompts, settings, bars, on_case, summary)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the run made it and finished nothing in it
        raise
    return summary


def _segment_planned(out: Path, planned: list, segmenter: Segmenter, prompts: PromptFile | None,
                     settings: SegmentSettings, bars: BarFactory, on_case: Callable[[str, str], None] | None,
                     summary: SegmentSummary) -> None:
    """The loop of :func:`segment_cases` over its checked ``(case, prompts, request)`` plan; fills ``summary``."""
    seconds = slices = 0.0
    with bars("segment", len(planned)) as case_bar:
        for case, case_prompts, request in planned:
            if _is_done(out, case.case_id, request):
                summary.skipped.append(case.case_id)
            else:
                volume = read_volume(case.path)
                slices_view = segmenter.set_volume(VolumeSlices.from_volume(volume, settings.window, settings.axis,
                                                                            settings.modality))
                with bars(case.case_id, None) as slice_bar:
                    if case_prompts is not None:
                        result = segment_volume(segmenter, case_prompts, settings.propagation, slice_bar.update)
                        labels_table = prompts.labels_table()
                    else:
                        result = segment_volume_auto(segmenter, None, settings.auto, slice_bar.update)
                        labels_table = {"background": 0, **{c: i + 1 for i, c in enumerate(segmenter.classes)}}
                _write_case(out, case, volume.geometry, result, labels_table, request, slices_view,
                            "boxes" if case_prompts is not None else "auto")
                summary.written.append(case.case_id)
                seconds += result.seconds
                slices += result.slices_decoded
            case_bar.update(1)
            if on_case is not None:
                on_case(case.case_id, "skipped" if case.case_id in summary.skipped else "written")
    summary.seconds_per_slice = seconds / slices if slices else 0.0


def _write_case(out: Path, case: Case, geometry: Geometry, result: VolumeSegmentation, labels_table: dict,
                request: dict, slices: VolumeSlices, mode: str) -> None:
    volume_path, sidecar_path = output_paths(out, case.case_id)
    # A provisional sidecar first: a volume in OUT is then always accompanied by a sidecar, even when the run
    # is killed between the two writes, so a rerun can tell its own files from the user's.
    write_json_atomic(sidecar_path, {"case_id": case.case_id, "source": str(case.path), "output": volume_path.name,
                                     "finished": None, "request": request})
    try:
        write_volume(result.labels, geometry, volume_path)
        write_json_atomic(sidecar_path, {
            "case_id": case.case_id, "labels": labels_table, "source": str(case.path), "output": volume_path.name,
            "mode": mode, "window": slices.window.to_dict(), "axis": slices.axis, "objects": result.objects,
            "slices_decoded": result.slices_decoded, "seconds": round(result.seconds, 3),
            "seconds_per_slice": round(result.seconds_per_slice, 4), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "request": request,
        })
    except BaseException:  # a full disk, an interrupt: this case is written in full or not at all
        volume_path.unlink(missing_ok=True)
        sidecar_path.unlink(missing_ok=True)
        raise
