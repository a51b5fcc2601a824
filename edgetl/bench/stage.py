"""`edgetl bench`: latency, accuracy, size and memory of every artifact, side by side, on this CPU.

Every option is checked before any work. Then: the targets (targets.py), the evaluation images decoded
once, one fresh `python -m edgetl.bench.worker` process per artifact x thread count (measure.py), the
table and the JSON/CSV/PNG files (report.py). TensorFlow is never imported here; the Keras row's worker
imports it, when it is installed.

`--emulate` (with an aarch64 `--device` profile that names a `qemu_cpu`) runs every TFLite/ONNX file
once more with the aarch64 builds of the runtimes under user-mode QEMU (armenv.py): those rows report
accuracy and top-1 agreement with this machine's run on the same images, never latency.

`--remote HOST` runs the workers on another machine over ssh (remote.py); everything else happens here.
Every row says where it was measured (`measured_on`: here, remote or emulated), the FP32 peak is that
machine's, and the files are named after it.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.amx import check_mode as check_amx_mode
from ..core.console import native_logs_aside
from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS
from .devices import emulation_cpu, fp32_peak, host_info, host_slug, load_device, parse_threads
from .measure import emulation_info, measure_rows
from .report import apply_compare, check_outputs, load_compare, render, summarize, write_outputs
from .targets import assign_labels, collect_targets, describe, keras_macs, prepare_eval

TEMP_PREFIX = "edgetl-bench-"  # + pid: a killed bench's folder is found and removed by the next one


@dataclass
class Settings:
    """The checked options of one bench."""
    threads: list[int]
    formats: list[str] | None
    profile: dict | None
    previous: dict | None  # the --compare JSON
    emulate_cpu: str | None
    threads_from_profile: bool = False
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
    from_profile = not thread_list and bool((profile or {}).get("threads"))
    thread_list = thread_list or (profile or {}).get("threads") or [1]
    prev = load_compare(compare) if compare else None
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EdgetlError(f"--data {data_dir}: no such folder")
    return Settings(thread_list, fmt_list, profile, prev, emulation_cpu(profile) if emulate else None, from_profile,
                    amx)


def bench(paths: list[Path], data_dir: Path | None = None, device: str | None = None, threads: str | None = None,
          json_path: Path | None = None, out: Path | None = None, compare: Path | None = None,
          min_time: float = 2.0, min_runs: int = 50, formats: str | None = None, emulate: bool = False,
          console=None, verify: bool = True, verbose: bool = False, amx: str = "auto", remote: str | None = None,
          ssh_options: list[str] | None = None, remote_python: str | None = None, wheelhouse: str | None = None,
          remote_timeout: float = 900.0) -> dict:
    """The whole `edgetl bench`; verify: each file's sha256 is checked before it is measured (a file that
    fails gets an error row); verbose: the runtimes' native log lines stay on stderr; remote: the rows are
    measured on that machine over ssh (remote.py)."""
    from rich.console import Console

    console = console or Console()
    ropts = _check_remote(remote, ssh_options, remote_python, wheelhouse, remote_timeout, emulate)
    opts = check_options(data_dir, device, threads, compare, min_time, min_runs, formats, emulate, amx)
    check_outputs([Path(p) for p in paths], Path(out) if out else None, Path(json_path) if json_path else None)
    cores = os.cpu_count() or 1
    if max(opts.threads) > cores:
        console.print(f"[yellow]note:[/] --threads {max(opts.threads)} is more than this machine's {cores} cores: "
                      "those rows measure time-sharing, not parallel speed", highlight=False)
    clean_stale_temp()
    with native_logs_aside(console, verbose):
        if ropts is None:
            targets = _targets(paths, opts, formats, verify)
            return _measure(targets, paths, data_dir, opts, json_path, out, compare, min_time, min_runs, console)
        from .remote import Session, detect_profile

        with Session(ropts, console) as sess:
            sess.connect()
            detected = None if device else detect_profile(sess.probe.get("cpuinfo", ""))
            if detected:
                console.print(f"remote {ropts.target}: its /proc/cpuinfo says --device {detected}", highlight=False)
                opts = check_options(data_dir, detected, threads, compare, min_time, min_runs, formats, emulate, amx)
            targets = _targets(paths, opts, formats, verify)
            keras = [t for t in targets if t.fmt == "keras"]
            if keras and len(keras) < len(targets):
                console.print(f"{len(keras)} Keras model(s) not benched on the remote (no TensorFlow there)",
                              highlight=False)
                targets = [t for t in targets if t.fmt != "keras"]
            return _measure(targets, paths, data_dir, opts, json_path, out, compare, min_time, min_runs, console,
                            sess)


def _check_remote(remote, ssh_options, remote_python, wheelhouse, remote_timeout, emulate):
    """The --remote options, or None; the options that need --remote are refused without it."""
    if remote is None:
        given = [f for f, v in (("--ssh-option", ssh_options), ("--remote-python", remote_python),
                                ("--wheelhouse", wheelhouse)) if v]
        if given:
            raise EdgetlError(f"{given[0]} needs --remote HOST")
        return None
    if emulate:
        raise EdgetlError("--emulate runs here under QEMU and --remote on the device: use one of them")
    from .remote import check_options as check_remote

    return check_remote(remote, ssh_options, remote_python, wheelhouse, remote_timeout)


def _targets(paths, opts: Settings, formats, verify: bool) -> list:
    targets = collect_targets([Path(p) for p in paths], opts.formats)
    if not targets:
        raise EdgetlError(f"no artifacts match --format {formats}")
    for t in targets:
        describe(t, verify)
    return targets


def _thread_counts(opts: Settings, host: dict, where: str, console) -> list[int]:
    """A profile's thread counts above the measuring machine's cores are not run (counted in a note)."""
    cores = host.get("cores") or 1
    if not opts.threads_from_profile or max(opts.threads) <= cores:
        return opts.threads
    kept = [n for n in opts.threads if n <= cores] or [cores]
    dropped = [n for n in opts.threads if n > cores]
    console.print(f"[yellow]note:[/] {where} has {cores} cores: profile {opts.profile['name']!r}'s "
                  f"{'/'.join(map(str, dropped))} threads are not run (--threads overrides)", highlight=False)
    return kept


def _measure(targets, paths, data_dir, opts: Settings, json_path, out, compare, min_time, min_runs,
             console, sess=None) -> dict:
    """Rows for every target, the table, the files; exit status from the rows (check_rows). With `sess`
    (a remote.Session) the rows are measured on the remote."""
    assign_labels(targets)
    keras_macs(targets)
    profile = opts.profile
    host = host_info()
    if opts.emulate_cpu:
        console.print(f"--emulate: each TFLite/ONNX file also runs on aarch64 kernels under QEMU ({opts.emulate_cpu}): "
                      "accuracy and agreement with this machine only, no latency", highlight=False)

    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        sets = prepare_eval(targets, Path(data_dir) if data_dir else None, Path(tmp), console)
        where = host
        if sess is not None:
            from .remote import prepare as prepare_remote

            where = prepare_remote(sess, targets, sets, Path(tmp))
        other_arch = bool(profile and profile.get("arch") and profile["arch"] != where["arch"])
        if other_arch:
            console.print(f"[yellow]note:[/] profile {profile['name']!r} is for {profile['arch']}, "
                          f"{'the remote' if sess else 'this machine'} is {where['arch']}: its threads/formats are "
                          "applied, its reference numbers are not comparable")
        peak = fp32_peak(profile, where)
        threads = _thread_counts(opts, where, "the remote" if sess else "this machine", console)
        rows = measure_rows(targets, threads, sets, min_time, min_runs, peak, Path(tmp), opts.emulate_cpu,
                            console, run=sess.run_job if sess else None, cores=where.get("cores"), amx=opts.amx)
    place = "remote" if sess else "here"
    for r in rows:
        r["measured_on"] = "emulated" if r.get("emulated_cpu") else place
    # named after where the numbers were measured: a remote's profile (detected or given, of its
    # architecture), else the measuring machine's CPU
    device_name = profile["name"] if sess and profile and not other_arch else host_slug(where)

    result = {"edgetl_bench": 1, "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "device": device_name, "profile": profile, "host": where, "peak": peak,
              "measured_on": {"place": place, "cpu": where.get("cpu"), "cores": where.get("cores"),
                              "arch": where.get("arch"), "remote": where.get("remote")},
              "settings": {"threads": opts.threads, "min_time_s": min_time, "min_runs": min_runs,
                           "formats": opts.formats, "data": str(data_dir) if data_dir else None,
                           "emulate": opts.emulate_cpu, "amx": opts.amx},
              "eval_sets": [{k: v for k, v in s.items() if k not in ("pixels", "labels")} for s in sets.values()],
              "rows": rows}
    if sess is not None:
        result["remote"] = {"address": where.get("remote"), "board": where.get("board"), "python": where.get("python"),
                            "python_executable": where.get("python_executable"), "versions": where.get("versions"),
                            "copied": sess.copied}
        result["local_host"] = host
    if opts.emulate_cpu:
        result["emulation"] = emulation_info(opts.emulate_cpu)
    result["summary"] = summarize(rows)
    if opts.previous is not None:
        apply_compare(rows, opts.previous)
        result["compared_to"] = str(compare)

    render(result, console)
    result["files"] = write_outputs(result, [Path(p) for p in paths], out, json_path, device_name, console)
    if sess is not None:
        from ..core.measurements import add_measurements

        recorded = add_measurements(result)
        if recorded:
            console.print(f"p50s recorded for {device_name} in {recorded}", highlight=False)
    check_rows(rows)
    return result


def clean_stale_temp() -> list[str]:
    """Remove the temp folders of benches that were killed (SIGKILL skips their clean-up): those whose
    process no longer runs. Returns their names."""
    import shutil

    done = []
    for d in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = d.name[len(TEMP_PREFIX):].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's live process
            continue
        shutil.rmtree(d, ignore_errors=True)
        done.append(d.name)
    return done


def check_rows(rows: list[dict]) -> None:
    """Exit status after the table and files are written: 2 when nothing ran, 3 when a row failed."""
    if all(r["status"] != "ok" for r in rows):
        raise EdgetlError("no artifact could be measured (see the status column)")
    failed = [r["name"] for r in rows if r["status"].startswith(("error", "failed"))]
    if failed:
        raise ArtifactCheckError(f"{len(failed)} of {len(rows)} rows failed ({', '.join(dict.fromkeys(failed))}); "
                                 "the table and files above hold every row")
