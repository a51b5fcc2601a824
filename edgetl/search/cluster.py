"""--ray ADDRESS: the study of `edgetl search` run on a Ray cluster through Ray Tune's Optuna search.

Ray Tune's OptunaSearch asks the same Optuna study (the journal in OUT, the same seeded, constrained TPE
sampler and the same define-by-run space), each trial runs `Searcher.evaluate` in a Ray worker (one CPU
per trial; features and probes shared through OUT, which the cluster's nodes must all see), and the
results, constraints included, are told back to the study: search.json, --resume and the best run are
the local search's own. `--workers N` caps the trials running at once (default: as many as the cluster's
CPUs allow).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from .config import STUDY_NAME, study_storage
from .trials import CONSTRAINTS, Searcher, completed, load_study, record, sampler, suggest

_SEARCHERS: dict = {}  # one Searcher per Ray worker process (its features stay in memory between trials)


def _trainable(config: dict, cfg, p, measure, profile) -> None:
    from ray import tune
    from rich.console import Console

    if cfg.out not in _SEARCHERS:
        _SEARCHERS[cfg.out] = Searcher(cfg, p, measure, profile, Console(stderr=True, quiet=True))
    res = _SEARCHERS[cfg.out].evaluate(config, -1)
    flat = {k: v for k, v in res.items() if k != "constraints"}
    flat.update({f"constraint_{k}": v for k, v in zip(CONSTRAINTS, res["constraints"])})
    tune.report(flat)


def _space(trial, cfg, p):
    suggest(trial, cfg, p)  # define-by-run: the suggestions are the configuration


def run_on_ray(cfg, p, measure, profile, console, n_startup: int, deadline: float | None) -> None:
    import ray
    from ray.tune.search.optuna import OptunaSearch

    class EdgetlOptunaSearch(OptunaSearch):
        """Ray Tune's Optuna search that also tells the study each trial's attributes and constraints."""

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot = self._ot_trials.get(trial_id)
            if ot is not None and result and "val_accuracy" in result:
                res = {k: result[k] for k in ("val_accuracy", "n_val", "best_epoch", "latency_ms", "latency_source",
                                               "size_mb", "ram_mb", "threads", "macs", "head_seconds", "seconds")}
                res["constraints"] = [result[f"constraint_{k}"] for k in CONSTRAINTS]
                record(ot, res)
                ot.set_user_attr("via", "ray")
            super().on_trial_complete(trial_id, result, error)

    out = Path(cfg.out).resolve()
    cfg = dataclasses.replace(cfg, out=str(out), data=str(Path(cfg.data).resolve()))
    remaining = cfg.trials - completed(load_study(out, cfg.seed, n_startup))
    if remaining <= 0:
        return
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = not ray.is_initialized()
    ray.init(address=None if cfg.ray == "auto" else cfg.ray, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        _tune(cfg, p, measure, profile, console, n_startup, deadline, out, remaining, EdgetlOptunaSearch)
    finally:
        if started:
            ray.shutdown()


def _tune(cfg, p, measure, profile, console, n_startup, deadline, out: Path, remaining: int, search_cls) -> None:
    import time

    import ray
    from ray import tune

    console.print(f"--ray {cfg.ray}: {ray.cluster_resources().get('CPU', 0):g} CPUs; {remaining} trial(s) to run",
                  highlight=False)
    search = search_cls(space=functools.partial(_space, cfg=cfg, p=p), metric="val_accuracy", mode="max",
                        sampler=sampler(cfg.seed, n_startup), study_name=STUDY_NAME, storage=study_storage(out))
    trainable = tune.with_resources(tune.with_parameters(_trainable, cfg=cfg, p=p, measure=measure,
                                                         profile=profile), {"cpu": 1})
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        search_alg=search, num_samples=remaining,
        max_concurrent_trials=cfg.search_workers if cfg.search_workers > 1 else None,
        time_budget_s=None if deadline is None else max(1.0, deadline - time.time())),
        run_config=tune.RunConfig(storage_path=str(out / "ray"), name="tune", verbose=0))
    tuner.fit()
