"""PNG plots of a training run (training curves, confusion matrix), drawn with matplotlib's Figure API
(imported lazily; no pyplot, so no global state), in a helper process (PlotProcess) or in-process."""

from __future__ import annotations

from pathlib import Path


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


# ---------------------------------------------------------------------------------------------- run plots
def plot_run(job: dict) -> None:
    """The PNGs of a training run: job = {"dir", "history", "confusion_matrix", "classes", "title"}."""
    out = Path(job["dir"])
    plot_history(job["history"], out / "training-curves.png")
    plot_confusion(job["confusion_matrix"], job["classes"], out / "confusion-matrix.png", title=job.get("title", ""))


class PlotProcess:
    """Draws a run's PNGs in a separate Python process started ahead of time.

    Why a process: importing matplotlib and drawing take ~1 s of pure Python. In `edgetl train` that
    time would sit on the critical path (a thread competes for the GIL with Keras building and saving
    the model); a process started while the model is being built imports matplotlib on the other
    core and draws while the model is written. If the process cannot start, the plots are drawn here.
    """

    def __init__(self):
        import os
        import subprocess
        import sys

        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the folder holding this edgetl, installed or not
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgetl.core.plots"], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        except OSError:
            self.proc = None
        self.job: dict | None = None

    def submit(self, job: dict) -> None:
        import json

        self.job = job
        if self.proc is not None:
            try:
                from .rundir import json_default

                self.proc.stdin.write(json.dumps(job, default=json_default).encode())
                self.proc.stdin.close()
            except OSError:  # the process died early: draw here in wait()
                self.proc.kill()
                self.proc = None

    def wait(self) -> None:
        """Block until the PNGs are written; a failure raises with the helper's last error line."""
        from .errors import EdgetlError

        if self.proc is None:
            if self.job is not None:
                plot_run(self.job)
            return
        err = self.proc.stderr.read()  # stdin is closed by submit(): read to the end, then reap
        self.proc.wait()
        if self.proc.returncode != 0:
            lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
            raise EdgetlError(f"drawing the plots failed: {lines[-1] if lines else f'exit {self.proc.returncode}'}")

    def close(self) -> None:
        """Stop the process if it is still running (errors, Ctrl-C before submit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":  # the PlotProcess side: import matplotlib first, then wait for the job
    import json
    import sys

    from matplotlib.figure import Figure  # noqa: F401  (the slow import, done while the job is made)

    data = sys.stdin.buffer.read()
    if data:
        plot_run(json.loads(data))
