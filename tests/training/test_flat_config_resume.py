"""A run saved before the settings groups (flat keys in its config.yaml) resumes with ``--resume`` and ends
with the weights of an uninterrupted run of the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import FinetuneConfig, load_config
from samadapt.models.sam import read_state_dict
from samadapt.training.finetune import finetune, prepare_run_folder
from support import OLD_TRAIN_CONFIG


class KilledError(RuntimeError):
    pass


def test_a_flat_config_run_resumes_to_the_same_weights(micro_prepared, base, tmp_path: Path):
    flat = OLD_TRAIN_CONFIG.replace("/data/prepared", str(micro_prepared.root)).replace("model: tiny",
                                                                                         f"model: {base}")
    (tmp_path / "flat.yaml").write_text(flat)
    config = load_config(FinetuneConfig, tmp_path / "flat.yaml")  # PHPG + error head, CBDP, box noise, engine
    straight = tmp_path / "straight"
    finetune(straight, prepare_run_folder(straight, config, resume=False))

    killed = tmp_path / "killed"

    def kill(record: dict) -> None:
        if record["step"] == 3:  # after the checkpoint of step 2
            raise KilledError

    with pytest.raises(KilledError):
        finetune(killed, prepare_run_folder(killed, config, resume=False), on_step=kill)
    (killed / "config.yaml").write_text(flat)  # what the run would have saved before the groups
    result = CliRunner().invoke(app, ["train", str(micro_prepared.root), "--out", str(killed), "--resume"])
    assert result.exit_code == 0, result.output
    assert (killed / "config.yaml").read_text() == flat  # read as the groups, left as it was
    a, b = read_state_dict(straight / "model.pth"), read_state_dict(killed / "model.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    heads = [torch.load(p / "error_head.pth", weights_only=True) for p in (straight, killed)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
