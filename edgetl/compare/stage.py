"""`edgetl compare`: transfer learning vs training from scratch, measured on the user's own data.

For every fraction of the training images (stratified, seeded and nested: each fraction's images
contain the smaller fractions' images), on the same split and seed, three arms:

  feature-extraction  frozen pretrained MobileNetV2 + new head trained on cached base features
  fine-tuning         the feature-extraction model, then the top LAYERS of the base trained on pixels
  from-scratch        the same MobileNetV2 + head from random initialisation, every layer trainable,
                      trained on pixels within an explicit budget (epochs and/or wall-clock seconds,
                      by default 4x the fine-tuning arm's wall time at the same fraction)

Images are decoded once and base features computed once for all training and validation images;
each fraction's feature-extraction arm trains on a subset of the cached features. The feature
pass's time is attributed to each fraction pro rata (its training images + the validation images),
so a fraction's feature-extraction time is what a standalone `edgetl train` on those images would
spend on features. Recorded per arm and fraction: val accuracy, wall time, images seen (training
presentations: epochs x images), base passes (images pushed through the backbone), trainable
parameters. Output (--out DIR): compare.json, compare.csv, learning-curve.png, plus rich tables.

Training pieces come from edgetl.train (decode_split, compute_features, build_head, fit_head,
assemble, fine_tune, evaluate, calibrate_random_bn); the from-scratch loop and the BN re-estimation
it needs (edgetl.adapt.estimate_bn_stats) are here and in adapt.py.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import numpy as np

from ..core import rundir
from ..core.console import native_logs_aside, progress
from ..core.errors import EdgetlError
from ..core.images import decode_all, preprocess, preprocessing_spec
from ..model import backbone
from ..model.bn import bn_layers, calibrate_random_bn, estimate_bn_stats
from ..model.fit import fine_tune, fit_head, set_fine_tune_layers
from ..model.graph import HEAD_PREFIX, assemble, build_head
from ..model.predict import evaluate, evaluate_head, predict_pixels
from ..model.recipe import FT_LR_FACTOR
from .config import (ARM_TITLES, ARMS, DEFAULT_TARGET_REL, Budget, CompareConfig, Prepared, check_fractions,
                     class_counts, per_class_take, validate)
from ..model.tfenv import set_seed, tf_and_keras


def nested_subsets(labels: np.ndarray, n_classes: int, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """Stratified, seeded, nested index sets: each class's images are shuffled once and every fraction
    takes a prefix, so a fraction's images contain every smaller fraction's images."""
    rng = np.random.default_rng([seed, 4242])
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    out = {}
    for f in fractions:
        idx = np.concatenate([p[:per_class_take(len(p), f)] for p in perms])
        out[f] = np.sort(idx)
    return out


# ------------------------------------------------------------------------------------------------
# arms
# ------------------------------------------------------------------------------------------------
def _pixel_batches(keras, pixels, labels, spec, batch_size: int, seed: int):
    """Shuffled (seeded per epoch) batches of preprocessed pixels for model.fit, built per batch so no
    float copy of the whole data set sits in memory."""
    class Batches(keras.utils.Sequence):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(pixels))

        def __len__(self):
            return (len(pixels) + batch_size - 1) // batch_size

        def __getitem__(self, b):
            sel = np.sort(self.order[b * batch_size:(b + 1) * batch_size])
            return preprocess(pixels[sel], spec), labels[sel]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(pixels))

    return Batches()


def _trainable_params(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def scratch_arm(alpha, size, n_classes, px, y, va_px, va_y, spec, budget: Budget, seconds_cap, cfg: CompareConfig,
                console) -> dict:
    """MobileNetV2 + the same head from random initialisation, every layer trainable, trained on pixels
    with Adam until the budget (epochs and/or seconds; checked after every batch) is spent. BN moving
    statistics are then re-estimated on the arm's training images (precise BN: with few steps Keras'
    0.999-momentum averages are still near their initial values) and val accuracy measured once on the
    last weights (no validation-based early stopping or model selection; no augmentation, like the
    transfer arms' defaults)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    _, keras = tf_and_keras()
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    base = backbone.build_base(alpha, size, None)  # weights=None: random initialisation
    head = build_head(int(base.output_shape[-1]), n_classes, cfg.head, cfg.dropout, cfg.seed)
    model = assemble(base, head)
    for layer in model.layers:
        layer.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(cfg.scratch_lr), loss="sparse_categorical_crossentropy")
    seq = _pixel_batches(keras, px, y, spec, cfg.batch_size, cfg.seed)
    steps_per_epoch = len(seq)
    max_epochs = budget.epochs
    seen = {"images": 0, "batches": 0}
    stop_reason = {"why": "epochs"}

    cols = [TextColumn("[bold]{task.description:<36}"), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn()]
    with Progress(*cols, console=console, transient=False) as prog:
        total = seconds_cap if seconds_cap else float(max_epochs * steps_per_epoch)
        task = prog.add_task(f"from scratch ({len(px)} images)", total=total, info="")

        class Budgeted(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen["batches"] += 1
                seen["images"] += min(cfg.batch_size, len(px) - batch * cfg.batch_size)
                elapsed = time.perf_counter() - t0
                ep = seen["batches"] / steps_per_epoch
                done = elapsed if seconds_cap else seen["batches"]
                prog.update(task, completed=min(done, total),
                            info=f"epoch {ep:.1f} loss {(logs or {}).get('loss', float('nan')):.3f}")
                if max_epochs is not None and seen["batches"] >= math.ceil(max_epochs * steps_per_epoch):
                    stop_reason["why"] = "epochs"
                    self.model.stop_training = True
                elif seconds_cap and elapsed >= seconds_cap:
                    stop_reason["why"] = "seconds"
                    self.model.stop_training = True

        epochs = int(math.ceil(max_epochs)) if max_epochs is not None else 100000
        model.fit(seq, epochs=epochs, verbose=0, shuffle=False, callbacks=[Budgeted()])
        prog.update(task, completed=total)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    stats = estimate_bn_stats(model, px, spec, None, cfg.batch_size, "scratch BN statistics")
    for b, (m, v) in zip(bn_layers(model), stats):
        b.moving_mean.assign(m.astype(np.float32))
        b.moving_variance.assign(v.astype(np.float32))
    bn_seconds = time.perf_counter() - t1
    acc, cm = evaluate(model, va_px, va_y, spec, cfg.batch_size)
    return {"val_accuracy": acc, "confusion_matrix": cm, "seconds": train_seconds + bn_seconds,
            "seconds_detail": {"train": round(train_seconds, 3), "bn_statistics": round(bn_seconds, 3)},
            "images_seen": int(seen["images"]), "epochs": round(seen["batches"] / steps_per_epoch, 3),
            "base_passes": int(seen["images"] + len(px)), "trainable_params": _trainable_params(model),
            "budget_seconds": None if seconds_cap is None else round(seconds_cap, 3),
            "budget_epochs": max_epochs, "stopped_by": stop_reason["why"]}


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def compare(cfg: CompareConfig, console=None, prepared: Prepared | None = None) -> dict:
    """The whole `edgetl compare`; returns the report dict also written to OUT/compare.json."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with native_logs_aside(console):  # TensorFlow's C++ start-up chatter kept off the terminal
        return _compare(cfg, console, prepared)


def _compare(cfg: CompareConfig, console, prepared: Prepared | None) -> dict:
    t_start = time.perf_counter()
    p = prepared or validate(cfg)
    fractions, budget = p.fractions, p.budget
    split, size, alpha = p.split, p.image_size, p.alpha
    classes = list(split.classes)
    n_classes = len(classes)
    spec = preprocessing_spec(size)
    timings: dict[str, float] = {}

    weights = backbone.resolve_weights(cfg.weights, alpha, size)
    t = time.perf_counter()
    with progress(console) as prog:
        task = prog.add_task("decode images (once)", total=len(split.train) + len(split.val))
        tr_px, tr_y, _, tr_skip = decode_all(split.train, size, cfg.workers, lambda: prog.advance(task))
        va_px, va_y, _, va_skip = decode_all(split.val, size, cfg.workers, lambda: prog.advance(task))
    skipped = list(split.ignored) + tr_skip + va_skip
    for name, ys in (("train", tr_y), ("val", va_y)):
        missing = [c for i, c in enumerate(classes) if not (ys == i).any()]
        if missing:
            raise EdgetlError(f"DATA {cfg.data}: no decodable {name} images for class(es) {missing}")
    check_fractions(fractions, class_counts(tr_y, n_classes), classes, cfg.fractions)
    timings["decode"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    _, keras = tf_and_keras()
    set_seed(cfg.seed)
    keras.backend.clear_session()
    set_seed(cfg.seed)
    timings["import_tensorflow"] = round(time.perf_counter() - t, 3)

    subsets = nested_subsets(tr_y, n_classes, fractions, cfg.seed)

    # pretrained base + features of every image, once
    t = time.perf_counter()
    base = backbone.build_base(alpha, size, weights["path"])
    if weights["source"] == "random":
        weights["bn_statistics_from_images"] = calibrate_random_bn(base, tr_px, spec, seed=cfg.seed)
    base.trainable = False
    timings["build_base"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    with progress(console) as prog:
        task = prog.add_task("base features (all images, once)", total=len(tr_px) + len(va_px))
        f_tr = predict_pixels(base, tr_px, spec, 32, progress=lambda n: prog.advance(task, n))
        f_va = predict_pixels(base, va_px, spec, 32, progress=lambda n: prog.advance(task, n))
    feat_seconds = time.perf_counter() - t
    timings["features"] = round(feat_seconds, 3)
    per_image = feat_seconds / max(1, len(tr_px) + len(va_px))
    base_weights = base.get_weights()  # fine-tuning changes the base: restored after every fraction
    ft_lr = cfg.fine_tune_lr or cfg.lr * FT_LR_FACTOR

    results: list[dict] = []

    def record(arm, f, idx, r):
        r = {"arm": arm, "fraction": f, "n_train": int(len(idx)), **r}
        r["seconds"] = round(float(r["seconds"]), 3)
        results.append(r)
        console.print(f"  {arm:<19} {f:>5.0%} ({len(idx):>4} images): val accuracy [bold]{r['val_accuracy']:.3f}[/] "
                      f"in {r['seconds']:.1f} s, {r['images_seen']} images seen, "
                      f"{r['trainable_params']:,} trainable parameters", highlight=False)
        return r

    for f in fractions:
        idx = subsets[f]
        console.rule(f"fraction {f:g}: {len(idx)} training images "
                     f"({', '.join(f'{c} {n}' for c, n in zip(classes, class_counts(tr_y[idx], n_classes)))})")
        # (a) feature extraction on the cached features
        set_seed(cfg.seed)
        t = time.perf_counter()
        head = build_head(f_tr.shape[1], n_classes, cfg.head, cfg.dropout, cfg.seed)
        hist = fit_head(head, (f_tr[idx], tr_y[idx]), (f_va, va_y), cfg.epochs, cfg.lr, cfg.batch_size,
                                 cfg.patience, cfg.seed, console, desc=f"head ({len(idx)} images)")
        head_seconds = time.perf_counter() - t
        acc_a, cm_a = evaluate_head(head, f_va, va_y)
        feat_share = per_image * (len(idx) + len(va_px))
        ep_a = len(hist.get("loss", []))
        ra = record("feature-extraction", f, idx, {
            "val_accuracy": acc_a, "confusion_matrix": cm_a, "seconds": feat_share + head_seconds,
            "seconds_detail": {"features_pro_rata": round(feat_share, 3), "head": round(head_seconds, 3)},
            "images_seen": int(ep_a * len(idx)), "epochs": ep_a, "best_epoch": hist.get("best_epoch"),
            "base_passes": int(len(idx)), "trainable_params": _trainable_params(head)})
        transfer_seconds = ra["seconds"]

        # (b) + fine-tuning the top layers of the base, from the feature-extraction model
        if cfg.fine_tune:
            set_seed(cfg.seed)
            model = assemble(base, head)
            t = time.perf_counter()
            fh = fine_tune(model, cfg.fine_tune, tr_px[idx], tr_y[idx], va_px, va_y, spec,
                                    cfg.fine_tune_epochs, ft_lr, cfg.batch_size, 0, min(cfg.patience, 3), cfg.seed,
                                    console)
            ft_seconds = time.perf_counter() - t
            # trainable parameters while fine-tuning: the head + the unfrozen base layers (not BN)
            heads = {id(layer) for layer in model.layers if layer.name.startswith(HEAD_PREFIX)}
            set_fine_tune_layers([layer for layer in model.layers if id(layer) not in heads], cfg.fine_tune)
            n_tr = _trainable_params(model)
            for layer in model.layers:
                layer.trainable = id(layer) in heads
            acc_b, cm_b = evaluate(model, va_px, va_y, spec, cfg.batch_size)
            ep_b = len(fh.get("loss", []))
            rb = record("fine-tuning", f, idx, {
                "val_accuracy": acc_b, "confusion_matrix": cm_b, "seconds": ra["seconds"] + ft_seconds,
                "seconds_detail": {**ra["seconds_detail"], "fine_tune": round(ft_seconds, 3)},
                "images_seen": ra["images_seen"] + int(ep_b * len(idx)), "epochs": ep_a + ep_b,
                "fine_tune_epochs": ep_b, "fine_tune_lr": ft_lr, "unfrozen_layers": fh.get("unfrozen_layers"),
                "base_passes": int(len(idx) * (1 + ep_b)), "trainable_params": n_tr})
            transfer_seconds = rb["seconds"]
            base.set_weights(base_weights)  # the next fraction starts from the pretrained base again
            base.trainable = False

        # (c) from scratch, within its budget
        cap = budget.seconds_for(transfer_seconds)
        rc = scratch_arm(alpha, size, n_classes, tr_px[idx], tr_y[idx], va_px, va_y, spec, budget, cap, cfg, console)
        rc["budget_reference_seconds"] = round(transfer_seconds, 3)
        record("from-scratch", f, idx, rc)

    best = max(r["val_accuracy"] for r in results)
    target = cfg.target if cfg.target is not None else math.floor(DEFAULT_TARGET_REL * best * 100) / 100
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    table = summary_table(results, arms, target)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    report = {
        "edgetl_version": rundir.edgetl_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(Path(cfg.data).resolve()), "classes": classes, "layout": split.layout,
        "n_train": int(len(tr_px)), "n_val": int(len(va_px)), "alpha": alpha, "image_size": size,
        "preprocessing": spec, "weights": weights, "seed": cfg.seed, "config": cfg.as_dict(),
        "fractions": fractions, "budget": budget.as_dict(),
        "target_accuracy": target, "target_rule": "given (--target)" if cfg.target is not None else
        f"{DEFAULT_TARGET_REL:g} x best val accuracy of any arm, rounded down",
        "feature_seconds_all_images": round(feat_seconds, 3), "feature_seconds_per_image": round(per_image, 5),
        "subsets": {f"{f:g}": [int(i) for i in subsets[f]] for f in fractions},
        "results": results, "table": table, "skipped": skipped, "timings": timings,
        "versions": rundir.versions("numpy", "tensorflow", "tf-keras", "rich", "typer", "matplotlib"),
    }
    out = Path(cfg.out)
    with rundir.atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        (tmp / "compare.csv").write_text(results_csv(results))
        plot_learning_curve(results, arms, tmp / "learning-curve.png", target, n_classes,
                            title=f"{Path(cfg.data).name}: MobileNetV2 alpha {alpha:g}, {size} px")
        rundir.write_json(tmp / "compare.json", report)
    print_report(console, report, out)
    return report


def summary_table(results: list[dict], arms: list[str], target: float) -> dict:
    """The seed's table with measured values: per arm, data needed for the target accuracy, time,
    relative compute cost and accuracy (at the largest fraction)."""
    fmax = max(r["fraction"] for r in results)
    full = {r["arm"]: r for r in results if r["fraction"] == fmax}
    ref = full.get("feature-extraction") or next(iter(full.values()))
    rows = {}
    for arm in arms:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["n_train"])
        reached = next((r for r in rs if r["val_accuracy"] >= target), None)
        best = max(rs, key=lambda r: r["val_accuracy"])
        r = full[arm]
        rows[arm] = {
            "images_to_target": None if reached is None else reached["n_train"],
            "fraction_to_target": None if reached is None else reached["fraction"],
            "seconds_to_target": None if reached is None else reached["seconds"],
            "best_val_accuracy": best["val_accuracy"], "best_at_images": best["n_train"],
            "seconds": r["seconds"], "relative_cost": round(r["seconds"] / ref["seconds"], 2) if ref["seconds"] else None,
            "images_seen": r["images_seen"], "base_passes": r["base_passes"],
            "trainable_params": r["trainable_params"], "val_accuracy": r["val_accuracy"], "n_train": r["n_train"],
            "fraction": fmax,
        }
    return {"target_accuracy": target, "fraction": fmax, "arms": rows}


def results_csv(results: list[dict]) -> str:
    cols = ["arm", "fraction", "n_train", "val_accuracy", "seconds", "images_seen", "base_passes",
            "trainable_params", "epochs", "stopped_by"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue()


def plot_learning_curve(results, arms, path, target, n_classes, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm in arms:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["n_train"])
        xs = [r["n_train"] for r in rs]
        ax.plot(xs, [r["val_accuracy"] for r in rs], marker="o", label=ARM_TITLES[arm])
        ax_t.plot(xs, [r["seconds"] for r in rs], marker="o", label=ARM_TITLES[arm])
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.axhline(1.0 / n_classes, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("training images")
    ax.set_ylabel("val accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("learning curve")
    ax_t.set_xlabel("training images")
    ax_t.set_ylabel("wall time (s)")
    ax_t.set_title("training time")
    for a in (ax, ax_t):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = Path(path).with_name("." + Path(path).name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def print_report(console, report: dict, out: Path) -> None:
    from rich.table import Table

    tab = report["table"]
    arms = list(tab["arms"])
    target = tab["target_accuracy"]
    n_full = next(iter(tab["arms"].values()))["n_train"]
    t = Table(title=f"Transfer learning vs from scratch, measured ({report['n_train']} train / {report['n_val']} val "
                    f"images, MobileNetV2 alpha {report['alpha']:g}, {report['image_size']} px)")
    t.add_column("", no_wrap=True)
    for arm in arms:
        t.add_column(ARM_TITLES[arm], justify="right")
    rows = tab["arms"]

    def need(a):
        r = rows[a]
        if r["images_to_target"] is None:
            return f"not reached (best {r['best_val_accuracy']:.3f})"
        return f"{r['images_to_target']} images ({r['fraction_to_target']:.0%})"

    t.add_row(f"Data needed for val acc >= {target:.2f}", *[need(a) for a in arms])
    t.add_row(f"Training time ({n_full} images)", *[f"{rows[a]['seconds']:.1f} s" for a in arms])
    t.add_row("Relative compute cost (time)", *[f"{rows[a]['relative_cost']:.1f}x" for a in arms])
    t.add_row(f"Accuracy ({n_full} images)", *[f"{rows[a]['val_accuracy']:.3f}" for a in arms])
    t.add_row("Images seen / base passes", *[f"{rows[a]['images_seen']} / {rows[a]['base_passes']}" for a in arms])
    t.add_row("Trainable parameters", *[f"{rows[a]['trainable_params']:,}" for a in arms])
    console.print(t)
    d = Table(title="per arm and fraction")
    for c in ("arm", "frac", "imgs", "val acc", "time s", "seen", "epochs"):
        d.add_column(c, justify="left" if c == "arm" else "right", no_wrap=True)
    for r in report["results"]:
        ep = f"{r['epochs']:g}" + (f" ({r['stopped_by']})" if r["arm"] == "from-scratch" else "")
        d.add_row(r["arm"], f"{r['fraction']:g}", str(r["n_train"]), f"{r['val_accuracy']:.3f}", f"{r['seconds']:.1f}",
                  str(r["images_seen"]), ep)
    console.print(d)
    b = report["budget"]
    console.print(f"from-scratch budget: {b['spec']} (reference: the "
                  f"{'fine-tuning' if report['config']['fine_tune'] else 'feature-extraction'} arm's time at the "
                  f"same fraction); target accuracy: {target:.2f} ({report['target_rule']}); "
                  f"total {report['timings']['total']:.0f} s", highlight=False)
    console.print(f"wrote {out}/compare.json, compare.csv, learning-curve.png", highlight=False)
    best_transfer = "fine-tuning" if "fine-tuning" in rows and rows["fine-tuning"]["val_accuracy"] > \
        rows["feature-extraction"]["val_accuracy"] + 0.005 else "feature-extraction"
    ft = f" --fine-tune {report['config']['fine_tune']}" if best_transfer == "fine-tuning" else ""
    w = report["config"]["weights"]
    w = "" if w == "imagenet" else f" --weights {w}"
    console.print(f"next: [bold]edgetl train {report['data']} --alpha {report['alpha']:g} --image-size "
                  f"{report['image_size']}{w}{ft} --out runs/run[/]", highlight=False, soft_wrap=True)
