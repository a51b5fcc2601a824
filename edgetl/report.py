"""PNG plots (matplotlib Figure API with the Agg canvas, imported lazily; no pyplot): training curves and confusion matrices.

C may append bench plot functions here.
"""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(figsize):
    """A matplotlib Figure without pyplot (no global state: safe off the main thread, lighter import)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def plot_history(history: dict, path: str | Path) -> None:
    """Loss and accuracy per epoch for every phase ({"head": {...}, "fine_tune": {...}}), one line per
    series, phases laid end to end on the epoch axis."""
    fig = _figure((10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    start = 0
    for phase, h in history.items():
        if not isinstance(h, dict) or "loss" not in h:
            continue
        n = len(h["loss"])
        x = list(range(start + 1, start + n + 1))
        for key, ax in (("loss", ax_loss), ("val_loss", ax_loss), ("accuracy", ax_acc), ("val_accuracy", ax_acc)):
            if key in h:
                ax.plot(x, h[key], marker=".", label=f"{phase} {key}")
        if h.get("best_epoch"):
            ax_loss.axvline(start + h["best_epoch"], color="grey", linestyle=":", linewidth=1)
        start += n
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("edgetl training (dotted: best epoch, weights restored)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_confusion(cm, classes, path: str | Path, title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    import numpy as np

    cm = np.asarray(cm)
    n = len(classes)
    fig = _figure((max(3.5, 0.6 * n + 2.5), max(3, 0.6 * n + 2)))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    hi = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if hi and cm[i, j] > hi / 2 else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
