"""`edgetl train`: frozen ImageNet MobileNetV2 + new head on cached features, optional fine-tuning,
quantization-aware training and BatchNorm adaptation; writes the run directory.

The phases, in order (`_train`): decode the images and compute their base features while TensorFlow
imports, build the model, adapt BatchNorm (--adapt-bn), base features through TensorFlow when the cached
TFLite base is not used, train the head, fine-tune (--fine-tune), QAT (--qat), score the test split, write
the run. Every choice (early stopping, the best epoch, keeping fine-tuning or QAT) is made on val; the test
split (DATA's test/ folder, or --test DIR) is scored once, at the end, and never used to choose anything.

Where the time goes (hymenoptera, alpha 0.35, 224 px, 2 cores, ~5.4 s in all): the main thread
imports TensorFlow (~2.4 s) and builds the Keras base (~1.1 s) while a thread pool decodes the images
and computes their base features with the backbone's cached TFLite copy (model.session); the head
trains on the cached features (~0.6 s); the run is written (~0.5 s) while a helper process draws the
PNGs (core.plots.PlotProcess). The seed recipe instead recomputes the base for every image in every epoch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import data as datamod
from ..core import images, rundir
from ..core.console import native_logs_aside, shown
from ..core.outdir import atomic_dir
from ..core.plots import PlotProcess
from ..model import backbone, basecache
from ..model.finetune import TopTuner, fine_tune_cut, too_small
from ..model.graph import assemble, split_model
from ..model.load import load_run_model
from ..model.predict import evaluate, evaluate_head, predict, scores
from ..model.recipe import views_used
from ..model.session import Session, fresh_keras
from .adapt import adapt_bn, adapt_info as adapt_info_of, source_pixels
from .config import Prepared, TrainConfig, TrainResult, validate
from .qat import qat_phase
from .summary import print_summary


@dataclass
class _Session(Session):
    """What the phases of one `edgetl train` share: the learning session (model.session: inputs, images, base,
    features), the model as it grows, and what gets recorded."""

    tuner: TopTuner | None = None  # the fine-tuned top, when fine-tuning was kept
    head_model: object = None
    model: object = None
    acc: float = float("nan")
    cm: list = field(default_factory=list)
    history: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    from_info: dict | None = None
    adapt: dict | None = None
    qat_info: dict | None = None
    qat_model: object = None
    data_warnings: dict = field(default_factory=dict)

    def take_decoded(self, decoded) -> None:
        super().take_decoded(decoded)
        _warn_data(self)

    def build_base(self) -> None:
        """The frozen base and the head model (None: a new head), --from info and the weights record: a new
        MobileNetV2, or the --from run's model split into base and head (evaluated on the new data first)."""
        cfg, p = self.cfg, self.p
        if p.from_meta is None:
            return super().build_base()
        fresh_keras(cfg.seed)
        model = load_run_model(cfg.from_run)
        self.base, self.head_model = split_model(model)
        acc0, cm0 = evaluate(model, self.va_px, self.va_y, self.spec, cfg.feature_batch)
        self.from_info = {"run": str(Path(cfg.from_run).resolve()), "classes": list(p.from_meta["classes"]),
                          "val_accuracy_before": acc0, "confusion_matrix_before": cm0,
                          "source_val_accuracy": p.from_meta.get("metrics", {}).get("val_accuracy")}
        self.weights = dict(p.from_meta.get("weights") or self.weights)
        self.console.print(f"--from {cfg.from_run}: val accuracy on the new data before any update: "
                           f"[bold]{acc0:.3f}[/]")
        self.base.trainable = False


def train(cfg: TrainConfig, console=None, prepared: Prepared | None = None) -> TrainResult:
    """The whole `edgetl train`: validate, decode, features, head, fine-tune, QAT, adapt-bn, write the run."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with native_logs_aside(console, cfg.verbose), contextlib.ExitStack() as cleanup:
        return _train(cfg, console, prepared, cleanup)


def _train(cfg: TrainConfig, console, prepared: Prepared | None, cleanup: contextlib.ExitStack) -> TrainResult:
    t0 = time.perf_counter()
    p = prepared or validate(cfg)
    s = _Session(cfg, p, console, images.preprocessing_spec(p.image_size), t0, t0,
                 use_base_cache=cfg.base_cache and p.from_meta is None and not cfg.adapt_bn,  # else: TF features
                 augment=views_used(cfg.augment, len(p.split.train), cfg.max_train_views))
    if s.augment < cfg.augment:
        console.print(f"--augment {cfg.augment}: {s.augment} augmented view(s) per image used ({len(p.split.train)} "
                      f"training images; --max-train-views {cfg.max_train_views})", highlight=False)
    s.lap("validate")
    if p.from_meta is None:  # mirror / Keras cache / local file: instant; a download fails before any work
        s.weights = backbone.resolve_weights(cfg.weights, p.alpha, p.image_size)
    s.lap("weights")
    s.decode_and_features()
    if s.base is None:  # --from runs evaluate with their own progress bar: after the decoding one
        s.build_base()
        s.lap("build_model")
    if cfg.adapt_bn:
        _adapt(s)
        s.lap("adapt_bn")
    if s.f_tr is None:  # --from / --adapt-bn / random weights / --no-base-cache / the TFLite base failed
        s.tensorflow_features()
    s.lap("features")
    plotter = PlotProcess()  # imports matplotlib on the other core while the head trains
    cleanup.callback(plotter.close)
    _head(s)
    s.lap("head")
    if fine_tune_cut(cfg.fine_tune) is not None:
        _fine_tune(s)
        s.lap("fine_tune")
    if cfg.qat:
        _qat(s)
        s.lap("qat")
    if len(s.te_y):
        _score_test(s)
        s.lap("test")
    meta = _meta(s)
    out = _write_run(s, meta, plotter)
    print_summary(console, out, meta)
    return TrainResult(out, meta, s.timings)


def _warn_data(s: _Session) -> None:
    """Warnings that do not stop training, printed and kept in edgetl.json: the same image in two splits
    (identical decoded pixels), and classes with very few training images."""
    dups = datamod.duplicates_across_splits({"train": (s.tr_px, s.tr_paths), "val": (s.va_px, s.va_paths),
                                             "test": (s.te_px, s.te_paths)})
    small = datamod.small_classes(s.tr_y, s.p.split.classes)
    s.data_warnings = {"duplicates_across_splits": dups, "small_classes": small}
    if dups:
        d = dups[0]
        s.console.print(f"[yellow]warning[/]: {len(dups)} image(s) appear in two splits with identical pixels "
                        f"(e.g. {shown(d['files'][0])} and {shown(d['files'][1])}, {d['splits']}): the later "
                        "split's accuracy counts them as unseen; all listed in edgetl.json "
                        "(data_warnings)", highlight=False, soft_wrap=True)
    if small:
        s.console.print(f"[yellow]warning[/]: class(es) with fewer than {datamod.MIN_CLASS_IMAGES} training images: "
                        + ", ".join(f"{c!r} ({n})" for c, n in small.items())
                        + "; the model cannot learn them reliably: add images", highlight=False, soft_wrap=True)


def _adapt(s: _Session) -> None:
    """Re-estimate the base's BN statistics on DATA's training images (no labels); with --from, relative
    to the source run's own training images when they are still readable."""
    cfg = s.cfg
    target = assemble(s.base, s.head_model) if s.head_model is not None else s.base
    ref = source_pixels(rundir.Run(cfg.from_run), s.console) if s.p.from_meta is not None else None
    adapt_bn(target, s.tr_px, s.spec, s.console, reference_pixels=ref)
    s.base.trainable = False
    s.adapt = {"bn": True, "images": int(len(s.tr_px)), **adapt_info_of(target)}
    if s.from_info is not None:  # the run's model after adaptation alone, before any labelled update
        acc, cm = evaluate(assemble(s.base, s.head_model), s.va_px, s.va_y, s.spec, cfg.feature_batch)
        s.adapt.update({"val_accuracy_before": s.from_info["val_accuracy_before"],
                        "val_accuracy_after": acc, "confusion_matrix_after": cm})
        s.console.print(f"--adapt-bn (no labels): val accuracy on the new data "
                        f"{s.from_info['val_accuracy_before']:.3f} -> [bold]{acc:.3f}[/]")


def _head(s: _Session) -> None:
    """Train the head on the cached features (a new one, or the --from run's) and assemble the model."""
    if s.head_model is None:
        s.head_model = s.new_head()
    s.history["head"] = s.fit_head(s.head_model, *s.train_views())
    s.acc, s.cm = evaluate_head(s.head_model, s.f_va, s.va_y)
    s.metrics["head"] = {"val_accuracy": s.acc, "confusion_matrix": s.cm,
                         "best_epoch": s.history["head"]["best_epoch"]}
    s.model = assemble(s.base, s.head_model)


def _fine_tune(s: _Session) -> None:
    """Fine-tune the top of the base (model.finetune), or say in one line why not on data this small."""
    cfg, p = s.cfg, s.p
    cut, _ = fine_tune_cut(cfg.fine_tune)
    skip = None if cfg.fine_tune_any_size else too_small(s.tr_y, len(p.split.classes), len(s.va_y))
    if skip:
        s.console.print(skip, highlight=False)
        s.metrics["fine_tune"] = {"skipped": skip}
        return
    key = None
    if cfg.base_cache and p.from_meta is None and not cfg.adapt_bn:  # the backbone as published: cached
        key = basecache.base_cache_key(s.weights, p.alpha, p.image_size, cut)
    tuner = TopTuner(s.base, s.head_model, cut, s.spec, cfg.workers)
    bottom = tuner.bottom.make_copy(key, images.preprocess(s.tr_px[:4], s.spec))
    h = tuner.fit(s.tr_px, s.tr_y, tuner.bottom_outputs(s.va_px), s.va_y, cfg.fine_tune_epochs, cfg.fine_tune_lr,
                  cfg.batch_size, cfg.seed, s.console)
    s.history["fine_tune"] = {k: h[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_loss_before",
                                                "kept")}
    s.history["fine_tune"]["best_epoch"] = h["best_epoch"] if h["kept"] else 0  # 0: the weights from before
    s.metrics["fine_tune"] = {
        "val_accuracy_before": s.acc, "val_accuracy_after": h["val_accuracy_after"] if h["kept"] else s.acc,
        "confusion_matrix": h["confusion_matrix"] if h["kept"] else s.cm, "kept": h["kept"],
        "best_epoch": h["best_epoch"], "cut": cut, "layers": tuner.layers, "lr": cfg.fine_tune_lr,
        "epochs": cfg.fine_tune_epochs, "trainable_params": tuner.trainable_params, "bottom": bottom,
        "bottom_cache": str(basecache.base_cache_path(key)) if key else None,
        "waited_for_bottom_seconds": h["waited_for_bottom_seconds"]}
    if h["kept"]:
        s.console.print(f"fine-tune {tuner.layers} layers above {cut}: val accuracy {s.acc:.3f} -> "
                        f"[bold]{h['val_accuracy_after']:.3f}[/] (epoch {h['best_epoch']})")
        s.acc, s.cm, s.tuner = h["val_accuracy_after"], h["confusion_matrix"], tuner
    else:
        s.console.print(f"fine-tuning kept out: not better on val (best epoch {h['best_epoch']}: val accuracy "
                        f"{h['val_accuracy'][h['best_epoch'] - 1]:.3f}, frozen head {s.acc:.3f})")


def _qat(s: _Session) -> None:
    """Quantization-aware training (train.qat): the float model stays the run's model; the QAT model is
    kept beside it, and edgetl.json says which of the two the int8 files come from."""
    teacher = float_val = None
    if s.tuner is None:  # the base is the frozen one: the head on the cached features is the float model
        teacher = predict(s.head_model, s.f_tr[:len(s.tr_px)])
        float_val = predict(s.head_model, s.f_va)
    s.qat_model, s.qat_info = qat_phase(s.model, (s.tr_px, s.tr_y), (s.va_px, s.va_y), s.spec, s.cfg, s.console,
                                        teacher_probs=teacher, train_paths=s.tr_paths, float_val_probs=float_val)
    s.qat_info["qat_model"] = rundir.QAT_MODEL_FILE
    s.metrics["qat"] = {"val_accuracy_ptq_int8": s.qat_info["val_acc_ptq_int8"],
                        "val_accuracy_qat_int8": s.qat_info["val_acc_qat_int8"],
                        "int8_source": s.qat_info["int8_source"]}


def _score_test(s: _Session) -> None:
    """The run's (float) model on the test split, once: the same way its val accuracy was measured (the head
    on base features; the fine-tuned top on bottom outputs). Its int8 files are scored by export."""
    if s.tuner is not None:
        probs = s.tuner.probs(s.tuner.bottom_outputs(s.te_px))
    else:
        probs = np.asarray(s.head_model(s.f_te, training=False))
    acc, cm = scores(probs, s.te_y)
    s.metrics.update({"test_accuracy": acc, "test_confusion_matrix": cm})


def _meta(s: _Session) -> dict:
    """edgetl.json (timings is the live dict: "save" and "total" are added while the run is written)."""
    cfg, split, size = s.cfg, s.p.split, s.p.image_size
    s.metrics.update({"val_accuracy": s.acc, "confusion_matrix": s.cm, "n_train": int(len(s.tr_px)),
                      "n_val": int(len(s.va_px)), "n_test": int(len(s.te_px)), "n_train_views": int(len(s.f_tr)),
                      "augment_views": s.augment,
                      "n_skipped": len(s.skipped)})
    return {
        "edgetl_version": rundir.edgetl_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": list(split.classes),
        "image_size": size,
        "alpha": s.p.alpha,
        "preprocessing": s.spec,
        "weights": s.weights,
        "seed": cfg.seed,
        "config": cfg.as_dict(),
        "split": {"data_root": str(Path(cfg.data).resolve()), "layout": split.layout,
                  "val_split": cfg.val_split if split.layout == "flat" else None,
                  # the images the model was trained / validated on (skipped files are under "skipped")
                  "train": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(s.tr_paths, s.tr_y)],
                  "val": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(s.va_paths, s.va_y)],
                  # scored once at the end (export and bench score them too); never used to choose
                  "test": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(s.te_paths, s.te_y)],
                  "test_source": split.test_source},
        "skipped": s.skipped,
        "data_warnings": s.data_warnings,
        "history": s.history,
        "metrics": s.metrics,
        "timings": s.timings,
        "features": s.features,
        "versions": rundir.versions("numpy", "pillow", "tensorflow", "tf-keras",
                                    "tensorflow-model-optimization", "rich", "typer", "matplotlib"),
        "model": {"input": [None, size, size, 3], "output": [None, len(split.classes)], "head": cfg.head,
                  "dropout": cfg.dropout, "params": int(s.model.count_params())},
        "qat": bool(cfg.qat),
        "qat_info": s.qat_info,
        "from_run": s.from_info,
        "adapt": s.adapt,
    }


def _write_run(s: _Session, meta: dict, plotter: PlotProcess) -> Path:
    """The run directory, atomically: model, labels, plots (drawn by the helper process), edgetl.json."""
    out = Path(s.cfg.out)
    classes = list(s.p.split.classes)
    with atomic_dir(out, overwrite=s.cfg.overwrite) as tmp:
        plotter.submit({"dir": str(tmp), "history": s.history, "confusion_matrix": s.cm, "classes": classes,
                        "title": f"val accuracy {s.acc:.3f}"})
        s.model.save(tmp / rundir.MODEL_FILE, save_format="keras")
        if s.qat_model is not None:
            s.qat_model.save(tmp / rundir.QAT_MODEL_FILE, save_format="keras")
        rundir.pause_point("train-model-saved")
        (tmp / rundir.LABELS_FILE).write_text("\n".join(classes) + "\n")
        plotter.wait()
        s.lap("save")
        s.timings["total"] = round(time.perf_counter() - s.start, 3)
        rundir.write_json(tmp / rundir.META_FILE, meta)
    return out
