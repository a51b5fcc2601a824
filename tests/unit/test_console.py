"""The console: native libraries' log lines stay off the terminal (and come back when a stage crashes);
the progress bar is silent without a console."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from edgetl.core.console import progress

STAGE = textwrap.dedent("""
    import os, sys
    from rich.console import Console
    from edgetl.core.console import native_logs_aside
    from edgetl.core.errors import EdgetlError

    console = Console(stderr=True)
    with native_logs_aside(console):
        os.write(2, b"I0000 native start-up chatter\\n")
        console.print("stage output")
        if sys.argv[1] == "crash":
            raise RuntimeError("boom")
        if sys.argv[1] == "user-error":
            raise EdgetlError("--flag x: bad")
    console.print("after the stage")
    os.write(2, b"fd 2 is the terminal again\\n")
""")


def _stage(how: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STAGE, how], capture_output=True, text=True, timeout=120)


def test_native_log_lines_are_kept_aside():
    r = _stage("ok")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["stage output", "after the stage", "fd 2 is the terminal again"]


def test_a_crash_shows_the_native_log_tail():
    r = _stage("crash")
    assert r.returncode == 1
    tail = r.stderr.split("TensorFlow log (last lines):\n", 1)[1]
    assert tail.startswith("I0000 native start-up chatter\n") and "RuntimeError: boom" in tail


def test_a_user_error_shows_no_native_log():
    r = _stage("user-error")
    assert r.returncode == 1 and "EdgetlError: --flag x: bad" in r.stderr
    assert "chatter" not in r.stderr and "TensorFlow log" not in r.stderr


def test_progress_is_silent_without_a_console():
    with progress(None) as bar:
        task = bar.add_task("decoding", total=2)
        bar.advance(task, 2)
        assert bar.disable and bar.tasks[0].completed == 2
