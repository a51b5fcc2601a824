"""`edgetl bench`'s options."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import REQUIRED, opt


@dataclass
class BenchConfig:
    target: list[str] = opt(REQUIRED, "Run directory or artifact files (.tflite, .onnx, model.keras)", argument=True)
    data: str | None = opt(None, "Labelled folder DIR/<class>/ (default: the run's val split)")
    device: str | None = opt(None, "Device profile from devices/ (e.g. rpi4, rpi5, laptop-x86)")
    threads: str | None = opt(None, "Thread counts to sweep, e.g. 1,2,4 (default 1 or the profile's)")
    json_out: str | None = opt(None, "Also write the JSON results to this file", "--json")
    out: str | None = opt(None, "Folder for bench.json/.csv/.png (default RUN/bench/<device>-<date>.*)")
    compare: str | None = opt(None, "Previous bench JSON: show the change per row")
    min_time: float = opt(2.0, "Minimum timed seconds per row (after warm-up)")
    min_runs: int = opt(50, "Minimum timed runs per row")
    formats: str | None = opt(None, "Only these registry formats, comma-separated", "--format")
    emulate: bool = opt(False, "Also run each TFLite/ONNX file on the --device's aarch64 core under QEMU: accuracy "
                               "and top-1 agreement with this machine, no latency (needs `make arm-env`)", "--emulate")
    amx: str = opt("auto", "Let the int8 kernels use AMX: auto (per model: off where its layers fill AMX tiles "
                           "poorly), on, off; says which per row (needs an AMX CPU to matter)")
    no_verify: bool = opt(False, "Measure files even if their sha256 differs from the manifest or their embedded "
                                 "seal (damaged or changed since export)", "--no-verify")
    verbose: bool = opt(False, "Show the runtimes' native log lines on stderr", "--verbose")
    remote: str | None = opt(None, "Measure on this machine over ssh: user@host, host:port or ssh://user@host:port "
                                   "(your ~/.ssh/config, agent and keys apply; the files land here)", metavar="HOST")
    ssh_option: list[str] = opt([], "With --remote: an ssh option KEY=VALUE (ssh -o), repeatable", "--ssh-option",
                                metavar="KEY=VALUE")
    remote_python: str | None = opt(None, "With --remote: a python there that has numpy, onnxruntime and "
                                          "ai-edge-litert (default: a light venv made there once)", metavar="PATH")
    wheelhouse: str | None = opt(None, "With --remote: wheels for a remote without a package index (fill with "
                                       "`python -m edgetl.bench.remote wheelhouse DIR`)", metavar="DIR")
    remote_timeout: float = opt(900.0, "With --remote: seconds any one remote step or row may take")
