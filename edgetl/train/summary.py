"""The table `edgetl train` prints at the end: accuracies by phase, the test accuracy (when there is a test
split), image counts, skipped files and the time of each phase."""

from __future__ import annotations

from pathlib import Path

from ..core import rundir
from ..core.console import shown


def accuracy_rows(meta: dict) -> list[tuple[str, str]]:
    """(label, value) rows of every accuracy the run recorded, val ones first, then the test accuracy."""
    m, rows = meta["metrics"], []
    if meta.get("from_run"):
        rows.append(("val accuracy before update (--from)", f"{meta['from_run']['val_accuracy_before']:.3f}"))
    if (meta.get("adapt") or {}).get("val_accuracy_after") is not None:
        rows.append(("val accuracy after --adapt-bn (no labels)", f"{meta['adapt']['val_accuracy_after']:.3f}"))
    rows.append(("val accuracy (head)", f"{m['head']['val_accuracy']:.3f}"))
    ft = m.get("fine_tune") or {}
    if ft.get("skipped"):
        rows.append(("fine-tuning", "skipped (data too small)"))
    elif ft:
        rows.append(("val accuracy (fine-tuned)" if ft["kept"] else "fine-tuning", f"{ft['val_accuracy_after']:.3f}"
                     if ft["kept"] else "kept out: not better on val"))
    rows.append(("[bold]val accuracy", f"[bold]{m['val_accuracy']:.3f}"))
    if "qat" in m:
        q = m["qat"]
        rows.append(("val accuracy int8, post-training (TFLite)", f"{q['val_accuracy_ptq_int8']:.3f}"))
        rows.append(("val accuracy int8, QAT (TFLite)", f"{q['val_accuracy_qat_int8']:.3f}"))
        rows.append(("int8 files exported from", "QAT model" if q["int8_source"] == "qat" else "float model (PTQ)"))
    if m.get("test_accuracy") is not None:
        source = meta["split"].get("test_source") or "test split"
        rows.append((f"[bold]test accuracy[/] ({source}, {m['n_test']} images, never used to choose)",
                     f"[bold]{m['test_accuracy']:.3f}"))
    return rows


def print_summary(console, out: Path, meta: dict) -> None:
    from rich.table import Table

    m, tm = meta["metrics"], meta["timings"]
    tab = Table(title=f"edgetl train -> {out}", show_header=True)
    tab.add_column("")
    tab.add_column("value", justify="right")
    for label, value in accuracy_rows(meta):
        tab.add_row(label, value)
    counts = f"{m['n_train']} / {m['n_val']}" + (f" / {m['n_test']}" if m.get("n_test") else "")
    tab.add_row(f"images train / val{' / test' if m.get('n_test') else ''} (train views)",
                f"{counts} ({m['n_train_views']})")
    tab.add_row("skipped files", str(m["n_skipped"]))
    for k, v in tm.items():
        tab.add_row(f"time {k}", f"{v:.1f} s")
    console.print(tab)
    for f in meta["skipped"][:10]:
        console.print(f"  skipped {shown(f['file'])}: {shown(f['reason'])}", highlight=False, soft_wrap=True)
    if len(meta["skipped"]) > 10:
        console.print(f"  ... {len(meta['skipped']) - 10} more in {out / rundir.META_FILE}")
    console.print(f"next: [bold]edgetl export {out} --int8[/]", highlight=False, soft_wrap=True)
