"""What a bench reports: the summary per thread count, the change against a previous bench JSON
(--compare), the table and notes on the console, and the JSON/CSV/PNG files."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from pathlib import Path

from ..core.errors import EdgetlError
from ..core.rundir import write_bytes, write_json

CSV_COLUMNS = ["name", "format", "threads", "status", "load_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
               "runs", "cpu_p50_ms", "throughput_ips", "accuracy", "accuracy_split", "eval_images", "bytes",
               "peak_rss_mb", "macs", "gmacs_per_s", "pct_of_fp32_peak", "image_size", "alpha", "file", "emulated_cpu", "agreement_vs_host",
               "max_abs_dp_vs_host", "emulation_wall_s", "amx", "measured_on"]


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
    except OSError as e:
        raise EdgetlError(f"--compare {p}: cannot read it ({e.strerror})") from None
    if not isinstance(prev, dict) or "rows" not in prev:
        raise EdgetlError(f"--compare {p}: not an `edgetl bench` JSON (no 'rows')")
    rows = prev["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise EdgetlError(f"--compare {p}: 'rows' is not a list of bench rows; give a JSON `edgetl bench` wrote")
    rows[:] = [r for r in rows if all(isinstance(r.get(k), (str, int, type(None))) and not isinstance(r.get(k), bool)
                                      for k in ("name", "threads", "format", "emulated_cpu"))]
    for r in rows:
        for k in ("latency_ms", "accuracy", "bytes"):
            v = r.get(k)
            if k == "latency_ms" and v is not None and not (isinstance(v, dict) and _num(v.get("p50")) and v["p50"] > 0):
                r.pop(k)  # an edited row: compared on what it still has
            elif k != "latency_ms" and v is not None and not _num(v):
                r.pop(k)
    return prev


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v not in (float("inf"), float("-inf"))


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
    remote = (result.get("remote") or {}).get("address")
    tab = Table(title=f"edgetl bench — measured on {result['device']}{f' at {remote}' if remote else ''} — "
                      f"{host['cpu']}, {host['cores']} cores, {host['arch']}", title_justify="left")
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
    for name, f in dict.fromkeys((r["name"], r["file"]) for r in rows if r.get("integrity") == "unverified"):
        out.append(f"[yellow]unverified[/]: {name} ({f}) has no valid sealed sha256 and no manifest entry: its "
                   "content could not be checked")
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
def output_folder(paths: list[Path], out: Path | None) -> tuple[Path, str]:
    """(folder, flag naming it): --out, else RUN/bench for one run, else ./bench."""
    if out is not None:
        return Path(out), "--out"
    runs = [p for p in paths if p.is_dir()]
    return ((runs[0] / "bench"), f"RUN {runs[0]}: bench/") if len(runs) == 1 else (Path("bench"), "./bench")


def _probe(folder: Path, flag: str) -> None:
    """Write a temp file in `folder`, or in its nearest existing ancestor when it is still to be made (the
    write itself is the test: permissions, read-only mounts and root alike); nothing is left behind."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise EdgetlError(f"{flag} {folder}: exists and is not a folder")
    at = folder.absolute()
    while not at.exists():
        at = at.parent
    try:
        if not at.is_dir():
            raise NotADirectoryError(20, f"{at} is not a folder")
        with tempfile.TemporaryFile(dir=at):
            pass
    except OSError as e:
        raise EdgetlError(f"{flag} {folder}: cannot write in it ({e.strerror}); nothing was measured") from None


def check_outputs(paths: list[Path], out: Path | None, json_path: Path | None) -> None:
    """Every output place of a bench is writable, before anything is measured (one line naming it)."""
    folder, flag = output_folder(paths, out)
    _probe(folder, flag if flag == "--out" else "bench: output folder")
    if json_path is not None:
        j = Path(json_path)
        if j.is_dir():
            raise EdgetlError(f"--json {j}: is a folder; give a file name, e.g. {j / 'bench.json'}")
        if j.exists() and not os.access(j, os.W_OK):
            raise EdgetlError(f"--json {j}: cannot write it (permission denied); nothing was measured")
        _probe(j.absolute().parent, f"--json {j}: its folder")


def write_outputs(result: dict, paths: list[Path], out: Path | None, json_path: Path | None, device: str,
                  console) -> dict:
    """bench.json/.csv/.png in --out (or RUN/bench/<device>-<date>.*), plus the --json copy."""
    folder, _ = output_folder(paths, out)
    stem = "bench" if out is not None else f"{device}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
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


PLACE_MARKERS = {"here": ("o", "this machine"), "remote": ("s", "remote"), "emulated": ("^", "emulated")}


def plot(result: dict, png: Path) -> bool:
    """The bench PNG (bench_figure); False when matplotlib is missing."""
    fig = bench_figure(result)
    if fig is None:
        return False
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes(png, buf.getvalue())
    return True


def bench_figure(result: dict):
    """Accuracy against p50 latency per row: one colour per format, one marker per place (this machine,
    remote, emulated), plain millisecond ticks, labels placed where they overlap nothing. None without
    matplotlib."""
    # the Figure API renders with Agg, without pyplot's global state
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        return None
    from ..core.formats import FORMATS

    pts = [r for r in result["rows"] if r["status"] == "ok" and r.get("latency_ms")]
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = list(FORMATS)
    colour = {f: f"C{names.index(f) % 10}" if f in names else "C9" for f in dict.fromkeys(r["format"] for r in pts)}
    places = dict.fromkeys(r.get("measured_on", "here") for r in pts)
    xy = [(r["latency_ms"]["p50"], 100 * r["accuracy"] if r.get("accuracy") is not None else 0.0) for r in pts]
    for r, (x, y) in zip(pts, xy):
        ax.scatter(x, y, s=46, color=colour[r["format"]], marker=PLACE_MARKERS.get(r.get("measured_on"), ("o",))[0],
                   edgecolors="black", linewidths=0.4, zorder=3)
    if xy:
        _log_ms_axis(ax, [x for x, _ in xy], FixedLocator, FuncFormatter, NullLocator)
        ys = [y for _, y in xy]
        pad = max(2.0, (max(ys) - min(ys)) * 0.25)
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0 + pad / 2, max(ys) + pad))
    ax.set_xlabel("batch-1 latency p50 (ms)")
    ax.set_ylabel("accuracy (%)")
    where = result.get("measured_on") or {}
    ax.set_title(f"edgetl bench: measured on {result['device']}"
                 + (f" at {where['remote']}" if where.get("remote") else "")
                 + (f"\n{where.get('cpu')}, {where.get('cores')} cores" if where.get("cpu") else ""), fontsize=10)
    ax.grid(alpha=0.3, which="major")
    handles = [Patch(color=c, label=f) for f, c in colour.items()]  # colour swatches: the marker is the place
    handles += [Line2D([], [], linestyle="", marker=PLACE_MARKERS[p][0], color="grey", label=PLACE_MARKERS[p][1])
                for p in places if p in PLACE_MARKERS] if len(places) > 1 or "here" not in places else []
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    _place_labels(fig, ax, pts, xy)  # last: the layout is final, so the label boxes are where they are drawn
    return fig


def _log_ms_axis(ax, xs, FixedLocator, FuncFormatter, NullLocator) -> None:
    """A log axis whose ticks are plain milliseconds on the 1-2-5 series, with a tick at both ends."""
    import math

    series = [m * 10 ** e for e in range(-3, 6) for m in (1, 2, 5)]
    lo = max([v for v in series if v <= min(xs) / 1.05] or [series[0]])
    hi = min([v for v in series if v >= max(xs) * 1.05] or [series[-1]])
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [v for v in series if lo <= v <= hi]
    if len(ticks) > 8:  # wide ranges: decades only
        ticks = [v for v in ticks if math.isclose(math.log10(v), round(math.log10(v)))]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _place_labels(fig, ax, pts: list[dict], xy: list[tuple]) -> None:
    """Each point's label ("name xN") at the first of a few offsets where it overlaps no other label, no
    point and stays inside the axes; hand-placed because matplotlib has no label-avoidance."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    dots = [ax.transData.transform(p) for p in xy]
    taken = []
    # beside the point without a line while no other point is nearer to the label; else above or below it,
    # farther out, with a leader line
    offsets = [(7, 5), (-7, 5), (7, -11), (-7, -11)] + [(0, d) for k in range(1, 7) for d in (6 + 12 * k, -12 - 12 * k)]
    order = sorted(range(len(pts)), key=lambda i: xy[i][0])
    for i in order:
        r = pts[i]
        text = f"{r['name']} x{r['threads']}"
        chosen = first = None
        for dx, dy in offsets:
            lined = dx == 0
            ann = ax.annotate(text, xy[i], xytext=(dx, dy), textcoords="offset points", fontsize=7,
                              ha="center" if lined else "left" if dx > 0 else "right",
                              va="bottom" if dy > 0 else "top" if lined else "bottom",
                              arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.45", "shrinkA": 1,
                                          "shrinkB": 4} if lined else None)
            ann.update_positions(renderer)
            e = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            bb = Bbox.from_extents(e.x0 - 5, e.y0 - 2, e.x1 + 5, e.y1 + 2)  # a gap between neighbours
            inside = box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1
            own = _distance(bb, dots[i])
            others = [_distance(bb, d) for j, d in enumerate(dots) if j != i]
            clear = not any(bb.overlaps(t) for t in taken) and all(o > 3.0 for o in others) and \
                (lined or all(o > own for o in others))
            if inside and clear:
                chosen = (ann, bb)
                break
            if first is None:
                first = (ann, bb)  # kept when no offset is free
            else:
                ann.remove()
        if chosen is None:
            chosen = first
        elif first is not None:
            first[0].remove()
        taken.append(chosen[1])


def _distance(bb, point) -> float:
    """Pixels from a point to a box (0 inside it)."""
    dx = max(bb.x0 - point[0], 0.0, point[0] - bb.x1)
    dy = max(bb.y0 - point[1], 0.0, point[1] - bb.y1)
    return (dx * dx + dy * dy) ** 0.5
