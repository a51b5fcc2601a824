"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class EdgetlError(Exception):
    """A problem with the user's input, named so that they can fix it (file, flag, accepted values)."""

    exit_code = 2


class ArtifactCheckError(EdgetlError):
    """An exported artifact failed its parity/accuracy check."""

    exit_code = 3


def describe(e: BaseException) -> str:
    """An unexpected exception as one short line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160]}" if msg else type(e).__name__
