"""What a bench reports: the summary per thread count, the change against a previous bench JSON
(--compare), the table and notes on the console, and the JSON/CSV/PNG files."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from pathlib import Path

from ..core.errors import EdgetlError
from ..core.rundir import write_bytes, write_json

CSV_COLUMNS = ["name", "format", "threads", "status", "load_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
               "runs", "cpu_p50_ms", "throughput_ips", "accuracy", "accuracy_split", "eval_images", "bytes",
               "peak_rss_mb", "macs", "gmacs_per_s", "pct_of_fp32_peak", "image_size", "alpha", "file", "emulated_cpu", "agreement_vs_host",
               "max_abs_dp_vs_host", "emulation_wall_s", "amx"]


# ---- summary and compare ----------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict:
    """Per thread count: the fastest artifact, its speed-up over Keras, int8 vs fp32 speed per runtime."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("latency_ms") and not r.get("emulated_cpu")]
    out: dict = {}
    if not ok:
        return out
    for n in sorted({r["threads"] for r in ok}):
        at = [r for r in ok if r["threads"] == n]
        best = min((r for r in at if r["format"] != "keras"), key=lambda r: r["latency_ms"]["p50"], default=None)
        keras = next((r for r in at if r["format"] == "keras"), None)
        s: dict = {}
        if best:
            s["best"] = {"name": best["name"], "p50_ms": best["latency_ms"]["p50"]}
        if best and keras:
            s["speedup_best_vs_keras"] = keras["latency_ms"]["p50"] / best["latency_ms"]["p50"]
        for rt in ("tflite", "onnx"):
            f32 = next((r for r in at if r["format"] == f"{rt}-fp32"), None)
            i8 = next((r for r in at if r["format"] == f"{rt}-int8"), None)
            if f32 and i8:
                s[f"{rt}_int8_vs_fp32_speed"] = f32["latency_ms"]["p50"] / i8["latency_ms"]["p50"]
        out[f"threads={n}"] = s
    return out


def load_compare(path: Path) -> dict:
    """A previous `edgetl bench` JSON for --compare, or one line saying what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise EdgetlError(f"--compare {p}: no such file")
    try:
        prev = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgetlError(f"--compare {p}: not a JSON file") from None
    if not isinstance(prev, dict) or "rows" not in prev:
        raise EdgetlError(f"--compare {p}: not an `edgetl bench` JSON (no 'rows')")
    return prev


def apply_compare(rows: list[dict], prev: dict) -> None:
    """Each row gets "compare": its p50, accuracy and size change against the same row of `prev`."""
    old = {(r.get("name"), r.get("threads")): r for r in prev["rows"]}
    by_fmt: dict = {}
    for r in prev["rows"]:
        if not r.get("emulated_cpu"):
            by_fmt.setdefault((r.get("format"), r.get("threads")), []).append(r)
    for r in rows:
        o = old.get((r["name"], r["threads"]))
        if o is None and not r.get("emulated_cpu") and len(by_fmt.get((r["format"], r["threads"]), [])) == 1:
            # same format, renamed row (an emulated row is only ever compared with an emulated row)
            o = by_fmt[(r["format"], r["threads"])][0]
        if o is None:
            r["compare"] = {"note": "new row"}
            continue
        c: dict = {}
        if r.get("latency_ms") and o.get("latency_ms"):
            c["p50_ms_before"] = o["latency_ms"]["p50"]
            c["p50_change_pct"] = 100.0 * (r["latency_ms"]["p50"] / o["latency_ms"]["p50"] - 1.0)
        if r.get("accuracy") is not None and o.get("accuracy") is not None:
            c["accuracy_change"] = r["accuracy"] - o["accuracy"]
        if r.get("bytes") and o.get("bytes"):
            c["bytes_change_pct"] = 100.0 * (r["bytes"] / o["bytes"] - 1.0)
        r["compare"] = c


# ---- console ----------------------------------------------------------------------------------------
def _fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def render(result: dict, console) -> None:
    """The table, then one line per note: Keras call modes, ONNX sessions, emulation, peak, eval sets,
    missing accuracy, summary, the profile's published references."""
    rows = result["rows"]
    emu = any(r.get("emulated_cpu") for r in rows)
    tab = _table(result, emu, any("compare" in r for r in rows))
    if not console.is_terminal:  # files and pipes get the full table (rich would squeeze it into 80 columns)
        from rich.console import Console

        Console(file=console.file, width=max(console.width, 200 if emu else 170), no_color=console.no_color).print(tab)
    else:
        console.print(tab)
    lines = [*_row_notes(rows), *_setting_notes(result, emu), *_summary_lines(result)]
    for line in lines:
        console.print(line, highlight=False)


def _table(result: dict, emu: bool, comp: bool):
    from rich.table import Table

    host = result["host"]
    tab = Table(title=f"edgetl bench — {result['device']} — {host['cpu']}, {host['cores']} cores, {host['arch']}",
                title_justify="left")
    splits = {r.get("accuracy_split") for r in result["rows"] if r.get("accuracy") is not None}
    acc = {"test": "test acc", "val": "val acc"}.get(splits.pop(), "accuracy") if len(splits) == 1 else "accuracy"
    cols = ["artifact", "thr", "load ms", "p50 ms", "p90/p99 ms", "mean ± std", "cpu ms", "img/s", acc,
            "MB", "RSS MB", "GMAC/s (% peak)"]
    if emu:
        cols.insert(cols.index(acc) + 1, "top-1 vs host")
    if any(r.get("amx") in ("on", "off") for r in result["rows"]):  # an AMX CPU: which rows could use it
        cols.insert(cols.index("thr") + 1, "AMX")
    if comp:
        cols += ["Δ p50", "Δ acc"]
    cols.append("status")
    for col in cols:
        tab.add_column(col, justify="left" if col in ("artifact", "status") else "right", no_wrap=col != "status")
    for r in result["rows"]:
        tab.add_row(*_cells(r, cols))
    return tab


def _cells(r: dict, cols: list[str]) -> list[str]:
    """One table row, in the order of `cols`."""
    lat = r.get("latency_ms") or {}
    acc = r.get("accuracy")
    gm = r.get("gmacs_per_s")
    pct = r.get("pct_of_fp32_peak")
    cells = [r["name"], str(r["threads"]), _fmt(r.get("load_ms"), ".0f"), _fmt(lat.get("p50")),
             f"{lat['p90']:.2f}/{lat['p99']:.2f}" if lat else "–",
             f"{lat['mean']:.2f} ± {lat['std']:.2f}" if lat else "–", _fmt((r.get("cpu_ms") or {}).get("p50")),
             _fmt(r.get("throughput_ips"), ".0f"),
             f"{100 * acc:.1f}%" if acc is not None else "–",
             _fmt(r["bytes"] / 1e6 if r.get("bytes") else None),
             _fmt(None if r.get("emulated_cpu") else r.get("peak_rss_mb"), ".0f"),
             (f"{gm:.1f}" + (f" ({pct:.0f}%)" if pct is not None else "")) if gm is not None else "–"]
    if "AMX" in cols:
        cells.insert(cols.index("AMX"), r.get("amx") or "–")
    if "top-1 vs host" in cols:
        a = r.get("agreement_vs_host")
        cells.insert(cols.index("top-1 vs host"),
                     "–" if a is None else f"{100 * a:.1f}% (Δp≤{r['max_abs_dp_vs_host']:.3f})")
    if "Δ p50" in cols:
        c = r.get("compare", {})
        cells += [f"{c['p50_change_pct']:+.1f}%" if "p50_change_pct" in c else c.get("note", "–"),
                  f"{100 * c['accuracy_change']:+.1f} pt" if "accuracy_change" in c else "–"]
    st = r["status"]
    cells.append(f"[green]{st}[/]" if st == "ok" else f"[yellow]{st}[/]" if st.startswith("skipped")
                 else f"[red]{st}[/]")
    return cells


def _row_notes(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        for mode, st in (r.get("keras_modes_ms") or {}).items():
            out.append(f"{r['name']} x{r['threads']} called as {mode.replace('_', ' ')}: p50 {st['p50']:.2f} ms "
                       "(the row above times the model traced once into a tf.function graph)")
    sessions = dict.fromkeys((r["name"], r["session"]) for r in rows if r.get("session") not in (None, "", "default"))
    out += [f"{name}: onnxruntime session {session}" for name, session in sessions]
    amx = dict.fromkeys((r["name"], r["amx"], r.get("amx_reason")) for r in rows if r.get("amx") in ("on", "off"))
    out += [f"{name}: AMX {status} ({why})" for name, status, why in amx]
    if any(r.get("amx") == "unavailable" for r in rows) and not amx:
        out.append("AMX: unavailable on this CPU (--amx changes nothing here)")
    out.append("cpu ms = process CPU time per inference (p50): not inflated when other programs share the CPU")
    return out


def _setting_notes(result: dict, emu: bool) -> list[str]:
    out = []
    if emu:
        em = result.get("emulation") or {}
        out.append(f"(emulated) rows: the same files run by the aarch64 builds of the runtimes under "
                   f"qemu-aarch64-static -cpu {em.get('cpu')}: accuracy, and top-1 vs host = share of images whose "
                   "top-1 equals this machine's run of the file (Δp≤ = largest probability difference); "
                   "no latency: emulated, not device latency")
    pk = result["peak"]
    if pk.get("fp32_gflops_per_core"):
        out.append(f"FP32 peak per core: {pk['fp32_gflops_per_core']} GFLOP/s = {pk.get('fp32_gmacs_per_core')} "
                   f"GMAC/s ({pk.get('basis')}); % peak = GMAC/s at p50 / (peak x threads)")
    for es in result["eval_sets"]:
        msg = f"accuracy on {es['images']} images ({es['source']}, {es['size']} px)"
        if es["skipped"]:
            msg += f"; {len(es['skipped'])} unreadable image(s) skipped"
        if es.get("ignored"):
            msg += f"; {es['ignored']} file(s) missing or not images"
        out.append(msg)
    for note in dict.fromkeys(r["accuracy_note"] for r in result["rows"] if r.get("accuracy_note")):
        out.append(f"[yellow]no accuracy:[/] {note}")
    return out


def _summary_lines(result: dict) -> list[str]:
    out = []
    for k, s in result.get("summary", {}).items():
        bits = []
        if "best" in s:
            bits.append(f"fastest {s['best']['name']} ({s['best']['p50_ms']:.2f} ms p50)")
        if "speedup_best_vs_keras" in s:
            bits.append(f"{s['speedup_best_vs_keras']:.1f}x faster than the Keras model (graph call)")
        for rt in ("tflite", "onnx"):
            if f"{rt}_int8_vs_fp32_speed" in s:
                v = s[f"{rt}_int8_vs_fp32_speed"]
                bits.append(f"{rt} int8 is {v:.2f}x the speed of fp32 ({'faster' if v > 1 else 'slower'})")
        if bits:
            out.append(f"{k}: " + "; ".join(bits))
    prof = result.get("profile")
    if prof and prof.get("reference"):
        out.append(f"published reference latencies for {prof.get('description', prof['name'])}:")
        for ref in prof["reference"]:
            out.append(f"  {ref.get('model')}: {ref.get('latency_ms')} ms ({ref.get('runtime', '')}, "
                       f"{ref.get('threads', '?')} threads) — {ref.get('source')}")
    return out


# ---- files ------------------------------------------------------------------------------------------
def write_outputs(result: dict, paths: list[Path], out: Path | None, json_path: Path | None, device: str,
                  console) -> dict:
    """bench.json/.csv/.png in --out (or RUN/bench/<device>-<date>.*), plus the --json copy."""
    if out is not None:
        folder, stem = Path(out), "bench"
    else:
        runs = [p for p in paths if p.is_dir()]
        folder = (runs[0] / "bench") if len(runs) == 1 else Path("bench")
        stem = f"{device}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": str(folder / f"{stem}.json"), "csv": str(folder / f"{stem}.csv")}
    write_json(files["json"], result)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, result)
        files["json_copy"] = str(json_path)
    write_bytes(files["csv"], csv_text(result["rows"]).encode())
    png = folder / f"{stem}.png"
    if plot(result, png):
        files["png"] = str(png)
    else:
        console.print("[yellow]note:[/] matplotlib is not installed: no PNG plot "
                      "(pip install 'edgetl[plot]' to get one)")
    console.print("wrote " + ", ".join(files.values()), highlight=False)
    return files


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in rows:
        lat = r.get("latency_ms") or {}
        w.writerow({**{k: r.get(k) for k in CSV_COLUMNS},
                    **{f"{k}_ms": lat.get(k) for k in ("p50", "p90", "p99", "mean", "std")},
                    "runs": lat.get("runs"), "cpu_p50_ms": (r.get("cpu_ms") or {}).get("p50")})
    return buf.getvalue()


def plot(result: dict, png: Path) -> bool:
    """Latency (p50) against accuracy per artifact; False when matplotlib is missing."""
    # the Figure API renders with Agg, without pyplot's global state
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    pts = [r for r in result["rows"] if r["status"] == "ok" and r.get("latency_ms")]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    # artifacts often share one accuracy: stagger the labels in latency order so they stay readable
    for i, r in enumerate(sorted(pts, key=lambda r: r["latency_ms"]["p50"])):
        acc = r.get("accuracy")
        y = 100 * acc if acc is not None else 0.0
        ax.scatter(r["latency_ms"]["p50"], y, s=40)
        ax.annotate(f"{r['name']} x{r['threads']}", (r["latency_ms"]["p50"], y), fontsize=7,
                    xytext=(4, 6 + 9 * (i % 4)), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "alpha": 0.5})
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"edgetl bench — {result['device']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes(png, buf.getvalue())
    return True
