"""`edgetl train`: frozen ImageNet MobileNetV2 + new head on cached features, optional fine-tuning,
quantization-aware training and BatchNorm adaptation; writes the run directory.

Where the time goes (hymenoptera, alpha 0.35, 224 px, 2 cores, ~5.4 s in all): the main thread
imports TensorFlow (~2.4 s) and builds the Keras base (~1.1 s) while a thread pool decodes the images
and computes their base features with the backbone's cached TFLite copy (train.features); the head
trains on the cached features (~0.6 s); the run is written (~0.5 s) while a helper process draws the
PNGs (core.plots.PlotProcess). The seed recipe instead recomputes the base for every image in every epoch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np

from ..core import images, rundir
from ..core.console import native_logs_aside, progress
from ..core.errors import EdgetlError
from ..core.images import feature_views, view_pixels
from ..core.plots import PlotProcess
from ..model import backbone, basecache
from ..model.bn import calibrate_random_bn
from ..model.fit import fine_tune, fit_head
from ..model.graph import assemble, build_head, split_model
from ..model.load import load_run_model
from ..model.predict import evaluate, evaluate_head, predict_pixels
from ..model.recipe import FT_LR_FACTOR
from ..model.tfenv import set_seed, tf_and_keras
from .config import Prepared, TrainConfig, TrainResult, validate
from .adapt import adapt_bn, adapt_info as adapt_info_of, source_pixels
from .features import FeaturePipeline
from .qat import qat_phase


def _base_model(cfg: TrainConfig, p: Prepared, weights: dict, tr_px, va_px, va_y, spec: dict, console):
    """(frozen base, head model or None, --from info or None, weights record): a new MobileNetV2, or
    the --from run's model split into base and head (evaluated on the new data first)."""
    _, keras = tf_and_keras()
    set_seed(cfg.seed)
    keras.backend.clear_session()
    set_seed(cfg.seed)
    from_info = None
    if p.from_meta is not None:
        model = load_run_model(cfg.from_run)
        base, head_model = split_model(model)
        acc0, cm0 = evaluate(model, va_px, va_y, spec, cfg.feature_batch)
        from_info = {"run": str(Path(cfg.from_run).resolve()), "classes": list(p.from_meta["classes"]),
                     "val_accuracy_before": acc0, "confusion_matrix_before": cm0,
                     "source_val_accuracy": p.from_meta.get("metrics", {}).get("val_accuracy")}
        weights = dict(p.from_meta.get("weights") or weights)
        console.print(f"--from {cfg.from_run}: val accuracy on the new data before any update: [bold]{acc0:.3f}[/]")
    else:
        base = backbone.build_base(p.alpha, p.image_size, weights["path"])
        head_model = None
        if weights["source"] == "random":
            weights["bn_statistics_from_images"] = calibrate_random_bn(base, tr_px, spec, seed=cfg.seed)
    base.trainable = False
    return base, head_model, from_info, weights


def train(cfg: TrainConfig, console=None, prepared: Prepared | None = None) -> TrainResult:
    """The whole `edgetl train`: validate, decode, features, head, fine-tune/QAT hooks, write the run."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with native_logs_aside(console), contextlib.ExitStack() as cleanup:
        return _train(cfg, console, prepared, cleanup)


def _train(cfg: TrainConfig, console, prepared: Prepared | None, cleanup: contextlib.ExitStack) -> TrainResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name, since):
        timings[name] = round(time.perf_counter() - since, 3)
        return time.perf_counter()

    p = prepared or validate(cfg)
    t = lap("validate", t0)
    split, size, alpha = p.split, p.image_size, p.alpha
    spec = images.preprocessing_spec(size)
    n_classes = len(split.classes)

    weights = {"source": "run", "path": None, "sha256": None}
    if p.from_meta is None:  # mirror / Keras cache / local file: instant; a download fails before any work
        weights = backbone.resolve_weights(cfg.weights, alpha, size)
    t = lap("weights", t)
    # The main thread imports TensorFlow (~3 s of one core; it must be the main thread: tf_keras keeps
    # thread-local state set at import time, e.g. the .keras saving format) and builds the Keras base,
    # while a background thread decodes the images and, when the backbone's TFLite copy is cached,
    # computes every base feature with it: both cores busy, neither oversubscribed. Without a cached
    # copy the main thread makes one (~1 s) after building the base; the features then run on both.
    key = None
    if cfg.base_cache and p.from_meta is None and not cfg.adapt_bn:  # those change the base: TF features
        key = basecache.base_cache_key(weights, alpha, size)
    feat_info: dict = {"engine": "tensorflow", "base_cache": None}
    n_tr = len(split.train)
    views = "+".join(["orig"] + ([f"{cfg.augment} aug"] if cfg.augment else []))
    with progress(console) as prog:
        t_dec = prog.add_task("decode images", total=n_tr + len(split.val))
        t_feat = prog.add_task(f"base features ({views})", total=(n_tr * (1 + cfg.augment) + len(split.val)),
                               visible=key is not None)
        pipe = FeaturePipeline(split.train + split.val, n_tr, size, spec, cfg.augment, cfg.seed,
                               on_decoded=lambda: prog.advance(t_dec),
                               on_features=lambda n: prog.advance(t_feat, n))
        if key is not None:
            cached, why = basecache.read_base_cache(key)
            feat_info = {"engine": "tflite", "base_cache": str(basecache.base_cache_path(key)),
                         "base_cache_status": "hit" if cached else why}
            if cached is not None:
                pipe.start_features(cached)
        else:
            pipe.start_features(None)
        helpers = [threading.Thread(target=pipe.work, daemon=True) for _ in range(max(1, cfg.workers) - 1)]
        for th in helpers:
            th.start()
        try:
            tf_and_keras()
            t = lap("import_tensorflow", t)
            if key is not None:  # build while the helper finishes decoding and features (no bar of its own)
                base, head_model, from_info, weights = _base_model(cfg, p, weights, None, None, None, spec, console)
                t = lap("build_model", t)
            pipe.dec.work()  # help with any decoding left
            pipe.dec.wait_all()
            (tr_px, tr_y, tr_paths, tr_skip), (va_px, va_y, va_paths, va_skip) = pipe.split()
            skipped = list(split.ignored) + tr_skip + va_skip
            for name, ys in (("train", tr_y), ("val", va_y)):
                missing = [c for i, c in enumerate(split.classes) if not (ys == i).any()]
                if missing:
                    raise EdgetlError(f"DATA {cfg.data}: no decodable {name} images for class(es) {missing} "
                                      f"({len(skipped)} file(s) skipped: "
                                      f"{', '.join(Path(s['file']).name for s in skipped[:5])})")
            prog.update(t_feat, total=len(tr_px) * (1 + cfg.augment) + len(va_px))
            t = lap("decode", t)  # decoding left by then (the rest ran during the import)
            if key is not None and not pipe.with_features:  # first run on this backbone: cache its base
                check_x = images.preprocess(tr_px[:4], spec)
                made, why = basecache.write_base_cache(base, key, check_x)
                feat_info["base_cache_status"] = why or "created"
                if made is None:
                    feat_info["engine"] = "tensorflow"
                    console.print(f"[yellow]note[/]: base features through TensorFlow ({why})")
                pipe.start_features(made)
                t = lap("base_cache", t)
            if pipe.with_features:
                pipe.work()  # the main thread helps with the features left
                for th in helpers:
                    th.join()
                if pipe.tflite_error is None:
                    f_tr, f_va = pipe.features()
                    feat_info["thread_seconds"] = round(pipe.seconds, 3)
                else:
                    feat_info.update(engine="tensorflow", base_cache_status=f"failed: {pipe.tflite_error}")
                    console.print(f"[yellow]note[/]: cached TFLite base failed ({pipe.tflite_error}); "
                                  f"base features through TensorFlow")
        finally:
            pipe.start_features(None)  # never leave a helper waiting (errors, Ctrl-C)
    if key is None:  # --from runs evaluate with their own progress bar: outside the one above
        base, head_model, from_info, weights = _base_model(cfg, p, weights, tr_px, va_px, va_y, spec, console)
        t = lap("build_model", t)
    metrics: dict = {}

    adapt_info = None
    if cfg.adapt_bn:
        # re-estimate the base's BN statistics on DATA's training images (no labels); with --from,
        # relative to the source run's own training images when they are still readable
        target = assemble(base, head_model) if head_model is not None else base
        ref = source_pixels(rundir.Run(cfg.from_run), console) if p.from_meta is not None else None
        adapt_bn(target, tr_px, spec, console, reference_pixels=ref)
        base.trainable = False
        adapt_info = {"bn": True, "images": int(len(tr_px)), **adapt_info_of(target)}
        if from_info is not None:  # the run's model after adaptation alone, before any labelled update
            acc_ad, cm_ad = evaluate(assemble(base, head_model), va_px, va_y, spec, cfg.feature_batch)
            adapt_info.update({"val_accuracy_before": from_info["val_accuracy_before"],
                               "val_accuracy_after": acc_ad, "confusion_matrix_after": cm_ad})
            console.print(f"--adapt-bn (no labels): val accuracy on the new data "
                          f"{from_info['val_accuracy_before']:.3f} -> [bold]{acc_ad:.3f}[/]")
        t = lap("adapt_bn", t)

    if feat_info["engine"] == "tensorflow":  # --from / --adapt-bn / random weights / --no-base-cache
        n_feat = len(tr_px) * (1 + cfg.augment) + len(va_px)
        with progress(console) as prog:
            task = prog.add_task(f"base features ({views})", total=n_feat)
            adv = lambda n: prog.advance(task, n)  # noqa: E731
            px, out = {"train": tr_px, "val": va_px}, {"train": [], "val": []}
            for which, v in feature_views(cfg.augment):
                step = 256 if v else max(len(px[which]), 1)  # augmented views in chunks: bounded memory
                for s in range(0, len(px[which]), step):
                    out[which].append(predict_pixels(base, view_pixels(px[which][s:s + step], v, cfg.seed, s),
                                                     spec, cfg.feature_batch, progress=adv))
        f_tr, f_va = np.concatenate(out["train"]), np.concatenate(out["val"])
    y_tr_all = np.tile(tr_y, 1 + cfg.augment)
    t = lap("features", t)
    plotter = PlotProcess()  # imports matplotlib on the other core while the head trains
    cleanup.callback(plotter.close)  # with a cached TFLite base: only what was left after the TensorFlow import

    if head_model is None:
        head_model = build_head(f_tr.shape[1], n_classes, cfg.head, cfg.dropout, cfg.seed)
    history = {"head": fit_head(head_model, (f_tr, y_tr_all), (f_va, va_y), cfg.epochs, cfg.lr, cfg.batch_size,
                                cfg.patience, cfg.seed, console)}
    acc, cm = evaluate_head(head_model, f_va, va_y)
    metrics["head"] = {"val_accuracy": acc, "confusion_matrix": cm,
                       "best_epoch": history["head"]["best_epoch"]}
    model = assemble(base, head_model)
    t = lap("head", t)

    if cfg.fine_tune:
        n_base = sum(1 for layer in base.layers if layer.__class__.__name__ != "InputLayer")
        if cfg.fine_tune > n_base:  # validate() checks BASE_LAYERS before any work; this guards --from models
            raise EdgetlError(f"--fine-tune {cfg.fine_tune}: the base has only {n_base} layers")
        ft_lr = cfg.fine_tune_lr or cfg.lr * FT_LR_FACTOR
        history["fine_tune"] = fine_tune(model, cfg.fine_tune, tr_px, tr_y, va_px, va_y, spec,
                                         cfg.fine_tune_epochs, ft_lr, cfg.batch_size, cfg.augment,
                                         min(cfg.patience, 3), cfg.seed, console)
        acc_ft, cm_ft = evaluate(model, va_px, va_y, spec, cfg.feature_batch)
        metrics["fine_tune"] = {"val_accuracy_before": acc, "val_accuracy_after": acc_ft,
                                "confusion_matrix": cm_ft, "layers": cfg.fine_tune, "lr": ft_lr,
                                "unfrozen_layers": history["fine_tune"]["unfrozen_layers"]}
        metrics["fine_tune"]["kept_weights_before"] = history["fine_tune"]["kept_weights_before"]
        note = (" (no epoch improved the val loss: kept the weights from before fine-tuning)"
                if history["fine_tune"]["kept_weights_before"] else "")
        console.print(f"fine-tune top {cfg.fine_tune} layers: val accuracy {acc:.3f} -> [bold]{acc_ft:.3f}[/]{note}")
        acc, cm = acc_ft, cm_ft
        t = lap("fine_tune", t)

    qat_info = None
    if cfg.qat:
        model, qat_info = qat_phase(model, (tr_px, tr_y), (va_px, va_y), spec, cfg, console)
        acc, cm = evaluate(model, va_px, va_y, spec, cfg.feature_batch)
        metrics["qat"] = {"val_accuracy": acc, "confusion_matrix": cm}
        t = lap("qat", t)

    metrics.update({"val_accuracy": acc, "confusion_matrix": cm, "n_train": int(len(tr_px)),
                    "n_val": int(len(va_px)), "n_train_views": int(len(f_tr)), "n_skipped": len(skipped)})
    meta = {
        "edgetl_version": rundir.edgetl_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": list(split.classes),
        "image_size": size,
        "alpha": alpha,
        "preprocessing": spec,
        "weights": weights,
        "seed": cfg.seed,
        "config": cfg.as_dict(),
        "split": {"data_root": str(Path(cfg.data).resolve()), "layout": split.layout,
                  "val_split": cfg.val_split if split.layout == "flat" else None,
                  # the images the model was trained / validated on (skipped files are under "skipped")
                  "train": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(tr_paths, tr_y)],
                  "val": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(va_paths, va_y)]},
        "skipped": skipped,
        "history": history,
        "metrics": metrics,
        "timings": timings,
        "features": feat_info,
        "versions": rundir.versions("numpy", "pillow", "tensorflow", "tf-keras",
                                    "tensorflow-model-optimization", "rich", "typer", "matplotlib"),
        "model": {"input": [None, size, size, 3], "output": [None, n_classes], "head": cfg.head,
                  "dropout": cfg.dropout, "params": int(model.count_params())},
        "qat": bool(cfg.qat),
        "qat_info": qat_info,
        "from_run": from_info,
        "adapt": adapt_info,
    }

    out = Path(cfg.out)
    with rundir.atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        plotter.submit({"dir": str(tmp), "history": history, "confusion_matrix": cm, "classes": list(split.classes),
                        "title": f"val accuracy {acc:.3f}"})
        model.save(tmp / rundir.MODEL_FILE, save_format="keras")
        (tmp / rundir.LABELS_FILE).write_text("\n".join(split.classes) + "\n")
        plotter.wait()
        timings["save"] = round(time.perf_counter() - t, 3)
        timings["total"] = round(time.perf_counter() - t0, 3)
        rundir.write_json(tmp / rundir.META_FILE, meta)
    _summary(console, out, meta)
    return TrainResult(out, meta, timings)


def _summary(console, out: Path, meta: dict) -> None:
    from rich.table import Table

    m, tm = meta["metrics"], meta["timings"]
    tab = Table(title=f"edgetl train -> {out}", show_header=True)
    tab.add_column("")
    tab.add_column("value", justify="right")
    if meta.get("from_run"):
        tab.add_row("val accuracy before update (--from)", f"{meta['from_run']['val_accuracy_before']:.3f}")
    if (meta.get("adapt") or {}).get("val_accuracy_after") is not None:
        tab.add_row("val accuracy after --adapt-bn (no labels)", f"{meta['adapt']['val_accuracy_after']:.3f}")
    tab.add_row("val accuracy (head)", f"{m['head']['val_accuracy']:.3f}")
    if "fine_tune" in m:
        tab.add_row("val accuracy (fine-tuned)", f"{m['fine_tune']['val_accuracy_after']:.3f}")
    if "qat" in m:
        tab.add_row("val accuracy (QAT)", f"{m['qat']['val_accuracy']:.3f}")
    tab.add_row("[bold]val accuracy", f"[bold]{m['val_accuracy']:.3f}")
    tab.add_row("images train / val (train views)", f"{m['n_train']} / {m['n_val']} ({m['n_train_views']})")
    tab.add_row("skipped files", str(m["n_skipped"]))
    for k, v in tm.items():
        tab.add_row(f"time {k}", f"{v:.1f} s")
    console.print(tab)
    for s in meta["skipped"][:10]:
        console.print(f"  skipped {s['file']}: {s['reason']}", highlight=False, soft_wrap=True)
    if len(meta["skipped"]) > 10:
        console.print(f"  ... {len(meta['skipped']) - 10} more in {out / rundir.META_FILE}")
    console.print(f"next: [bold]edgetl export {out} --int8[/]", highlight=False, soft_wrap=True)
