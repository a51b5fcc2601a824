"""edgetl's command line. Thin: each command's options come from its stage's config dataclass (one place for
defaults, flags and help), the stage does the work, and user errors become one line. TensorFlow is never
imported here; train, export and compare import it lazily, bench and predict never do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import signal
import sys
import threading
import typing
from pathlib import Path

import typer
from rich.console import Console

from .bench.config import BenchConfig
from .compare.config import CompareConfig
from .core.config import check_floats
from .core.console import shown
from .core.errors import EdgetlError, Terminated, no_space
from .export.config import ExportConfig
from .predict import PredictConfig
from .search.config import SearchConfig
from .train.config import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning to small, fast, verified models on a CPU: train -> export -> bench.")
err = Console(stderr=True)


def command(config_cls):
    """Register a command whose options are the fields of `config_cls`; the function receives the config.
    Bad input gives one line (exit 2, or 3 for a failed check), Ctrl-C 'interrupted' (exit 130)."""
    hints = typing.get_type_hints(config_cls)

    def deco(fn):
        params = []
        for f in dataclasses.fields(config_cls):
            m = f.metadata
            if not m.get("cli", False):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            info = (typer.Argument(default, help=m["help"], metavar=m["metavar"]) if m["argument"] else
                    typer.Option(default, *m["flags"], help=m["help"], metavar=m["metavar"]))
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                            annotation=hints[f.name]))

        @functools.wraps(fn)
        def run(**kwargs):
            try:
                with sigterm_as_interrupt():
                    cfg = config_cls(**kwargs)
                    check_floats(cfg)
                    return fn(cfg)
            except EdgetlError as e:
                err.print(f"[bold red]error:[/] {shown(e)}", highlight=False, soft_wrap=True)
                raise typer.Exit(e.exit_code) from None
            except Exception as e:  # a full disk or a file-size limit: one line naming the place
                full = no_space(e)
                if full is None:
                    raise
                where = full.filename or _output_of(kwargs)
                err.print(f"[bold red]error:[/] {shown(where)}: {full.strerror}; the previous files there are "
                          "intact (nothing was left half-written); free space or raise the limit, then run again",
                          highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as e:
                term = isinstance(e, Terminated)
                err.print(f"[bold red]{'terminated' if term else 'interrupted'}[/]: nothing was left half-written")
                raise typer.Exit(128 + (signal.SIGTERM if term else signal.SIGINT)) from None

        run.__signature__ = inspect.Signature(params)
        return app.command(name=fn.__name__)(run)

    return deco


@command(TrainConfig)
def train(cfg: TrainConfig) -> None:
    """Train a classifier: frozen ImageNet MobileNetV2 + new head, optional fine-tuning and QAT."""
    from .train.config import validate
    from .train.stage import train as run_train

    run_train(cfg, Console(stderr=True), prepared=validate(cfg))
    _fast_exit_after_tensorflow()


@command(ExportConfig)
def export(cfg: ExportConfig) -> None:
    """Export TFLite and ONNX artifacts (float, and int8 with --int8), each parity-checked."""
    from .export.stage import export_run

    export_run(cfg.run, formats=cfg.format, int8=cfg.int8, calib=cfg.calib, max_drop=cfg.max_drop,
               keep_going=cfg.keep_going, size_budget=cfg.size_budget, seed=cfg.seed, verbose=cfg.verbose)


@command(BenchConfig)
def bench(cfg: BenchConfig) -> None:
    """On-CPU latency, accuracy, size and memory of every artifact, side by side (no TensorFlow needed)."""
    from .bench.stage import bench as run_bench

    con = Console()
    res = run_bench([Path(p) for p in cfg.target], data_dir=cfg.data, device=cfg.device, threads=cfg.threads,
                    json_path=cfg.json_out, out=cfg.out, compare=cfg.compare, min_time=cfg.min_time,
                    min_runs=cfg.min_runs, formats=cfg.formats, emulate=cfg.emulate, console=con,
                    verify=not cfg.no_verify, verbose=cfg.verbose, amx=cfg.amx, remote=cfg.remote,
                    ssh_options=cfg.ssh_option, remote_python=cfg.remote_python, wheelhouse=cfg.wheelhouse,
                    remote_timeout=cfg.remote_timeout)
    model = next((r["file"] for r in res["rows"] if r["status"] == "ok" and r["format"] != "keras"), None)
    if model:
        con.print(f"next: edgetl predict {model} IMAGE_OR_DIR", highlight=False, soft_wrap=True)


@command(PredictConfig)
def predict(cfg: PredictConfig) -> None:
    """Top-k labels for images, from a single exported file (no TensorFlow needed)."""
    from .predict import predict as run_predict

    doc = run_predict(cfg.model, cfg.images, top_k=cfg.top_k, as_json=cfg.json, threads=cfg.threads,
                      console=Console(), verify=not cfg.no_verify, verbose=cfg.verbose, amx=cfg.amx)
    if cfg.json and doc["skipped"]:
        err.print(f"{len(doc['skipped'])} unreadable image(s) skipped (listed under \"skipped\")", highlight=False)


@command(CompareConfig)
def compare(cfg: CompareConfig) -> None:
    """Measure transfer learning (feature extraction, fine-tuning) against training from scratch on your data."""
    from .compare.config import validate
    from .compare.stage import compare as run_compare

    run_compare(cfg, Console(stderr=True), prepared=validate(cfg))


def _output_of(kwargs: dict) -> str:
    """What a command writes, for a message: --out, else RUN."""
    return str(kwargs.get("out") or kwargs.get("run") or "the output folder")


@command(SearchConfig)
def search(cfg: SearchConfig) -> None:
    """The most accurate model whose file fits a device's latency, size and RAM budget (Optuna study in --out)."""
    from .bench.devices import load_device
    from .bench.worker import run_worker
    from .search.config import BEST_DIR, validate
    from .search.stage import search as run_search

    p = validate(cfg)
    profile = None if cfg.device == "this" else load_device(cfg.device)
    con = Console(stderr=True)
    report = run_search(cfg, p, run_worker, profile, con)
    if report["best"] is None:
        raise typer.Exit(1)
    if cfg.export_best:
        _train_and_export_best(cfg, report, Path(cfg.out), Path(cfg.out) / BEST_DIR, con)
        con.print(f"next: edgetl bench {Path(cfg.out) / BEST_DIR}" + (f" --device {cfg.device}" if profile else ""),
                  highlight=False, soft_wrap=True)
    _fast_exit_after_tensorflow()


def _train_and_export_best(cfg: SearchConfig, report: dict, out: Path, best_dir: Path, con) -> None:
    """The best trial's configuration trained into OUT/best by train, its file written and checked by export
    (the stages talk through the run directory)."""
    from .export.stage import export_run
    from .search.stage import record_best_run
    from .train.config import TrainConfig, validate as validate_train
    from .train.stage import train as run_train

    c = report["best"]["config"]
    tcfg = TrainConfig(**{**cfg.recipe(), "alpha": c["alpha"], "image_size": c["image_size"], "head": c["head"],
                          "dropout": round(c["dropout"], 2), "augment": c["augment"], "fine_tune": "off",
                          "out": str(best_dir), "overwrite": True}, test=cfg.test)
    con.rule(f"best trial {report['best']['trial']} -> {best_dir}")
    res = run_train(tcfg, con, prepared=validate_train(tcfg))
    manifest = export_run(best_dir, formats=c["format"], seed=cfg.seed, console=con, verbose=cfg.verbose)
    rep = record_best_run(out, best_dir, res.meta, manifest, c["format"])
    b = rep["best"]
    test = (f", test accuracy {b['test_accuracy']:.3f} ({b['n_test']} images)" if b.get("test_accuracy") is not None
            else "")
    con.print(f"{best_dir}: val accuracy {b['run_val_accuracy']:.3f}{test}; {b['file']} "
              f"{b['file_size_mb']:.2f} MB", highlight=False)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While a command runs, SIGTERM raises Terminated (a KeyboardInterrupt): the clean-up that Ctrl-C gets
    (partial folders and temp files removed, the manifest consistent) runs for `kill` too. Later SIGTERMs
    are ignored so that the clean-up finishes. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fast_exit_after_tensorflow() -> None:
    """TensorFlow's interpreter teardown takes ~1.7 s on a 2-core machine, after every file is already
    written (atomically) and closed. In the real `edgetl` process, skip it; never inside another program
    (typer's CliRunner, pytest, `app()` called from Python). EDGETL_NO_FAST_EXIT=1 disables it."""
    if os.environ.get("EDGETL_NO_FAST_EXIT") or "typer.testing" in sys.modules or "pytest" in sys.modules:
        return
    if Path(sys.argv[0]).name not in ("edgetl", "__main__.py"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:  # pragma: no cover - console script
    app()
