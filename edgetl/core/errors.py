"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""

import errno


class EdgetlError(Exception):
    """A problem with the user's input, named so that they can fix it (file, flag, accepted values)."""

    exit_code = 2


class ArtifactCheckError(EdgetlError):
    """An exported artifact failed its parity/accuracy check."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name when the message is empty), at most
    `limit` characters: runtimes and parsers raise with long, multi-line texts."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]


def describe(e: BaseException) -> str:
    """An unexpected exception as one short line: its type and the first line of its message."""
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # disk full, file-size limit (ulimit -f), quota


def no_space(e: BaseException) -> OSError | None:
    """The OSError of a full disk or a size limit behind `e` (libraries wrap it), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return e
        e = e.__cause__ or e.__context__
    return None
