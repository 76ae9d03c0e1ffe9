"""``samadapt eval`` killed with SIGKILL mid-run, then rerun: the same report as an uninterrupted run."""

from __future__ import annotations

import textwrap

from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.evaluation.slice_store import SLICES_DIR
from support import killed_midway

REPORT_FILES = ("per_object.csv", "interactive.csv", "interactive_per_object.csv", "evaluation.json")


def test_eval_killed_mid_run_finishes_on_rerun_with_the_same_report(phantom_prepared, micro_models, tmp_path):
    common = ["eval", str(phantom_prepared.root), "--model", str(micro_models[0]), "--jitter", "0",
              "--protocol", "box,interactive", "--max-slices", "6"]
    straight = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output

    out = tmp_path / "report"
    script = textwrap.dedent(f"""
        import sys, time
        import torch
        from samadapt.evaluation import interactive_protocol
        torch.set_num_threads(1)  # as this test process (tests/conftest.py): the same floating-point sums
        clicks = interactive_protocol.click_session
        def slowly(*args, **kwargs):  # 0.3 s per slice: room to kill it after the second one
            time.sleep(0.3)
            return clicks(*args, **kwargs)
        interactive_protocol.click_session = slowly
        from samadapt.cli import app
        sys.argv = ["samadapt", *{[*common, "--out", str(out)]!r}]
        app()
    """)

    def two_slices_stored() -> bool:
        stored = list((out / SLICES_DIR).glob("interactive-*.jsonl"))
        return bool(stored) and len(stored[0].read_bytes().split(b"\n")) >= 4  # the header and two slices

    killed_midway(script, two_slices_stored, tmp_path / "killed.log")
    assert not (out / "evaluation.json").exists()  # killed before its report

    rerun = CliRunner().invoke(app, [*common, "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    for name in REPORT_FILES:
        assert (out / name).read_text() == (tmp_path / "straight" / name).read_text(), name
    assert rerun.stdout == straight.stdout.replace(str(tmp_path / "straight"), str(out))
    [stored] = (out / SLICES_DIR).glob("interactive-*.jsonl")
    assert len(stored.read_text().splitlines()) == 1 + 6  # the two finished slices were read back, not redone
