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
from .formats import EXPORT_FORMATS

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
    alpha: Optional[float] = typer.Option(None, help="MobileNetV2 width: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 (default 1.0; with --from: the run's)"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size in px, 96-224 (default 224; with --from: the run's)"),
    weights: str = typer.Option("imagenet", help="'imagenet' (Keras cache/download or $EDGETL_WEIGHTS_DIR), "
                                "a .h5 path, or 'random'"),
    epochs: int = typer.Option(30, help="Head epochs on cached features (early stopping on val loss)"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-3, help="Head learning rate (Adam)"),
    dropout: float = typer.Option(0.2, help="Dropout before the head's dense layer(s)"),
    head: str = typer.Option("linear", help="'linear' (dropout + dense softmax) or 'dense128' (the seed's "
                             "Dense(128, relu) + softmax)"),
    patience: int = typer.Option(5, help="Early-stopping patience (epochs without val-loss improvement)"),
    augment: int = typer.Option(0, help="N extra augmented views per training image (flip/crop/brightness), cached"),
    fine_tune: int = typer.Option(0, "--fine-tune", help="Unfreeze the top LAYERS of the base after the head "
                                  "converges (BatchNorm stays frozen); 0 = off", metavar="LAYERS"),
    fine_tune_epochs: int = typer.Option(5, "--fine-tune-epochs"),
    fine_tune_lr: Optional[float] = typer.Option(None, "--fine-tune-lr", help="Fine-tuning learning rate (default: --lr / 20)"),
    val_split: float = typer.Option(0.2, "--val-split", help="Validation fraction for a flat DATA folder"),
    seed: int = typer.Option(0, help="Random seed (same seed + data -> same result)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out run"),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Continue from a trained RUN (same classes)"),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware training after the float phases"),
    qat_epochs: int = typer.Option(5, "--qat-epochs"),
    qat_lr: float = typer.Option(1e-4, "--qat-lr", help="QAT fine-tuning learning rate"),
    qat_loss: str = typer.Option("distill", "--qat-loss", help="QAT fine-tuning targets: 'distill' (the float "
                                 "model's probabilities) or 'labels'"),
    adapt_bn: bool = typer.Option(False, "--adapt-bn", help="Re-estimate the base's BatchNorm statistics on DATA"),
    base_cache: bool = typer.Option(True, "--base-cache/--no-base-cache",
                                    help="Compute base features with the backbone's TFLite copy, made once and "
                                    "cached in $EDGETL_CACHE_DIR (default ~/.cache/edgetl)"),
) -> None:
    """Train a classifier: frozen ImageNet MobileNetV2 + new head, optional fine-tuning and QAT."""
    from .train import TrainConfig, train as run_train, validate

    cfg = TrainConfig(
        data=str(data) if data is not None else None, out=str(out), alpha=alpha, image_size=image_size,
        weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, dropout=dropout, head=head,
        patience=patience, augment=augment, fine_tune=fine_tune, fine_tune_epochs=fine_tune_epochs,
        fine_tune_lr=fine_tune_lr, val_split=val_split, seed=seed, overwrite=overwrite,
        from_run=str(from_run) if from_run is not None else None, qat=qat, qat_epochs=qat_epochs,
        qat_lr=qat_lr, qat_loss=qat_loss,
        adapt_bn=adapt_bn, base_cache=base_cache)
    run_train(cfg, Console(stderr=True), prepared=validate(cfg))
    _fast_exit_after_tensorflow()


def _fast_exit_after_tensorflow() -> None:
    """TensorFlow's interpreter teardown takes ~1.7 s on the dev machine, after every file is already
    written (atomically) and closed. In the real `edgetl` process, skip it; never inside another
    program (typer's CliRunner, pytest, `app()` called from Python). EDGETL_NO_FAST_EXIT=1 disables it."""
    import os

    if os.environ.get("EDGETL_NO_FAST_EXIT") or "typer.testing" in sys.modules or "pytest" in sys.modules:
        return
    if Path(sys.argv[0]).name not in ("edgetl", "__main__.py"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---- export (issue 3) ------------------------------------------------------------------------------
@app.command()
@cli_errors
def export(
    run: Path = typer.Argument(..., help="Run directory from `edgetl train`"),
    int8: bool = typer.Option(False, "--int8", help="Also export the int8 formats (calibrated, or QAT ranges)"),
    format: Optional[str] = typer.Option(
        None, "--format", "-f",
        help="Comma-separated formats (any subset): " + ", ".join(EXPORT_FORMATS)),
    calib: int = typer.Option(200, "--calib", help="int8 calibration: number of training images (seeded sample)"),
    max_drop: float = typer.Option(2.0, "--max-drop", help="int8 fails if it loses more accuracy points than this"),
    keep_going: bool = typer.Option(False, "--keep-going", help="A failed format gets a reason; the others finish"),
    size_budget: float = typer.Option(
        30.0, "--size-budget",
        help="int8 files above this % of their fp32 file give per-tensor weight scales to the layers that lose "
             "least by it, if accuracy holds (0 = off: converter's per-channel file)"),
) -> None:
    """Export TFLite and ONNX artifacts (float, and int8 with --int8), each parity-checked."""
    from .export import export_run

    export_run(run, formats=format, int8=int8, calib=calib, max_drop=max_drop, keep_going=keep_going,
               size_budget=size_budget)


# ---- bench / predict (issue 4) ---------------------------------------------------------------------
@app.command()
@cli_errors
def bench(
    target: list[Path] = typer.Argument(..., help="Run directory or artifact files (.tflite, .onnx, model.keras)"),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled folder DIR/<class>/ (default: the run's val split)"),
    device: Optional[str] = typer.Option(None, "--device", help="Device profile from devices/ (e.g. rpi4, rpi5, laptop-x86)"),
    threads: Optional[str] = typer.Option(None, "--threads", help="Thread counts to sweep, e.g. 1,2,4 (default 1 or the profile's)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON results to this file"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for bench.json/.csv/.png (default RUN/bench/<device>-<date>.*)"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Previous bench JSON: show the change per row"),
    min_time: float = typer.Option(2.0, "--min-time", help="Minimum timed seconds per row (after warm-up)"),
    min_runs: int = typer.Option(50, "--min-runs", help="Minimum timed runs per row"),
    formats: Optional[str] = typer.Option(None, "--format", help="Only these registry formats, comma-separated"),
    emulate: bool = typer.Option(False, "--emulate", help="Also run each TFLite/ONNX file on the --device's aarch64 "
                                 "core under QEMU: accuracy and top-1 agreement with this machine, no latency "
                                 "(needs `make arm-env`)"),
) -> None:
    """On-CPU latency, accuracy, size and memory of every artifact, side by side (no TensorFlow needed)."""
    from .bench import bench as run_bench

    con = Console()
    res = run_bench(target, data_dir=data, device=device, threads=threads, json_path=json_out, out=out,
                    compare=compare, min_time=min_time, min_runs=min_runs, formats=formats, emulate=emulate,
                    console=con)
    model = next((r["file"] for r in res["rows"] if r["status"] == "ok" and r["format"] != "keras"), None)
    if model:
        con.print(f"next: edgetl predict {model} IMAGE_OR_DIR", highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def predict(
    model: Path = typer.Argument(..., help=".tflite or .onnx file exported by edgetl"),
    images: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)"),
    top_k: int = typer.Option(3, "--top-k", "-k", help="How many labels to show per image"),
    json_: bool = typer.Option(False, "--json", help="Print one JSON document to stdout"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for the runtime"),
) -> None:
    """Top-k labels for images, from a single exported file (no TensorFlow needed)."""
    from .predict import predict as run_predict

    doc = run_predict(model, images, top_k=top_k, as_json=json_, threads=threads, console=Console())
    if json_ and doc["skipped"]:
        err.print(f"{len(doc['skipped'])} unreadable image(s) skipped (listed under \"skipped\")", highlight=False)


# ---- compare (issue 5) -----------------------------------------------------------------------------
@app.command()
@cli_errors
def compare(
    data: Optional[Path] = typer.Argument(None, help="Image folder, as for train"),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Folder for compare.json/.csv and the plot"),
    fractions: str = typer.Option("0.1,0.25,0.5,1.0", help="Fractions of the training images (stratified, nested), "
                                  "each in (0, 1]"),
    budget: str = typer.Option("4x", help="From-scratch budget per fraction: Nx (times the fine-tuning arm's time "
                               "at that fraction), Ns/Nm (wall clock), Nep (epochs); comma-separated limits, "
                               "first reached wins, e.g. 30ep,300s"),
    target: Optional[float] = typer.Option(None, help="Accuracy for the 'data needed' row (default: 0.9 x the best "
                                           "accuracy any arm reached)"),
    alpha: Optional[float] = typer.Option(None, help="MobileNetV2 width: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 (default 1.0)"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size in px for all arms, 96-224 "
                                             "(default 224)"),
    weights: str = typer.Option("imagenet", help="Pretrained weights of the transfer arms: 'imagenet', a .h5 path, "
                                "or 'random'"),
    epochs: int = typer.Option(30, help="Head epochs on cached features (early stopping on val loss)"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-3, help="Head learning rate (Adam)"),
    head: str = typer.Option("linear", help="'linear' or 'dense128' (all arms)"),
    patience: int = typer.Option(5, help="Early-stopping patience of the transfer arms"),
    fine_tune: int = typer.Option(20, "--fine-tune", metavar="LAYERS",
                                  help="Top base layers trained in the fine-tuning arm; 0 drops that arm"),
    fine_tune_epochs: int = typer.Option(5, "--fine-tune-epochs"),
    fine_tune_lr: Optional[float] = typer.Option(None, "--fine-tune-lr", help="Fine-tuning learning rate (default: --lr / 20)"),
    scratch_lr: float = typer.Option(1e-3, "--scratch-lr", help="From-scratch learning rate (Adam)"),
    val_split: float = typer.Option(0.2, "--val-split", help="Validation fraction for a flat DATA folder"),
    seed: int = typer.Option(0, help="Random seed (same split and seed for every arm)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder"),
) -> None:
    """Measure transfer learning (feature extraction, fine-tuning) against training from scratch on your data."""
    from .compare import CompareConfig, compare as run_compare, validate as validate_compare

    cfg = CompareConfig(
        data=str(data) if data is not None else None, out=str(out), fractions=fractions, budget=budget,
        target=target, alpha=alpha, image_size=image_size, weights=weights, epochs=epochs, batch_size=batch_size,
        lr=lr, head=head, patience=patience, fine_tune=fine_tune, fine_tune_epochs=fine_tune_epochs,
        fine_tune_lr=fine_tune_lr, scratch_lr=scratch_lr, val_split=val_split, seed=seed, overwrite=overwrite)
    run_compare(cfg, Console(stderr=True), prepared=validate_compare(cfg))


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
