"""The search's report: the Pareto set (accuracy up, latency and size down), its table in the terminal,
the Pareto PNG, and the one line when nothing fits the budget."""

from __future__ import annotations

from pathlib import Path


def pareto(rows: list[dict]) -> list[dict]:
    """Trials no other trial beats on val accuracy, latency and size at once, by accuracy."""
    def dominates(a, b):
        ge = (a["val_accuracy"] >= b["val_accuracy"] and a["latency_ms"] <= b["latency_ms"]
              and a["size_mb"] <= b["size_mb"])
        gt = (a["val_accuracy"] > b["val_accuracy"] or a["latency_ms"] < b["latency_ms"]
              or a["size_mb"] < b["size_mb"])
        return ge and gt

    front = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: (-r["val_accuracy"], r["latency_ms"]))


def describe(c: dict) -> str:
    return (f"alpha {c['alpha']:g}, {c['image_size']} px, {c['head']} head, dropout {c['dropout']:.1f}, "
            f"+{c['augment']} views, {c['format']}")


def misses_text(misses: dict, short: bool = False) -> str:
    units = ({"latency_ms": " ms", "size_mb": " MB", "ram_mb": " MB RAM"} if short else
             {"latency_ms": " ms latency", "size_mb": " MB size", "ram_mb": " MB RAM"})
    return ", ".join(f"{v:.2f}{units[k]}" for k, v in misses.items())


def print_report(console, report: dict) -> None:
    from rich import box
    from rich.table import Table

    by = {r["number"]: r for r in report["trials"]}
    est = report["device_profile"] is not None
    lat = "estimated" if est else "measured"
    tab = Table(title=f"Pareto set: {len(report['pareto'])} of {report['n_trials']} trials "
                      f"(budget {report['budget']['max_latency_ms']:g} ms"
                      + (f", {report['budget']['max_size_mb']:g} MB" if report["budget"]["max_size_mb"] else "")
                      + (f", {report['budget']['max_ram_mb']:g} MB RAM" if report["budget"]["max_ram_mb"] else "")
                      + f" on {report['device']}; latency {lat})")
    tab.box, tab.padding = box.SIMPLE, (0, 1)
    for col in ("#", "alpha px head dropout views format", "val acc", "ms", "MB", "RAM", "fits"):
        tab.add_column(col, no_wrap=col != "fits")
    for n in report["pareto"]:
        r = by[n]
        c = r["config"]
        config = f"{c['alpha']:g} {c['image_size']} {c['head']} {c['dropout']:.1f} +{c['augment']} {c['format']}"
        tab.add_row(str(n) + ("*" if r.get("baseline") else ""), config, f"{r['val_accuracy']:.3f}",
                    f"{r['latency_ms']:.2f}", f"{r['size_mb']:.2f}", f"{r['ram_mb']:.0f}",
                    "yes" if r["feasible"] else "+" + misses_text(r["misses"], short=True))
    console.print(tab)
    if any(by[n].get("baseline") for n in report["pareto"]):
        console.print("* train's defaults (the study's first trials)", highlight=False)
    best = report["best"]
    if best is not None:
        console.print(f"best feasible: trial {best['trial']}: {describe(best['config'])}: val accuracy "
                      f"[bold]{best['val_accuracy']:.3f}[/], {best['latency_ms']:.2f} ms "
                      f"({best['latency_source']}), {best['size_mb']:.2f} MB", highlight=False)
        base = report.get("baseline") or {}
        if best.get("baseline"):
            console.print("the best feasible trial is train's defaults: no configuration beat them on val by more "
                          "than one image", highlight=False)
        elif base.get("best_trial") is not None:
            b = by[base["best_trial"]]
            console.print(f"train's defaults at their best, trial {b['number']} ({describe(b['config'])}): val "
                          f"accuracy {b['val_accuracy']:.3f}, {b['latency_ms']:.2f} ms, {b['size_mb']:.2f} MB; "
                          f"the best feasible: {100 * (best['val_accuracy'] - b['val_accuracy']):+.1f} points at "
                          f"{best['latency_ms'] / b['latency_ms']:.2f}x the latency", highlight=False)
    elif report["closest"] is not None:
        c = report["closest"]
        console.print(f"[yellow]nothing fits the budget[/]: the closest is trial {c['trial']} "
                      f"({describe(c['config'])}), over by {misses_text(c['misses'])}", highlight=False)


def plot_pareto(report: dict, path: Path) -> None:
    """Val accuracy against latency (marker area: file size), feasible trials filled, the Pareto set joined."""
    from matplotlib.figure import Figure

    rows = report["trials"]
    if not rows:
        return
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for ok, style in ((True, {"alpha": 0.8}), (False, {"facecolors": "none", "alpha": 0.6})):
        sel = [r for r in rows if r["feasible"] == ok]
        if sel:
            ax.scatter([r["latency_ms"] for r in sel], [r["val_accuracy"] for r in sel],
                       s=[30 + 40 * r["size_mb"] for r in sel], edgecolors="C0", label="fits" if ok else "over budget",
                       **({"color": "C0"} if ok else {}), **style)
    by = {r["number"]: r for r in rows}
    front = sorted((by[n] for n in report["pareto"]), key=lambda r: r["latency_ms"])
    ax.plot([r["latency_ms"] for r in front], [r["val_accuracy"] for r in front], "k--", lw=1, label="Pareto set")
    ax.axvline(report["budget"]["max_latency_ms"], color="C3", lw=1, label="latency budget")
    src = "estimated" if report["device_profile"] else "measured"
    ax.set_xlabel(f"latency, ms ({src}, {report['device']})")
    ax.set_ylabel("val accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("edgetl search (marker area: file size)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
