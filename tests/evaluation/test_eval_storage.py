"""``samadapt eval`` on a full disk: the error is the last line and the only error line, naming the report
folder (not the temporary one it was writing), exit code 2, and no report or temporary is left."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.io.atomic import is_temporary
from support import error_after_bars


def test_eval_on_a_full_disk_ends_with_one_error_line_and_writes_nothing(tmp_path, phantom_prepared, micro_models):
    args = ["eval", str(phantom_prepared.root), "--model", str(micro_models[0]), "--jitter", "0"]
    warm = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "warm")])  # the embedding cache is written now
    assert warm.exit_code == 0, warm.output
    out = tmp_path / "report"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the kernel refuses writes past 4 kB: EFBIG
        from samadapt.cli import app
        sys.argv = ["samadapt", *{[*args, "--out", str(out)]!r}]
        app()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = error_after_bars(done.stderr)  # bars of the stages that ran may come before it, nothing else
    assert line.startswith(f"samadapt: error: {out}: file too large for the file size limit"), line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if is_temporary(p.name)]
