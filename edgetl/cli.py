"""edgetl command line. Thin: parse options, hand over to one stage module, turn user errors into one line.

TensorFlow is never imported here; stage modules import it lazily (predict and bench never do).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import EdgetlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning to small, fast, verified models on a CPU: train -> export -> bench.")
err = Console(stderr=True)


def cli_errors(fn):
    """One-line errors for bad input (exit 2/3), 'interrupted' for Ctrl-C (exit 130); no tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgetlError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: nothing was left half-written")
            raise typer.Exit(130) from None

    return wrapper


# ---- train (issue 2; --qat issue 3; --from/--adapt-bn issue 5) -----------------------------------
@app.command()
@cli_errors
def train(
    data: Optional[Path] = typer.Argument(None, help="Image folder: DATA/{train,val}/<class>/ or DATA/<class>/"),
    out: Path = typer.Option(Path("runs/run"), "--out", "-o", help="Run directory to write"),
) -> None:
    """Train a classifier: frozen ImageNet MobileNetV2 + new head, optional fine-tuning and QAT."""
    raise EdgetlError("train: not implemented yet")


# ---- export (issue 3) ------------------------------------------------------------------------------
@app.command()
@cli_errors
def export(run: Path = typer.Argument(..., help="Run directory from `edgetl train`")) -> None:
    """Export TFLite and ONNX artifacts (float, and int8 with --int8), each parity-checked."""
    raise EdgetlError("export: not implemented yet")


# ---- bench / predict (issue 4) ---------------------------------------------------------------------
@app.command()
@cli_errors
def bench(target: list[Path] = typer.Argument(..., help="Run directory or artifact files")) -> None:
    """On-CPU latency, accuracy, size and memory of every artifact, side by side (no TensorFlow needed)."""
    raise EdgetlError("bench: not implemented yet")


@app.command()
@cli_errors
def predict(model: Path = typer.Argument(..., help=".tflite or .onnx file exported by edgetl")) -> None:
    """Top-k labels for images, from a single exported file (no TensorFlow needed)."""
    raise EdgetlError("predict: not implemented yet")


# ---- compare (issue 5) -----------------------------------------------------------------------------
@app.command()
@cli_errors
def compare(data: Path = typer.Argument(..., help="Image folder, as for train")) -> None:
    """Measure transfer learning against training from scratch on your data."""
    raise EdgetlError("compare: not implemented yet")


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
