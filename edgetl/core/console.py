"""The console: progress bars and keeping native libraries' log lines off the user's terminal."""

from __future__ import annotations

import contextlib

from .errors import EdgetlError


def progress(console, transient: bool = False):
    """edgetl's progress bar (a rich Progress; silent when console is None)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=transient,
                    disable=console is None)


@contextlib.contextmanager
def native_logs_aside(console):
    """TensorFlow's C++ start-up chatter (absl / oneDNN / CUDA lines) is written to file descriptor 2
    where no Python setting filters it. While the stage runs, fd 2 goes to a temp file and the rich
    console writes to a duplicate of the real stderr; on an unexpected failure the log's tail is shown."""
    import os
    import sys
    import tempfile

    try:
        fd = sys.stderr.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured in tests): nothing to do
        yield
        return
    if getattr(console, "_file", None) not in (None, sys.stderr):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    real = os.fdopen(os.dup(fd), "w", buffering=1)
    log = tempfile.TemporaryFile(mode="w+b")
    os.dup2(log.fileno(), fd)
    console.file = real
    failed = False
    try:
        yield
    except (EdgetlError, KeyboardInterrupt):
        raise
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        console.file = None
        real.close()
        if failed:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-20:]
            if tail:
                print("\n".join(["TensorFlow log (last lines):", *tail]), file=sys.stderr)
        log.close()
