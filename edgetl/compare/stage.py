"""`edgetl compare`: transfer learning vs training from scratch, measured on the user's own data.

For every fraction of the training images (stratified, seeded and nested: each fraction's images
contain the smaller fractions' images), on the same split and seed, three arms:

  feature-extraction  frozen pretrained MobileNetV2 + new head trained on cached base features (the
                      originals and --augment cached views of each training image, as train does)
  fine-tuning         the feature-extraction model, then the top of the base fine-tuned as train does it
                      (model.finetune: strong augmentation every epoch, the keep rule; run at every
                      fraction, even where train would skip it as too small, which the record says)
  from-scratch        the same MobileNetV2 + head from random initialisation, every layer trainable,
                      trained on pixels within an explicit budget (epochs and/or wall-clock seconds,
                      by default 4x the fine-tuning arm's wall time at the same fraction)

Images are decoded once and base features computed once (model.session, as train does: the base's cached
TFLite copy) for all training (and their views), validation and test images; each fraction's
feature-extraction arm trains on a subset of the cached features. The feature pass's time is attributed
to each fraction pro rata (its training views + the validation images), so a fraction's feature-extraction time is what a standalone `edgetl train` on those images would spend
on features. Recorded per arm and fraction: val accuracy (what every choice is made on), test accuracy
when DATA has a test/ split (scored once per arm and fraction, never used to choose), wall time, images
seen (training presentations: epochs x images), base passes (images pushed through the backbone),
trainable parameters. Output (--out DIR): compare.json, compare.csv, learning-curve.png, plus rich tables.

The training loops are train's own (model.fit.fit_head, model.finetune); the from-scratch loop is here
(model.fit.pixel_batches), with precise BatchNorm statistics from model.bn.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import rundir
from ..core.console import native_logs_aside, progress
from ..core.images import preprocess, preprocessing_spec
from ..core.outdir import COMPARE_FILE, atomic_dir
from ..model import backbone, basecache
from ..model.bn import assign_bn_stats, estimate_bn_stats
from ..model.finetune import TopTuner, fine_tune_cut, too_small
from ..model.fit import pixel_batches
from ..model.graph import assemble, build_head
from ..model.predict import evaluate, evaluate_head, scores
from ..model.recipe import views_used
from ..model.session import Session
from ..model.tfenv import set_seed, tf_and_keras
from .config import (ARMS, DEFAULT_TARGET_REL, Budget, CompareConfig, Prepared, check_fractions, class_counts,
                     nested_subsets, validate)
from .report import plot_learning_curve, print_report, results_csv, summary_table


@dataclass
class _Session(Session):
    """What the phases of one `edgetl compare` share: the learning session (model.session: images, base,
    features) and the results."""

    results: list = field(default_factory=list)
    bottoms: dict = field(default_factory=dict)  # fine-tuning: the bottom's outputs of val and test, once

    @property
    def tested(self) -> bool:
        return bool(len(self.te_y))

    @property
    def per_image(self) -> float:
        """Feature seconds per image (each fraction's feature-extraction arm is charged pro rata)."""
        return self.feature_seconds / max(1, len(self.f_tr) + len(self.va_px) + len(self.te_px))

    def record(self, arm: str, fraction: float, idx, r: dict) -> dict:
        r = {"arm": arm, "fraction": fraction, "n_train": int(len(idx)), **r}
        r["seconds"] = round(float(r["seconds"]), 3)
        self.results.append(r)
        test = f", test accuracy [bold]{r['test_accuracy']:.3f}[/]" if "test_accuracy" in r else ""
        self.console.print(f"  {arm:<19} {fraction:>5.0%} ({len(idx):>4} images): val accuracy "
                           f"[bold]{r['val_accuracy']:.3f}[/]{test} in {r['seconds']:.1f} s, {r['images_seen']} "
                           f"images seen, {r['trainable_params']:,} trainable parameters", highlight=False)
        return r

    def test_scores(self, probs_of) -> dict:
        """{"test_accuracy", "test_confusion_matrix"} of an arm's final model (probs_of: test -> probabilities),
        or {} without a test split."""
        if not self.tested:
            return {}
        acc, cm = scores(probs_of(), self.te_y)
        return {"test_accuracy": acc, "test_confusion_matrix": cm}


def compare(cfg: CompareConfig, console=None, prepared: Prepared | None = None) -> dict:
    """The whole `edgetl compare`; returns the report dict also written to OUT/compare.json."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with native_logs_aside(console, cfg.verbose):  # TensorFlow's C++ start-up chatter kept off the terminal
        return _compare(cfg, console, prepared)


def _compare(cfg: CompareConfig, console, prepared: Prepared | None) -> dict:
    t_start = time.perf_counter()
    p = prepared or validate(cfg)
    s = _Session(cfg, p, console, preprocessing_spec(p.image_size), t_start, t_start,
                 augment=views_used(cfg.augment, len(p.split.train), cfg.max_train_views))
    s.weights = backbone.resolve_weights(cfg.weights, p.alpha, p.image_size)
    s.mark = time.perf_counter()
    s.load()  # every image decoded and its base features computed once, for every fraction
    check_fractions(p.fractions, class_counts(s.tr_y, len(s.classes)), s.classes, cfg.fractions)
    subsets = nested_subsets(s.tr_y, len(s.classes), p.fractions, cfg.seed)
    base_weights = s.base.get_weights()  # fine-tuning changes the base: restored after every fraction
    for f in p.fractions:
        idx = subsets[f]
        console.rule(f"fraction {f:g}: {len(idx)} training images ("
                     f"{', '.join(f'{c} {n}' for c, n in zip(s.classes, class_counts(s.tr_y[idx], len(s.classes))))})")
        head, ra = _feature_extraction_arm(s, f, idx)
        transfer_seconds = ra["seconds"]
        if fine_tune_cut(cfg.fine_tune) is not None:
            transfer_seconds = _fine_tuning_arm(s, f, idx, head, ra)["seconds"]
            s.base.set_weights(base_weights)  # the next fraction starts from the pretrained base again
            s.base.trainable = False
        rc = scratch_arm(p.alpha, p.image_size, len(s.classes), s.tr_px[idx], s.tr_y[idx], s.va_px, s.va_y, s.spec,
                         p.budget, p.budget.seconds_for(transfer_seconds), cfg, console, (s.te_px, s.te_y))
        rc["budget_reference_seconds"] = round(transfer_seconds, 3)
        s.record("from-scratch", f, idx, rc)
    report, arms = _report(s, subsets, t_start)
    out = Path(cfg.out)
    with atomic_dir(out, overwrite=cfg.overwrite, marker=COMPARE_FILE) as tmp:
        (tmp / "compare.csv").write_text(results_csv(s.results))
        plot_learning_curve(s.results, arms, tmp / "learning-curve.png", report["target_accuracy"], len(s.classes),
                            title=f"{Path(cfg.data).name}: MobileNetV2 alpha {p.alpha:g}, {p.image_size} px")
        rundir.write_json(tmp / COMPARE_FILE, report)
    print_report(console, report, out)
    return report


def _trainable_params(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def _feature_extraction_arm(s: _Session, f: float, idx) -> tuple[object, dict]:
    """(the head, the arm's result): a new head on the cached features of this fraction's images and views."""
    cfg = s.cfg
    set_seed(cfg.seed)
    t = time.perf_counter()
    head = s.new_head()
    views = 1 + s.augment
    hist = s.fit_head(head, *s.train_views(idx=idx), desc=f"head ({len(idx)} images)")
    head_seconds = time.perf_counter() - t
    acc, cm = evaluate_head(head, s.f_va, s.va_y)
    feat_share = s.per_image * (views * len(idx) + len(s.va_px))
    epochs = len(hist.get("loss", []))
    return head, s.record("feature-extraction", f, idx, {
        "val_accuracy": acc, "confusion_matrix": cm,
        **s.test_scores(lambda: np.asarray(head(s.f_te, training=False))), "seconds": feat_share + head_seconds,
        "seconds_detail": {"features_pro_rata": round(feat_share, 3), "head": round(head_seconds, 3)},
        "images_seen": int(epochs * views * len(idx)), "epochs": epochs, "best_epoch": hist.get("best_epoch"),
        "base_passes": int(views * len(idx)), "trainable_params": _trainable_params(head)})


def _tuner(s: _Session, head) -> TopTuner:
    """The fine-tuning top on this fraction's head; the bottom's copy and its val/test outputs made once."""
    cfg, p = s.cfg, s.p
    cut, _ = fine_tune_cut(cfg.fine_tune)
    tuner = TopTuner(s.base, head, cut, s.spec, cfg.workers)
    if not s.bottoms:  # (the time of the copy and of the val outputs is charged to every fraction's arm)
        t = time.perf_counter()
        key = basecache.base_cache_key(s.weights, p.alpha, p.image_size, cut)
        s.bottoms["status"] = tuner.bottom.make_copy(key, preprocess(s.tr_px[:4], s.spec))
        s.bottoms["val"] = tuner.bottom_outputs(s.va_px)
        s.bottoms["tflite"], s.bottoms["seconds"] = tuner.bottom.tflite, time.perf_counter() - t
        s.bottoms["test"] = tuner.bottom_outputs(s.te_px)
    tuner.bottom.tflite = s.bottoms["tflite"]
    return tuner


def _fine_tuning_arm(s: _Session, f: float, idx, head, ra: dict) -> dict:
    """The feature-extraction model with the top of the base fine-tuned on pixels, as train does it."""
    cfg = s.cfg
    set_seed(cfg.seed)
    tuner = _tuner(s, head)
    t = time.perf_counter()
    fh = tuner.fit(s.tr_px[idx], s.tr_y[idx], s.bottoms["val"], s.va_y, cfg.fine_tune_epochs, cfg.fine_tune_lr,
                   cfg.batch_size, cfg.seed, s.console)
    ft_seconds = time.perf_counter() - t + s.bottoms["seconds"]
    epochs = len(fh["loss"])
    return s.record("fine-tuning", f, idx, {
        "val_accuracy": fh["val_accuracy_after"], "confusion_matrix": fh["confusion_matrix"],
        **s.test_scores(lambda: tuner.probs(s.bottoms["test"])), "seconds": ra["seconds"] + ft_seconds,
        "seconds_detail": {**ra["seconds_detail"], "fine_tune": round(ft_seconds, 3)},
        "images_seen": ra["images_seen"] + int(epochs * len(idx)), "epochs": ra["epochs"] + epochs,
        "fine_tune_epochs": epochs, "fine_tune_lr": cfg.fine_tune_lr, "cut": tuner.cut,
        "unfrozen_layers": tuner.layers, "kept": fh["kept"], "best_epoch_fine_tune": fh["best_epoch"],
        "train_would_skip": too_small(s.tr_y[idx], len(s.classes), len(s.va_y)),
        "bottom": s.bottoms["status"], "base_passes": ra["base_passes"] + int(len(idx) * epochs),
        "trainable_params": tuner.trainable_params})


def scratch_arm(alpha, size, n_classes, px, y, va_px, va_y, spec, budget: Budget, seconds_cap, cfg: CompareConfig,
                console, test=(None, None)) -> dict:
    """MobileNetV2 + the same head from random initialisation, every layer trainable, trained on pixels
    with Adam until the budget (epochs and/or seconds; checked after every batch) is spent. BN moving
    statistics are then re-estimated on the arm's training images (precise BN: with few steps Keras'
    0.999-momentum averages are still near their initial values) and val accuracy measured once on the
    last weights (no validation-based early stopping or model selection; no augmentation), and on the
    `test` (pixels, labels) split when it has images."""
    _, keras = tf_and_keras()
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    base = backbone.build_base(alpha, size, None)  # weights=None: random initialisation
    model = assemble(base, build_head(int(base.output_shape[-1]), n_classes, cfg.head, cfg.dropout, cfg.seed,
                                      start="glorot"))  # the whole network from random weights
    for layer in model.layers:
        layer.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(cfg.scratch_lr), loss="sparse_categorical_crossentropy")
    seen = _fit_within_budget(model, pixel_batches(px, y, spec, cfg.batch_size, cfg.seed, sorted_batches=True),
                              len(px), cfg.batch_size, budget.epochs, seconds_cap, t0, console)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    assign_bn_stats(model, estimate_bn_stats(model, px, spec, None, cfg.batch_size, "scratch BN statistics"))
    bn_seconds = time.perf_counter() - t1
    acc, cm = evaluate(model, va_px, va_y, spec, cfg.batch_size)
    tested = {}
    if test[1] is not None and len(test[1]):
        t_acc, t_cm = evaluate(model, test[0], test[1], spec, cfg.batch_size)
        tested = {"test_accuracy": t_acc, "test_confusion_matrix": t_cm}
    return {"val_accuracy": acc, "confusion_matrix": cm, **tested, "seconds": train_seconds + bn_seconds,
            "seconds_detail": {"train": round(train_seconds, 3), "bn_statistics": round(bn_seconds, 3)},
            "images_seen": int(seen["images"]), "epochs": round(seen["batches"] / seen["steps_per_epoch"], 3),
            "base_passes": int(seen["images"] + len(px)), "trainable_params": _trainable_params(model),
            "budget_seconds": None if seconds_cap is None else round(seconds_cap, 3),
            "budget_epochs": budget.epochs, "stopped_by": seen["stopped_by"]}


def _fit_within_budget(model, seq, n: int, batch_size: int, max_epochs, seconds_cap, t0: float, console) -> dict:
    """model.fit on `seq` until `max_epochs` epochs (fractions allowed) or `seconds_cap` seconds since t0,
    whichever comes first, checked after every batch. Returns images and batches seen and what stopped it."""
    _, keras = tf_and_keras()
    steps_per_epoch = len(seq)
    seen = {"images": 0, "batches": 0, "steps_per_epoch": steps_per_epoch, "stopped_by": "epochs"}
    desc = f"from scratch ({n} images)"
    with progress(console) as prog:
        total = seconds_cap if seconds_cap else float(max_epochs * steps_per_epoch)
        task = prog.add_task(desc, total=total)

        class Budgeted(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen["batches"] += 1
                seen["images"] += min(batch_size, n - batch * batch_size)
                elapsed = time.perf_counter() - t0
                done = elapsed if seconds_cap else seen["batches"]
                prog.update(task, completed=min(done, total), description=(
                    f"{desc} epoch {seen['batches'] / steps_per_epoch:.1f} "
                    f"loss {(logs or {}).get('loss', float('nan')):.3f}"))
                if max_epochs is not None and seen["batches"] >= math.ceil(max_epochs * steps_per_epoch):
                    seen["stopped_by"] = "epochs"
                    self.model.stop_training = True
                elif seconds_cap and elapsed >= seconds_cap:
                    seen["stopped_by"] = "seconds"
                    self.model.stop_training = True

        epochs = int(math.ceil(max_epochs)) if max_epochs is not None else 100000
        model.fit(seq, epochs=epochs, verbose=0, shuffle=False, callbacks=[Budgeted()])
        prog.update(task, completed=total)
    return seen


def _report(s: _Session, subsets: dict, t_start: float) -> tuple[dict, list[str]]:
    """compare.json's content, and the arms that ran."""
    cfg, p = s.cfg, s.p
    best = max(r["val_accuracy"] for r in s.results)
    target = cfg.target if cfg.target is not None else math.floor(DEFAULT_TARGET_REL * best * 100) / 100
    arms = [a for a in ARMS if any(r["arm"] == a for r in s.results)]
    s.timings["total"] = round(time.perf_counter() - t_start, 3)
    report = {
        "edgetl_version": rundir.edgetl_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(Path(cfg.data).resolve()), "classes": s.classes, "layout": p.split.layout,
        "n_train": int(len(s.tr_px)), "n_val": int(len(s.va_px)), "n_test": int(len(s.te_px)),
        "test_source": p.split.test_source, "alpha": p.alpha, "image_size": p.image_size,
        "preprocessing": s.spec, "weights": s.weights, "seed": cfg.seed, "config": cfg.as_dict(),
        "fractions": p.fractions, "budget": p.budget.as_dict(),
        "target_accuracy": target, "target_rule": "given (--target)" if cfg.target is not None else
        f"{DEFAULT_TARGET_REL:g} x best val accuracy of any arm, rounded down",
        "feature_seconds_all_images": round(s.feature_seconds, 3), "feature_seconds_per_image": round(s.per_image, 5),
        "subsets": {f"{f:g}": [int(i) for i in subsets[f]] for f in p.fractions},
        "results": s.results, "table": summary_table(s.results, arms, target), "skipped": s.skipped,
        "timings": s.timings,
        "versions": rundir.versions("numpy", "tensorflow", "tf-keras", "rich", "typer", "matplotlib"),
    }
    return report, arms
