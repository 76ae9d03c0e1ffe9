"""Storage failures on the command line: one line ``samadapt: error: <path>: <what to do>``, exit code 2."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from samadapt.cli import app, user_errors_exit_2
from samadapt.data import prepare as prepare_module
from samadapt.data.prepared import PREPARE_MARKER, PreparedDataset
from support import error_after_bars


@pytest.mark.parametrize("code, advice", [
    (errno.ENOSPC, "no space left on its disk; free some space or write to another disk"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EFBIG, "file too large"),
    (errno.EROFS, "on a read-only file system; choose an output path you can write to"),
    (errno.EACCES, "permission denied; fix its permissions or choose another path"),
    (errno.EPERM, "operation not permitted"),
    (errno.ENOTDIR, "part of this path is a file, not a folder; choose another path"),
    (errno.ENAMETOOLONG, "name too long for the file system; choose a shorter path"),
    (errno.EISDIR, "is a folder where a file is expected"),
])
def test_the_cli_turns_storage_errnos_into_one_line(capsys, code, advice):
    @user_errors_exit_2
    def command(out: Path) -> None:
        raise OSError(code, os.strerror(code), "/data/run/state.pt")

    with pytest.raises(typer.Exit) as caught:
        command(out=Path("/data/run"))
    assert caught.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"samadapt: error: /data/run/state.pt: {advice}") and err.count("\n") == 1


def test_one_line_with_the_named_file_or_else_the_commands_output(capsys):
    @user_errors_exit_2
    def command(out: Path | None = None, prepared: Path | None = None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # os.write names no file

    for kwargs, where in (({"out": Path("o")}, "o"), ({"prepared": Path("p")}, "p"), ({}, None)):
        with pytest.raises(typer.Exit):
            command(**kwargs)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("samadapt: error: ")
        assert err.startswith(f"samadapt: error: {where}: no space left" if where else "samadapt: error: no space")


def test_other_os_errors_keep_their_traceback():
    @user_errors_exit_2
    def command() -> None:
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    with pytest.raises(ConnectionResetError):
        command()


def test_an_output_that_is_a_file_is_one_line_for_every_writer(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    runner = CliRunner()
    for args, where, advice in (
        (["phantoms", str(taken / "sub"), "--cases", "1"], taken / "sub", "part of this path is a file, not a folder"),
        (["pretrain", str(taken)], taken, "is a file where a folder is needed"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert lines == [f"samadapt: error: {where}: {advice}; choose another path"], lines
    assert taken.read_text() == "x"


def test_prepare_on_a_full_disk_is_one_line_and_leaves_no_temporaries(tmp_path):
    """RLIMIT_FSIZE (SIGXFSZ ignored) stands in for a full disk: the kernel refuses what passes the limit."""
    raw = tmp_path / "raw"
    made = CliRunner().invoke(app, ["phantoms", str(raw), "--cases", "1", "--size", "8,32,32"])
    assert made.exit_code == 0, made.output
    out = tmp_path / "prepared"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        from samadapt.cli import app
        sys.argv = ["samadapt", "prepare", {str(raw)!r}, {str(out)!r}, "--image-size", "64"]
        app()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"samadapt: error: {out}"), lines
    assert "file size limit" in lines[0] or "written in full" in lines[0]
    assert not out.exists()  # nothing half-done: not even the folder, its marker or an empty cases/


def test_prepare_on_a_full_disk_takes_back_only_what_this_run_wrote(tmp_path, monkeypatch):
    """ENOSPC right after a case folder is complete (its directory fsync, say): a new folder goes entirely;
    in an unfinished dataset of an earlier run, only this run's cases go, and a rerun keeps the earlier ones."""
    raw = tmp_path / "raw"
    assert CliRunner().invoke(app, ["phantoms", str(raw), "--cases", "2", "--size", "8,32,32"]).exit_code == 0
    real_write_case = prepare_module.write_case

    def failing_at(failing: str, error: BaseException):
        def write_case(out, case_id, *args, **kwargs):
            real_write_case(out, case_id, *args, **kwargs)
            if case_id == failing:
                raise error
        return write_case

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    args = ["prepare", str(raw), str(tmp_path / "new"), "--image-size", "64"]
    monkeypatch.setattr(prepare_module, "write_case", failing_at("phantom_001", full))
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 2 and error_after_bars(failed.stderr, "new", "no space left")
    assert not (tmp_path / "new").exists()  # phantom_000 was whole, but this run made it: gone too

    out = tmp_path / "unfinished"
    args[2] = str(out)
    monkeypatch.setattr(prepare_module, "write_case", failing_at("phantom_001", KeyboardInterrupt()))
    assert CliRunner().invoke(app, args).exit_code != 0  # an interrupted run: phantom_000 and the marker stay
    first = (out / "cases" / "phantom_000" / "images.npy").stat().st_mtime_ns
    assert (out / PREPARE_MARKER).is_file() and (out / "cases" / "phantom_001").is_dir()
    (out / "cases" / "phantom_001" / "images.npy").write_bytes(b"damaged")  # so that the next run rewrites it
    monkeypatch.setattr(prepare_module, "write_case", failing_at("phantom_001", full))
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 2 and error_after_bars(failed.stderr, "unfinished", "no space left")
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["phantom_000"]
    assert (out / PREPARE_MARKER).is_file() and not (out / "manifest.json").exists()
    monkeypatch.setattr(prepare_module, "write_case", real_write_case)
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "cases" / "phantom_000" / "images.npy").stat().st_mtime_ns == first  # the earlier run's case kept
    assert PreparedDataset(out).case_ids() == ["phantom_000", "phantom_001"]
