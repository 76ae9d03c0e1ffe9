"""``samadapt models`` lists the foundations a user can pick, not the micro architectures the tests build."""

from __future__ import annotations

from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.models.registry import DEFAULT_MODEL, REGISTRY, TEST_MODELS


def test_models_lists_every_foundation_and_no_test_model():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    listed = [line.split(":")[0].removesuffix(" (default)") for line in result.output.splitlines()]
    assert sorted(listed) == sorted(set(REGISTRY) - set(TEST_MODELS)) and TEST_MODELS
    assert f"{DEFAULT_MODEL} (default):" in result.output
