"""`edgetl compare`'s report: the summary table (data needed for a target accuracy, time, relative cost,
accuracy per arm), compare.csv, the learning-curve plot and the tables printed on the console."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .config import ARM_TITLES


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
            "seconds": r["seconds"],
            "relative_cost": round(r["seconds"] / ref["seconds"], 2) if ref["seconds"] else None,
            "images_seen": r["images_seen"], "base_passes": r["base_passes"],
            "trainable_params": r["trainable_params"], "val_accuracy": r["val_accuracy"], "n_train": r["n_train"],
            "fraction": fmax,
        }
        if "test_accuracy" in r:
            rows[arm]["test_accuracy"] = r["test_accuracy"]
    return {"target_accuracy": target, "fraction": fmax, "arms": rows}


def results_csv(results: list[dict]) -> str:
    cols = ["arm", "fraction", "n_train", "val_accuracy", "test_accuracy", "seconds", "images_seen", "base_passes",
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
    if report.get("n_test"):
        t.add_row(f"Test accuracy ({report['test_source']}: {report['n_test']} images, never used to choose)",
                  *[f"{rows[a]['test_accuracy']:.3f}" for a in arms])
    t.add_row("Images seen / base passes", *[f"{rows[a]['images_seen']} / {rows[a]['base_passes']}" for a in arms])
    t.add_row("Trainable parameters", *[f"{rows[a]['trainable_params']:,}" for a in arms])
    console.print(t)
    d = Table(title="per arm and fraction")
    tested = bool(report.get("n_test"))
    for c in ("arm", "frac", "imgs", "val acc", *(["test acc"] if tested else []), "time s", "seen", "epochs"):
        d.add_column(c, justify="left" if c == "arm" else "right", no_wrap=True)
    for r in report["results"]:
        ep = f"{r['epochs']:g}" + (f" ({r['stopped_by']})" if r["arm"] == "from-scratch" else "")
        if r["arm"] == "fine-tuning" and not r["kept"]:
            ep += " (kept out)"
        d.add_row(r["arm"], f"{r['fraction']:g}", str(r["n_train"]), f"{r['val_accuracy']:.3f}",
                  *([f"{r['test_accuracy']:.3f}"] if tested else []), f"{r['seconds']:.1f}", str(r["images_seen"]), ep)
    console.print(d)
    b = report["budget"]
    console.print(f"from-scratch budget: {b['spec']} (reference: the "
                  f"{'fine-tuning' if 'fine-tuning' in rows else 'feature-extraction'} arm's time at the "
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
