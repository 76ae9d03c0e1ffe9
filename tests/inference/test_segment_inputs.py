"""`samadapt segment` on awkward input and output folders (issue 19): NaN in NIfTI, files in OUT that segment
did not write, provisional sidecars of a killed run, and paths that are not UTF-8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.data.phantoms import generate_phantom
from samadapt.io.volume import write_volume
from support import one_line_error

SIZE, SPACING = (8, 40, 40), (10.0, 10.0, 24.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory, voxel_box) -> tuple[Path, Path]:
    """``(volume, prompts)``: one phantom NIfTI ``alpha.nii.gz`` and a prompt file with a liver box for it."""
    root = tmp_path_factory.mktemp("segment_inputs")
    phantom = generate_phantom(np.random.default_rng([3, 0]), size=SIZE, spacing=SPACING)
    volume = write_volume(phantom.image, phantom.geometry, root / "in" / "alpha.nii.gz")
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps({"coordinates": "voxel", "prompts": [
        {"class": "liver", "box": voxel_box(np.isin(phantom.label, (1, 10)))}]}))
    return volume, prompts


@pytest.fixture(scope="module")
def run(micro_run):
    return lambda *args: CliRunner().invoke(app, ["segment", *args, "--model", str(micro_run)])


@pytest.mark.parametrize("name", ["alpha.json", "alpha.nii.gz"])
def test_files_segment_did_not_write_are_never_replaced(case, run, tmp_path: Path, name: str):
    volume, prompts = case
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / name
    content = b'{"my": "notes"}\n' if name.endswith(".json") else b"my own label volume"
    foreign.write_bytes(content)
    one_line_error(run(str(volume), "--boxes", str(prompts), "--out", str(out)), str(foreign),
                    "move it away or choose another --out")
    assert [p.name for p in out.iterdir()] == [name] and foreign.read_bytes() == content


def test_own_outputs_are_skipped_or_redone(case, run, tmp_path: Path):
    volume, prompts = case
    out = tmp_path / "out"
    first = run(str(volume), "--boxes", str(prompts), "--out", str(out))
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "alpha.nii.gz"]
    sidecar = json.loads((out / "alpha.json").read_text())
    assert sidecar["finished"] is not None and sidecar["request"]["sha256"]
    again = run(str(volume), "--boxes", str(prompts), "--out", str(out))
    assert again.exit_code == 0 and "1 already done" in again.output
    # a run killed between the volume and the final sidecar leaves the provisional sidecar: redone, not skipped
    provisional = {key: sidecar[key] for key in ("case_id", "source", "output", "request")} | {"finished": None}
    (out / "alpha.json").write_text(json.dumps(provisional))
    third = run(str(volume), "--boxes", str(prompts), "--out", str(out))
    assert third.exit_code == 0 and "already done" not in third.output
    assert json.loads((out / "alpha.json").read_text())["finished"] is not None


def test_a_file_as_out_is_refused(case, run, tmp_path: Path):
    volume, prompts = case
    out = tmp_path / "out.txt"
    out.write_text("x")
    one_line_error(run(str(volume), "--boxes", str(prompts), "--out", str(out)), str(out), "is a file")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_nifti_input_is_refused(case, run, tmp_path: Path, bad: float):
    volume, prompts = case
    phantom = generate_phantom(np.random.default_rng([3, 0]), size=SIZE, spacing=SPACING)
    image = phantom.image.astype(np.float32)
    image[4, 20, 20] = bad
    source = write_volume(image, phantom.geometry, tmp_path / "alpha.nii")
    out = tmp_path / "out"
    one_line_error(run(str(source), "--boxes", str(prompts), "--out", str(out)), str(source),
                    "1 NaN or infinite voxels", "fix or mask")
    assert not out.exists()


def test_input_paths_that_are_not_utf8_are_refused_without_aborting(case, micro_run, tmp_path: Path):
    volume, prompts = case
    folder = tmp_path / "in"
    folder.mkdir()
    target = os.path.join(os.fsencode(folder), b"alpha\xff.nii.gz")
    try:
        with open(target, "wb") as handle:
            handle.write(volume.read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out"
    for source in (folder, Path(os.fsdecode(target))):  # a folder of cases, and the file itself
        # a separate process: a path reaching ITK would abort it (C++ std::logic_error, exit -6)
        done = subprocess.run([sys.executable, "-m", "samadapt", "segment", str(source), "--boxes", str(prompts),
                               "--out", str(out), "--model", str(micro_run)],
                              capture_output=True, text=True, errors="backslashreplace", timeout=300)
        assert done.returncode == 2, (done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("samadapt: error: "), done.stderr
        assert "alpha\\xff.nii.gz" in lines[0] and "not UTF-8" in lines[0]
        assert not out.exists()
