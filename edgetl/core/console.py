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
def native_logs_aside(console, verbose: bool = False):
    """TensorFlow's C++ start-up chatter (absl / oneDNN / CUDA lines: "Could not find cuda drivers",
    "failed call to cuInit") is written to file descriptor 2 where no Python setting filters it. While the
    stage runs, fd 2 goes to a temp file and a rich console that writes to stderr writes to a duplicate
    of the real stderr; on an unexpected failure the log's tail is shown. verbose: nothing is set aside."""
    import os
    import sys
    import tempfile

    try:
        fd = sys.stderr.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured in tests): nothing to do
        yield
        return
    target = getattr(console, "_file", None)  # None: the console's default stream (stderr=True or stdout)
    to_stderr = target is sys.stderr or (target is None and getattr(console, "stderr", False))
    if verbose or (target is not None and not to_stderr):  # a console writing to a file of its own
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    real = os.fdopen(os.dup(fd), "w", buffering=1)
    log = tempfile.TemporaryFile(mode="w+b")
    os.dup2(log.fileno(), fd)
    if to_stderr:
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
        if to_stderr:
            console.file = None
        real.close()
        if failed:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-20:]
            if tail:
                print("\n".join(["TensorFlow log (last lines):", *tail]), file=sys.stderr)
        log.close()


def shown(text) -> str:
    """A path or message as it can be printed: bytes of a file name that are not UTF-8 (kept by Python as
    surrogate escapes, which no terminal encoding accepts) become \\xNN."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
