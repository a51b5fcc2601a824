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
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rundir
from .errors import EdgetlError
from .train import Recipe, _head_eval, _progress

ARMS = ("feature-extraction", "fine-tuning", "from-scratch")
ARM_TITLES = {"feature-extraction": "Feature extraction", "fine-tuning": "+ Fine-tuning",
              "from-scratch": "From scratch"}
DEFAULT_FRACTIONS = "0.1,0.25,0.5,1.0"
DEFAULT_BUDGET = "4x"
DEFAULT_FINE_TUNE = 20
DEFAULT_TARGET_REL = 0.9  # default target accuracy = 90% of the best accuracy any arm reached


@dataclass
class CompareConfig(Recipe):
    """`edgetl compare` options: train's shared ones (train.Recipe) plus the comparison's own."""

    out: str = "runs/compare"
    fine_tune: int = DEFAULT_FINE_TUNE
    fractions: str = DEFAULT_FRACTIONS
    budget: str = DEFAULT_BUDGET
    target: float | None = None
    scratch_lr: float = 1e-3


@dataclass
class Budget:
    """Scratch-arm budget: any of a multiple of the transfer arm's time, seconds, epochs (first reached)."""

    times: float | None = None  # "4x": 4 x the fine-tuning (or feature-extraction) arm's wall time
    seconds: float | None = None  # "300s"
    epochs: float | None = None  # "30ep"
    text: str = ""

    def seconds_for(self, transfer_seconds: float) -> float | None:
        caps = [c for c in (self.seconds, None if self.times is None else self.times * transfer_seconds) if c]
        return min(caps) if caps else None

    def as_dict(self) -> dict:
        return {"spec": self.text, "times_transfer": self.times, "seconds": self.seconds, "epochs": self.epochs}


def parse_fractions(text: str) -> list[float]:
    """'0.1,0.25,1' -> sorted unique fractions, each in (0, 1]."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            f = float(part)
        except ValueError:
            raise EdgetlError(f"--fractions {text}: {part!r} is not a number (give e.g. {DEFAULT_FRACTIONS})") from None
        if not (0.0 < f <= 1.0) or math.isnan(f):
            raise EdgetlError(f"--fractions {text}: {part} is outside (0, 1]; each fraction must be > 0 and <= 1")
        out.append(f)
    if not out:
        raise EdgetlError(f"--fractions {text!r}: give at least one fraction in (0, 1], e.g. {DEFAULT_FRACTIONS}")
    return sorted(set(out))


_BUDGET_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|s|sec|ep|epochs?|m|min)\s*$")


def parse_budget(text: str) -> Budget:
    """'4x' (times the transfer arm's time), '300s' / '5m' (seconds), '30ep' (epochs); combine with commas,
    e.g. '30ep,300s': the scratch arm stops at whichever limit comes first."""
    b = Budget(text=str(text))
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise EdgetlError(f"--budget {text!r}: give e.g. 4x, 300s, 30ep or 30ep,300s")
    for part in parts:
        m = _BUDGET_RE.match(part)
        if not m:
            raise EdgetlError(f"--budget {text}: {part.strip()!r} not understood; use Nx (times the transfer arm's "
                              "time), Ns or Nm (wall-clock), Nep (epochs), comma-separated")
        v, unit = float(m.group(1)), m.group(2)
        if not v > 0 or math.isinf(v):
            raise EdgetlError(f"--budget {text}: {part.strip()} must be > 0")
        if unit == "x":
            b.times = v
        elif unit in ("s", "sec"):
            b.seconds = v
        elif unit in ("m", "min"):
            b.seconds = v * 60.0
        else:
            b.epochs = v
    return b


def class_counts(labels, n_classes: int) -> list[int]:
    return [int(np.sum(np.asarray(labels) == c)) for c in range(n_classes)]


def per_class_take(count: int, fraction: float) -> int:
    """Images of a class kept at this fraction: round half up, so 1.0 keeps all."""
    return min(count, int(math.floor(count * fraction + 0.5)))


def check_fractions(fractions: list[float], counts: list[int], classes: list[str], flag_text: str) -> None:
    """Every fraction must leave at least one training image per class."""
    for f in fractions:
        for c, n in zip(classes, counts):
            if per_class_take(n, f) < 1:
                need = 0.5 / n if n else 1.0
                raise EdgetlError(
                    f"--fractions {flag_text}: {f:g} leaves no training image of class {c!r} ({n} images); "
                    f"use fractions >= {need:.3g}")


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


@dataclass
class Prepared:
    cfg: CompareConfig
    train_prep: object  # edgetl.train.Prepared
    fractions: list[float]
    budget: Budget


def validate(cfg: CompareConfig) -> Prepared:
    """All option checks and the data scan, before any decoding or TensorFlow import."""
    from . import train as trainmod

    fractions = parse_fractions(cfg.fractions)
    budget = parse_budget(cfg.budget)
    if cfg.target is not None and not (0.0 < cfg.target <= 1.0):
        raise EdgetlError(f"--target {cfg.target}: must be an accuracy in (0, 1]")
    if not (0.0 < cfg.scratch_lr < 1.0):
        raise EdgetlError(f"--scratch-lr {cfg.scratch_lr}: must be between 0 and 1")
    tcfg = trainmod.TrainConfig(**cfg.recipe())
    tp = trainmod.validate(tcfg)  # data + backbone options, --out, the scan (shared with `edgetl train`)
    counts = [sum(1 for _, y in tp.split.train if y == c) for c in range(len(tp.split.classes))]
    check_fractions(fractions, counts, tp.split.classes, cfg.fractions)
    return Prepared(cfg, tp, fractions, budget)


# ------------------------------------------------------------------------------------------------
# arms
# ------------------------------------------------------------------------------------------------
def _pixel_batches(keras, pixels, labels, spec, batch_size: int, seed: int):
    """Shuffled (seeded per epoch) batches of preprocessed pixels for model.fit, built per batch so no
    float copy of the whole data set sits in memory."""
    from .data import preprocess

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

    from . import backbone
    from . import train as trainmod
    from .adapt import bn_layers, estimate_bn_stats
    from .tfenv import set_seed, tf_and_keras

    _, keras = tf_and_keras()
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    base = backbone.build_base(alpha, size, None)  # weights=None: random initialisation
    head = trainmod.build_head(int(base.output_shape[-1]), n_classes, cfg.head, cfg.dropout, cfg.seed)
    model = trainmod.assemble(base, head)
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
    acc, cm = trainmod.evaluate(model, va_px, va_y, spec, cfg.batch_size)
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
    import contextlib

    from rich.console import Console

    from . import train as trainmod

    console = console or Console(stderr=True)
    # TensorFlow's C++ start-up chatter kept off the terminal the way `edgetl train` does it (if available)
    aside = getattr(trainmod, "_native_logs_aside", None)
    with (aside(console) if aside is not None else contextlib.nullcontext()):
        return _compare(cfg, console, prepared)


def _compare(cfg: CompareConfig, console, prepared: Prepared | None) -> dict:
    from . import backbone
    from . import data as datamod
    from . import train as trainmod

    t_start = time.perf_counter()
    p = prepared or validate(cfg)
    tp, fractions, budget = p.train_prep, p.fractions, p.budget
    split, size, alpha = tp.split, tp.image_size, tp.alpha
    classes = list(split.classes)
    n_classes = len(classes)
    spec = datamod.preprocessing_spec(size)
    timings: dict[str, float] = {}

    weights = backbone.resolve_weights(cfg.weights, alpha, size)
    t = time.perf_counter()
    tr_px, tr_y, _, tr_skip = trainmod.decode_split(split.train, size, console, "decode train (once)", cfg.workers)
    va_px, va_y, _, va_skip = trainmod.decode_split(split.val, size, console, "decode val (once)", cfg.workers)
    skipped = list(split.ignored) + tr_skip + va_skip
    for name, ys in (("train", tr_y), ("val", va_y)):
        missing = [c for i, c in enumerate(classes) if not (ys == i).any()]
        if missing:
            raise EdgetlError(f"DATA {cfg.data}: no decodable {name} images for class(es) {missing}")
    check_fractions(fractions, class_counts(tr_y, n_classes), classes, cfg.fractions)
    timings["decode"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    from .tfenv import set_seed, tf_and_keras

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
        weights["bn_statistics_from_images"] = trainmod.calibrate_random_bn(base, tr_px, spec, seed=cfg.seed)
    base.trainable = False
    timings["build_base"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    with _progress(console) as prog:
        task = prog.add_task("base features (all images, once)", total=len(tr_px) + len(va_px))
        f_tr = trainmod.compute_features(base, tr_px, spec, 32, progress=lambda n: prog.advance(task, n))
        f_va = trainmod.compute_features(base, va_px, spec, 32, progress=lambda n: prog.advance(task, n))
    feat_seconds = time.perf_counter() - t
    timings["features"] = round(feat_seconds, 3)
    per_image = feat_seconds / max(1, len(tr_px) + len(va_px))
    base_weights = base.get_weights()  # fine-tuning changes the base: restored after every fraction
    ft_lr = cfg.fine_tune_lr or cfg.lr * trainmod.FT_LR_FACTOR

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
        head = trainmod.build_head(f_tr.shape[1], n_classes, cfg.head, cfg.dropout, cfg.seed)
        hist = trainmod.fit_head(head, (f_tr[idx], tr_y[idx]), (f_va, va_y), cfg.epochs, cfg.lr, cfg.batch_size,
                                 cfg.patience, cfg.seed, console, desc=f"head ({len(idx)} images)")
        head_seconds = time.perf_counter() - t
        acc_a, cm_a = _head_eval(head, f_va, va_y)
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
            model = trainmod.assemble(base, head)
            t = time.perf_counter()
            fh = trainmod.fine_tune(model, cfg.fine_tune, tr_px[idx], tr_y[idx], va_px, va_y, spec,
                                    cfg.fine_tune_epochs, ft_lr, cfg.batch_size, 0, min(cfg.patience, 3), cfg.seed,
                                    console)
            ft_seconds = time.perf_counter() - t
            # trainable parameters while fine-tuning: the head + the unfrozen base layers (not BN)
            heads = {id(layer) for layer in model.layers if layer.name.startswith(trainmod.HEAD_PREFIX)}
            trainmod.set_fine_tune_layers([layer for layer in model.layers if id(layer) not in heads], cfg.fine_tune)
            n_tr = _trainable_params(model)
            for layer in model.layers:
                layer.trainable = id(layer) in heads
            acc_b, cm_b = trainmod.evaluate(model, va_px, va_y, spec, cfg.batch_size)
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
        "edgetl_version": rundir._edgetl_version(),
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
