"""Command options, declared once: each stage's config is a dataclass whose fields carry their default,
flag and help text (`opt`); the CLI builds its commands from these fields, and edgetl.json records the
config verbatim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path

REQUIRED = ...  # default of a required command-line argument


def opt(default, help: str = "", *flags: str, metavar: str | None = None, argument: bool = False,
        cli: bool = True):
    """A config field with its command-line form: flags (default --field-name), help, metavar; argument=True
    makes it positional; cli=False keeps it out of the command line (Python callers and tests only)."""
    meta = {"help": help, "flags": flags, "metavar": metavar, "argument": argument, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def as_dict(cfg) -> dict:
    """A config as JSON-ready values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def check_finite(flag: str, value) -> None:
    """A float option must be a finite number: nan and inf compare false with every bound."""
    import math

    from .errors import EdgetlError

    if isinstance(value, float) and not math.isfinite(value):
        raise EdgetlError(f"{flag} {value}: must be a finite number")


def check_floats(cfg) -> None:
    """Every float field of a command's config is finite (one line naming the flag otherwise)."""
    for f in dataclasses.fields(cfg):
        flags = f.metadata.get("flags") or ()
        flag = next((x for x in flags if x.startswith("--")), "--" + f.name.replace("_", "-"))
        check_finite(flag.split("/")[0], getattr(cfg, f.name))
