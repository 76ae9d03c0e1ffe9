"""A one-case dataset: prepare puts the case in train, says so (library: the manifest; CLI: stderr), and a
dataset of several cases gets no such warning."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import PrepareConfig
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset


def _phantoms(root: Path, cases: int) -> Path:
    return write_phantom_dataset(root, n_cases=cases, seed=0, size=(6, 40, 36), spacing=(10.0, 10.0, 15.0))


def test_one_case_goes_to_train_with_a_warning_in_the_manifest(tmp_path):
    prepared = prepare_dataset(_phantoms(tmp_path / "raw", 1), tmp_path / "prepared", PrepareConfig(image_size=64))
    (case_id,) = prepared.case_ids()
    assert prepared.case_ids("train") == [case_id] and not prepared.case_ids("val") and not prepared.case_ids("test")
    (warning,) = prepared.manifest["warnings"]
    assert "only one case" in warning and case_id in warning and "samadapt eval" in warning


def test_cli_prepare_prints_the_warning_on_stderr_and_succeeds(tmp_path):
    source = _phantoms(tmp_path / "raw", 1)
    result = CliRunner().invoke(app, ["prepare", str(source), str(tmp_path / "prepared"), "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 cases" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("samadapt: warning: ")]
    assert len(warnings) == 1 and "only one case" in warnings[0]


def test_several_cases_prepare_without_the_warning(tmp_path):
    prepared = prepare_dataset(_phantoms(tmp_path / "raw", 3), tmp_path / "prepared", PrepareConfig(image_size=64))
    assert len(prepared.case_ids("train")) == 1 and prepared.case_ids("test")
    assert not any("only one case" in w for w in prepared.manifest["warnings"])
