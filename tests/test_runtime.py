"""samadapt.runtime: leaving a torch.distributed job (the group each torchrun rank joins in ``setup``)."""

from __future__ import annotations

import torch.distributed as dist
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.runtime import current, leave


def _join_alone(tmp_path) -> None:
    """A one-rank gloo job in this process (what ``setup`` joins under torchrun, with a file rendezvous)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)


def test_leave_destroys_the_group_and_is_a_no_op_outside_a_job(tmp_path):
    leave()  # not in a job: nothing to do
    _join_alone(tmp_path)
    try:
        assert dist.is_initialized() and current().world == 1
        leave(failed=True)  # gloo's teardown is local, so a failed rank leaves too
        assert not dist.is_initialized()
        assert current().rank == 0 and current().world == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_command_leaves_the_job_it_ran_in(tmp_path):
    """The CLI's wrapper leaves the group when a command ends, here one that fails as a user error."""
    _join_alone(tmp_path)
    try:
        result = CliRunner().invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2, result.output
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
