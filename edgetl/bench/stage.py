"""`edgetl bench`: latency, accuracy, size and memory of every artifact, side by side, on this CPU.

Every option is checked before any work. Then: the targets (targets.py), the evaluation images decoded
once, one fresh `python -m edgetl.bench.worker` process per artifact x thread count (measure.py), the
table and the JSON/CSV/PNG files (report.py). TensorFlow is never imported here; the Keras row's worker
imports it, when it is installed.

`--emulate` (with an aarch64 `--device` profile that names a `qemu_cpu`) runs every TFLite/ONNX file
once more with the aarch64 builds of the runtimes under user-mode QEMU (armenv.py): those rows report
accuracy and top-1 agreement with this machine's run on the same images, never latency.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.amx import check_mode as check_amx_mode
from ..core.console import native_logs_aside
from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS
from .devices import emulation_cpu, fp32_peak, host_info, host_slug, load_device, parse_threads
from .measure import emulation_info, measure_rows
from .report import apply_compare, load_compare, render, summarize, write_outputs
from .targets import assign_labels, collect_targets, describe, keras_macs, prepare_eval


@dataclass
class Settings:
    """The checked options of one bench."""
    threads: list[int]
    formats: list[str] | None
    profile: dict | None
    previous: dict | None  # the --compare JSON
    emulate_cpu: str | None
    amx: str = "auto"


def check_options(data_dir, device, threads, compare, min_time, min_runs, formats, emulate,
                  amx: str = "auto") -> Settings:
    """Every option, checked before any work (one line naming the flag on bad input)."""
    thread_list = parse_threads(threads)
    check_amx_mode(amx)
    if min_time <= 0:
        raise EdgetlError(f"--min-time {min_time}: must be > 0 seconds")
    if min_runs < 1:
        raise EdgetlError(f"--min-runs {min_runs}: must be >= 1")
    fmt_list = None
    if formats:
        fmt_list = [s.strip() for s in formats.split(",") if s.strip()]
        bad = [f for f in fmt_list if f not in FORMATS]
        if bad:
            raise EdgetlError(f"--format {bad[0]!r}: valid formats: {', '.join(FORMATS)}")
    profile = load_device(device) if device else None
    if profile and fmt_list is None and profile.get("formats"):
        fmt_list = list(profile["formats"])
    thread_list = thread_list or (profile or {}).get("threads") or [1]
    prev = load_compare(compare) if compare else None
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EdgetlError(f"--data {data_dir}: no such folder")
    return Settings(thread_list, fmt_list, profile, prev, emulation_cpu(profile) if emulate else None, amx)


def bench(paths: list[Path], data_dir: Path | None = None, device: str | None = None, threads: str | None = None,
          json_path: Path | None = None, out: Path | None = None, compare: Path | None = None,
          min_time: float = 2.0, min_runs: int = 50, formats: str | None = None, emulate: bool = False,
          console=None, verify: bool = True, verbose: bool = False, amx: str = "auto") -> dict:
    """The whole `edgetl bench`; verify: each file's sha256 is checked before it is measured (a file that
    fails gets an error row); verbose: the runtimes' native log lines stay on stderr."""
    from rich.console import Console

    console = console or Console()
    opts = check_options(data_dir, device, threads, compare, min_time, min_runs, formats, emulate, amx)
    with native_logs_aside(console, verbose):
        targets = collect_targets([Path(p) for p in paths], opts.formats)
        if not targets:
            raise EdgetlError(f"no artifacts match --format {formats}")
        for t in targets:
            describe(t, verify)
        return _measure(targets, paths, data_dir, opts, json_path, out, compare, min_time, min_runs, console)


def _measure(targets, paths, data_dir, opts: Settings, json_path, out, compare, min_time, min_runs,
             console) -> dict:
    """Rows for every target, the table, the files; exit status from the rows (check_rows)."""
    assign_labels(targets)
    keras_macs(targets)
    host, profile = host_info(), opts.profile
    peak = fp32_peak(profile, host)
    device_name = (profile or {}).get("name") or host_slug(host)
    if profile and profile.get("arch") and profile["arch"] != host["arch"]:
        console.print(f"[yellow]note:[/] profile {profile['name']!r} is for {profile['arch']}, this machine is "
                      f"{host['arch']}: its threads/formats are applied, its reference numbers are not comparable")
    if opts.emulate_cpu:
        console.print(f"--emulate: each TFLite/ONNX file also runs on aarch64 kernels under QEMU ({opts.emulate_cpu}): "
                      "accuracy and agreement with this machine only, no latency", highlight=False)

    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        sets = prepare_eval(targets, Path(data_dir) if data_dir else None, Path(tmp), console)
        rows = measure_rows(targets, opts.threads, sets, min_time, min_runs, peak, Path(tmp), opts.emulate_cpu,
                            console, amx=opts.amx)

    result = {"edgetl_bench": 1, "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "device": device_name, "profile": profile, "host": host, "peak": peak,
              "settings": {"threads": opts.threads, "min_time_s": min_time, "min_runs": min_runs,
                           "formats": opts.formats, "data": str(data_dir) if data_dir else None,
                           "emulate": opts.emulate_cpu, "amx": opts.amx},
              "eval_sets": [{k: v for k, v in s.items() if k not in ("pixels", "labels")} for s in sets.values()],
              "rows": rows}
    if opts.emulate_cpu:
        result["emulation"] = emulation_info(opts.emulate_cpu)
    result["summary"] = summarize(rows)
    if opts.previous is not None:
        apply_compare(rows, opts.previous)
        result["compared_to"] = str(compare)

    render(result, console)
    result["files"] = write_outputs(result, [Path(p) for p in paths], out, json_path, device_name, console)
    check_rows(rows)
    return result


def check_rows(rows: list[dict]) -> None:
    """Exit status after the table and files are written: 2 when nothing ran, 3 when a row failed."""
    if all(r["status"] != "ok" for r in rows):
        raise EdgetlError("no artifact could be measured (see the status column)")
    failed = [r["name"] for r in rows if r["status"].startswith(("error", "failed"))]
    if failed:
        raise ArtifactCheckError(f"{len(failed)} of {len(rows)} rows failed ({', '.join(dict.fromkeys(failed))}); "
                                 "the table and files above hold every row")
