"""`edgetl search`'s options and their checks, made before any work and without TensorFlow: the space
(widths, sizes, heads, dropout, augmented views, artifact formats), the device and its budget."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..core import data as datamod
from ..core import images
from ..core.config import opt
from ..core.errors import EdgetlError
from ..core.formats import EXPORT_FORMATS
from ..model.backbone import (ALPHAS, PRETRAINED_SIZES, WEIGHTS_ENV, _keras_cache_dir, check_backbone_options,
                              keras_weights_name)
from ..model.graph import HEADS
from ..model.recipe import Recipe, check_int, check_recipe

SEARCH_FILE = "search.json"
JOURNAL_FILE = "search.journal"  # the Optuna study (JournalStorage): `optuna-dashboard OUT/search.journal`
STUDY_NAME = "edgetl-search"
OPTIONS_ATTR = "options"  # the study's user attribute recording study_options()
BEST_DIR = "best"
DEFAULT_ALPHAS = (0.35, 0.5)  # downloaded when no weights file is at hand (`--alphas auto`)
DEFAULT_SIZES = ",".join(map(str, PRETRAINED_SIZES))
DEFAULT_FORMATS = ",".join(EXPORT_FORMATS)
MAX_DROPOUT = 0.6


@dataclass
class SearchConfig(Recipe):
    """Every `edgetl search` option: the recipe train uses (its loop settings apply to every trial) plus the
    space, the device and its budget."""

    out: str = opt("runs/search", "Folder for the study, search.json, the Pareto plot and best/", "--out", "-o")
    alpha: float | None = opt(None, "", cli=False)
    image_size: int | None = opt(None, "", cli=False)
    head: str = opt("linear", "", cli=False)
    dropout: float = opt(0.5, "", cli=False)
    fine_tune: str = opt("off", "", cli=False)
    fine_tune_epochs: int = opt(8, "", cli=False)
    fine_tune_lr: float = opt(1e-4, "", cli=False)
    augment: int = opt(2, "Most augmented views per training image a trial may use (0..N are searched)")
    max_train_views: int = opt(0, "", cli=False)  # the views are searched: every trial gets the ones it asks for
    test: str | None = opt(None, "Labelled folder DIR/<class>/ scored once, on the best run only (DATA's own test/ "
                                 "folder is used without it)")
    device: str = opt("this", "'this' (latency measured on this machine) or a device profile (rpi4, rpi5, "
                              "laptop-x86, a .toml path: latency estimated)")
    max_latency_ms: float = opt(..., "Latency budget per image, batch 1, at the device's thread count (ms)")
    max_size_mb: float | None = opt(None, "File size budget (MB)")
    max_ram_mb: float | None = opt(None, "Peak RAM budget of the runtime process (MB)")
    threads: int | None = opt(None, "Threads for latency (default: 1 on 'this', the profile's largest count)")
    trials: int = opt(30, "Finished trials to reach (with --resume: in all)")
    time_budget: float | None = opt(None, "Stop starting trials after this many seconds", metavar="S")
    alphas: str = opt("auto", "Widths to search: 'auto' (every width whose ImageNet weights are at hand: "
                              f"${WEIGHTS_ENV}, Keras' cache, --weights; else 0.35,0.5 downloaded) or a list")
    sizes: str = opt(DEFAULT_SIZES, "Input sizes to search (px)")
    formats: str = opt(DEFAULT_FORMATS, "Artifact formats to search")
    heads: str = opt(",".join(HEADS), "Heads to search")
    search_workers: int = opt(1, "Local processes running trials on the same study", "--workers")
    ray: str | None = opt(None, "Run the trials on a Ray cluster through Ray Tune's Optuna search: ADDRESS, or "
                                "'auto' (the local cluster, started if none runs); needs pip install edgetl[cluster]",
                          metavar="ADDRESS")
    resume: bool = opt(False, "Continue the study in --out (finished trials are kept, never repeated)", "--resume")
    export_best: bool = opt(True, "Train the best feasible trial into OUT/best and export its file",
                            "--export-best/--no-export-best")
    min_time: float = opt(0.5, "Seconds of timed runs per latency measurement", cli=False)


@dataclass
class Prepared:
    cfg: SearchConfig
    split: datamod.Split
    alphas: list[float]
    sizes: list[int]
    formats: list[str]
    heads: list[str]


def _floats(flag: str, text: str) -> list[float]:
    try:
        return sorted({float(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise EdgetlError(f"{flag} {text}: give comma-separated numbers") from None


def available_alphas(weights: str) -> list[float]:
    """Widths whose ImageNet weights are at hand without a download ($EDGETL_WEIGHTS_DIR, Keras' cache);
    none at hand: DEFAULT_ALPHAS (Keras downloads them)."""
    dirs = [Path(d) for d in (os.environ.get(WEIGHTS_ENV), str(_keras_cache_dir())) if d]
    found = [a for a in ALPHAS if any((d / keras_weights_name(a, 224)).is_file() for d in dirs)]
    return found or list(DEFAULT_ALPHAS)


def validate(cfg: SearchConfig) -> Prepared:
    """Every option and the data scan; one EdgetlError naming the flag. Never imports TensorFlow."""
    if cfg.max_latency_ms is ... or cfg.max_latency_ms is None:
        raise EdgetlError("--max-latency-ms: missing; give the latency budget per image in ms, e.g. 5")
    for flag, v in (("--max-latency-ms", cfg.max_latency_ms), ("--max-size-mb", cfg.max_size_mb),
                    ("--max-ram-mb", cfg.max_ram_mb), ("--time-budget", cfg.time_budget)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise EdgetlError(f"{flag} {v}: must be a number > 0")
    check_int("--trials", cfg.trials, 1)
    check_int("--workers", cfg.search_workers, 1)
    if cfg.ray is not None:
        import importlib.util

        if not cfg.ray.strip():
            raise EdgetlError("--ray: give a cluster ADDRESS (host:port, ray://host:port) or 'auto'")
        if importlib.util.find_spec("ray") is None:
            raise EdgetlError(f"--ray {cfg.ray}: Ray is not installed; pip install 'edgetl[cluster]' (ray[tune])")
    if cfg.threads is not None:
        check_int("--threads", cfg.threads, 1)
    if cfg.weights == "random":
        alphas = list(DEFAULT_ALPHAS) if cfg.alphas == "auto" else _floats("--alphas", cfg.alphas)
    elif cfg.weights != "imagenet":
        if cfg.alphas == "auto":
            raise EdgetlError(f"--weights {cfg.weights}: give the file's width with --alphas (e.g. --alphas 0.35)")
        alphas = _floats("--alphas", cfg.alphas)
    else:
        alphas = available_alphas(cfg.weights) if cfg.alphas == "auto" else _floats("--alphas", cfg.alphas)
    sizes = sorted({int(s) for s in _floats("--sizes", cfg.sizes)})
    if not alphas or not sizes:
        raise EdgetlError("--alphas / --sizes: give at least one value each")
    for a in alphas:
        for s in sizes:
            check_backbone_options(a, s, cfg.weights)
    formats = [f.strip() for f in cfg.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise EdgetlError(f"--formats {cfg.formats}: accepted values are {', '.join(EXPORT_FORMATS)}")
    heads = [h.strip() for h in cfg.heads.split(",") if h.strip()]
    if not heads or any(h not in HEADS for h in heads):
        raise EdgetlError(f"--heads {cfg.heads}: accepted values are {', '.join(HEADS)}")
    _check_out(cfg)
    split = datamod.scan(cfg.data, cfg.val_split, cfg.seed, cfg.test)
    p = Prepared(cfg, split, alphas, sizes, formats, heads)
    if cfg.resume:
        _check_resume(p)
    return p


def study_options(p: Prepared) -> dict:
    """What a study's trials depend on, by flag (a --resume must give the same): the data, the split, the
    space, the device and its budget, the head's loop settings and the image preprocessing."""
    cfg = p.cfg

    def path(v):
        return str(Path(v).expanduser().resolve()) if v else None

    weights = cfg.weights if cfg.weights in ("imagenet", "random") else path(cfg.weights)
    return {"DATA": path(cfg.data), "--test": path(cfg.test), "--val-split": cfg.val_split, "--seed": cfg.seed,
            "--weights": weights, "--device": cfg.device, "--max-latency-ms": cfg.max_latency_ms,
            "--max-size-mb": cfg.max_size_mb, "--max-ram-mb": cfg.max_ram_mb, "--threads": cfg.threads,
            "--alphas": list(p.alphas), "--sizes": list(p.sizes), "--formats": list(p.formats),
            "--heads": list(p.heads), "--augment": cfg.augment, "--epochs": cfg.epochs,
            "--batch-size": cfg.batch_size, "--lr": cfg.lr, "--patience": cfg.patience,
            "--head-start": cfg.head_start,
            "preprocessing": dict(images.MOBILENET_V2_PREPROCESSING)}


def study_storage(out: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))


def recorded_options(out: Path) -> dict | None:
    """The options the study in `out` was started with; None when its journal holds no study or trial yet, {}
    for a study with trials that records none."""
    journal = out / JOURNAL_FILE
    if not journal.is_file() or journal.stat().st_size == 0:
        return None
    import optuna

    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(out))
    except KeyError:  # a journal without this study
        return None
    options = dict(study.user_attrs.get(OPTIONS_ATTR) or {})
    return options if options or study.get_trials(deepcopy=False) else None


def _check_resume(p: Prepared) -> None:
    """--resume continues a study only with the options it was started with: its finished trials and its
    cached features would otherwise be mixed with ones made under other settings."""
    out = Path(p.cfg.out)
    recorded = recorded_options(out)
    if recorded is None:
        return
    if not recorded:
        raise EdgetlError(f"--resume: {out} holds a search that records no options (made by another edgetl "
                          "version); pass --overwrite to start a new search")
    now = study_options(p)
    for flag, v in now.items():
        was = recorded.get(flag)
        if was == v:
            continue
        if flag not in recorded:
            raise EdgetlError(f"--resume: {out} was searched by another edgetl version, which records no {flag}; "
                              "pass --overwrite to start a new search")
        if flag == "preprocessing":
            raise EdgetlError(f"--resume: {out} was searched with another image preprocessing (another edgetl "
                              "version), so its features do not apply; pass --overwrite to start a new search")
        raise EdgetlError(f"--resume: {out} was searched with {flag} {_shown(was)}, not {_shown(v)}; give the "
                          "options it was started with, or --overwrite to start a new search")


def _shown(v) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _check_out(cfg: SearchConfig) -> None:
    """--out: a new or empty folder, an edgetl search to --resume, or one to replace with --overwrite; never
    DATA, inside it or around it. The recipe's checks run with OUT/best, the run the search writes."""
    out = Path(cfg.out)
    journal = out / JOURNAL_FILE
    if cfg.data:
        ro, rd = out.resolve(), Path(cfg.data).resolve()
        if ro == rd or rd in ro.parents or ro in rd.parents:
            raise EdgetlError(f"--out {out}: is, sits inside or contains DATA {cfg.data}; choose another --out")
    if cfg.resume and not journal.is_file():
        raise EdgetlError(f"--resume: {out} holds no search to resume ({JOURNAL_FILE} missing); drop --resume")
    if not cfg.resume and out.is_dir() and any(out.iterdir()):
        if not journal.is_file():
            raise EdgetlError(f"--out {out}: holds files and is not an edgetl search ({JOURNAL_FILE}); choose "
                              "another --out")
        if not cfg.overwrite:
            raise EdgetlError(f"--out {out}: already holds a search; pass --resume to continue it or --overwrite "
                              "to start again")
    elif out.exists() and not out.is_dir():
        raise EdgetlError(f"--out {out} exists and is not a folder")
    check_recipe(dataclasses.replace(cfg, out=str(out / BEST_DIR), overwrite=True))
