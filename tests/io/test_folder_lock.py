"""The advisory folder lock: one holder at a time, the refusal names the holder, and a dead holder's lock
file is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from samadapt.errors import FolderInUseError
from samadapt.io.folder_lock import LOCK_FILE, folder_lock, lock_folder


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path):
    with folder_lock(tmp_path) as lock:
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["command"]
        with pytest.raises(FolderInUseError) as caught:
            lock_folder(tmp_path)  # another open file: flock refuses it even in this process
        message = str(caught.value)
        assert message.startswith(f"{tmp_path}: in use by pid {os.getpid()} on ") and "wait for it" in message
        assert "\n" not in message and lock.held
    assert not (tmp_path / LOCK_FILE).exists()  # released: the file goes
    lock_folder(tmp_path).release()


def test_another_process_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from samadapt.io.folder_lock import lock_folder
            lock_folder({str(tmp_path)!r})
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"in use by pid {holder.pid} on .*`"):
            lock_folder(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no release, the lock file stays behind
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    with folder_lock(tmp_path):  # the kernel dropped the dead process's lock: taken over
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_an_unreadable_holder_note_still_gives_one_line(tmp_path):
    with folder_lock(tmp_path):
        (tmp_path / LOCK_FILE).write_text("")  # (as between a holder's flock and its note)
        with pytest.raises(FolderInUseError, match="in use by another process;"):
            lock_folder(tmp_path)
