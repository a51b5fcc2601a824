"""What one trial of `edgetl search` does, the same in this process, in --workers processes and in Ray
workers: its configuration (define-by-run suggestions), base features of its (alpha, size) pair made once
through the learning session and kept in OUT/features/, the head trained on them with train's loop, the
file's probe (search.probe), and its results and constraints recorded in the Optuna study."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..core import images
from ..model import backbone
from ..model.graph import count_macs
from ..model.predict import evaluate_head
from ..model.recipe import DEFAULT_ALPHA, DEFAULT_SIZE, Recipe
from ..model.session import Session, fresh_keras
from .config import MAX_DROPOUT, STUDY_NAME, Prepared, SearchConfig, study_storage
from .probe import Prober, locked

CONSTRAINTS = ("latency_ms", "size_mb", "ram_mb")
FEATURES_DIR = "features"
CALIB_IMAGES = 8


def sampler(seed: int, n_startup: int):
    """Constrained TPE: the trials' constraint values (Trial.set_constraint) steer it towards feasible ones."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)


def load_study(out: Path, seed: int, n_startup: int):
    import optuna

    return optuna.create_study(study_name=STUDY_NAME, storage=study_storage(out), sampler=sampler(seed, n_startup),
                               direction="maximize", load_if_exists=True)


def completed(study) -> int:
    import optuna

    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


class Searcher:
    """The objective of one process: features per (alpha, size), probes, trials."""

    def __init__(self, cfg: SearchConfig, p: Prepared, measure, profile: dict | None, console):
        self.cfg, self.p, self.console, self.out = cfg, p, console, Path(cfg.out)
        self.features: dict = {}
        self.threads = cfg.threads or (max(profile["threads"]) if profile else 1)
        peak = None
        if profile:
            pk = profile.get("peak") or {}
            peak = pk.get("fp32_gmacs_per_core") or (pk.get("fp32_gflops_per_core") or 0) / 2 or None
            if peak is None:
                from ..core import cpu

                peak = cpu.peak().get("fp32_gmacs_per_core")
        self.weights = {a: backbone.resolve_weights(cfg.weights, a, 224) for a in p.alphas}
        self.probers = {a: Prober(self.out, self.weights[a], cfg.seed, self.threads, measure, profile, peak,
                                  cfg.min_time) for a in p.alphas}

    def pair(self, alpha: float, size: int) -> dict:
        """Base features of every image and view at (alpha, size): from OUT/features/, else computed once."""
        key = (alpha, size)
        if key in self.features:
            return self.features[key]
        path = self.out / FEATURES_DIR / f"a{alpha:g}-{size}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path.with_suffix(".lock")):  # computed once across --workers
            if not path.is_file():
                self._compute_pair(alpha, size, path)
        with np.load(path) as z:
            self.features[key] = {k: z[k] for k in z.files}
        return self.features[key]

    def _compute_pair(self, alpha: float, size: int, path: Path) -> None:
        """Decode and compute the base features of every image and view at (alpha, size) (model.session)."""
        cfg = dataclasses.replace(self.cfg, alpha=alpha, image_size=size)
        t = time.perf_counter()
        s = Session(cfg, SimpleNamespace(split=self.p.split, alpha=alpha, image_size=size), self.console,
                    images.preprocessing_spec(size), t, t)
        s.weights = dict(self.weights[alpha])
        s.load()
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.npz")
        np.savez(tmp, f_tr=s.f_tr, f_va=s.f_va, f_te=s.f_te, tr_y=s.tr_y, va_y=s.va_y, te_y=s.te_y,
                 calib=s.tr_px[np.linspace(0, len(s.tr_px) - 1, CALIB_IMAGES).astype(int)],
                 macs=count_macs(s.base), seconds=time.perf_counter() - t,
                 engine=s.features.get("engine", ""))
        os.replace(tmp, path)  # atomic: a killed search never leaves half a file

    def objective(self, trial) -> float:
        try:
            res = self.evaluate(self.suggest(trial), trial.number)
        except KeyboardInterrupt:  # recorded as FAIL by Optuna; --resume runs it again
            trial.set_user_attr("interrupted", True)
            raise
        record(trial, res)
        return res["val_accuracy"]

    def suggest(self, trial) -> dict:
        return suggest(trial, self.cfg, self.p)

    def evaluate(self, c: dict, number: int) -> dict:
        """One configuration: its head trained on the pair's features (val accuracy), its file's probe, and
        what it misses each budget by (<= 0: met)."""
        cfg, p = self.cfg, self.p
        alpha, size, head, fmt, views = c["alpha"], c["image_size"], c["head"], c["format"], c["augment"]
        t0 = time.perf_counter()
        z = self.pair(alpha, size)
        t_cfg = dataclasses.replace(cfg, alpha=alpha, image_size=size, head=head, dropout=round(c["dropout"], 2),
                                    augment=views)
        s = Session(t_cfg, SimpleNamespace(split=p.split, alpha=alpha, image_size=size), self.console,
                    images.preprocessing_spec(size), t0, t0)
        s.f_tr, s.f_va, s.tr_y, s.va_y = z["f_tr"], z["f_va"], z["tr_y"], z["va_y"]
        fresh_keras(cfg.seed)
        model = s.new_head()
        hist = s.fit_head(model, *s.train_views(1 + views), desc=f"trial {number}")
        acc, _ = evaluate_head(model, s.f_va, s.va_y)
        head_s = time.perf_counter() - t0
        pr = self.probers[alpha].get(alpha, size, head, fmt, s.classes, z["calib"])
        misses = [pr["latency_ms"] - cfg.max_latency_ms,
                  pr["size_mb"] - cfg.max_size_mb if cfg.max_size_mb else -1.0,
                  pr["ram_mb"] - cfg.max_ram_mb if cfg.max_ram_mb else -1.0]
        feasible = all(v <= 0 for v in misses)
        self.console.print(f"trial {number:>3}: alpha {alpha:g} {size} px {head} dropout {c['dropout']:.1f} "
                           f"+{views} views {fmt}: val accuracy [bold]{acc:.3f}[/], {pr['latency_ms']:.2f} ms "
                           f"({pr['latency_source']}), {pr['size_mb']:.2f} MB, {pr['ram_mb']:.0f} MB RAM"
                           f"{'' if feasible else ' [yellow](over budget)[/]'}", highlight=False)
        return {"val_accuracy": acc, "n_val": int(len(s.va_y)), "best_epoch": hist["best_epoch"],
                "latency_ms": pr["latency_ms"],
                "latency_source": pr["latency_source"], "size_mb": pr["size_mb"], "ram_mb": pr["ram_mb"],
                "threads": pr["threads"], "macs": pr["macs"], "head_seconds": round(head_s, 3),
                "seconds": round(time.perf_counter() - t0, 3), "constraints": misses}


def suggest(trial, cfg: SearchConfig, p: Prepared) -> dict:
    """A trial's configuration (Optuna's define-by-run: the local study and Ray Tune's search alike)."""
    return {"alpha": trial.suggest_categorical("alpha", p.alphas),
            "image_size": trial.suggest_categorical("image_size", p.sizes),
            "head": trial.suggest_categorical("head", p.heads),
            "dropout": trial.suggest_float("dropout", 0.0, MAX_DROPOUT, step=0.1),
            "augment": trial.suggest_int("augment", 0, cfg.augment),
            "format": trial.suggest_categorical("format", p.formats)}


def baseline(cfg: SearchConfig, p: Prepared) -> list[dict]:
    """The configurations the study starts from: what `edgetl train DATA` trains by default (its width if
    searched, else the narrowest; 224 px, else the largest size; its head, dropout and views) in each
    format of the space, up to a third of the trials. They are the known-good point the search must beat,
    and in one set of features they tell the sampler which format is fastest on this CPU."""
    d = {f.name: f.default for f in dataclasses.fields(Recipe)}
    config = {"alpha": DEFAULT_ALPHA if DEFAULT_ALPHA in p.alphas else min(p.alphas),
              "image_size": DEFAULT_SIZE if DEFAULT_SIZE in p.sizes else max(p.sizes),
              "head": d["head"] if d["head"] in p.heads else p.heads[0],
              "dropout": min(d["dropout"], MAX_DROPOUT), "augment": min(d["augment"], cfg.augment)}
    return [{**config, "format": f} for f in p.formats[:max(1, min(len(p.formats), cfg.trials // 3))]]


def record(trial, res: dict) -> None:
    """A trial's results into the study: user attributes, and the constraints the sampler uses."""
    for k, v in res.items():
        trial.set_user_attr(k, v)
    for k, v in zip(CONSTRAINTS, res["constraints"]):
        trial.set_constraint(k, v)
