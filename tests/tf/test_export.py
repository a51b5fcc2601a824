"""`edgetl export` on the tiny run, through the command line: every registry format is written, described
by its metadata and checked; the manifest keeps what is still valid; a failed check leaves no file; a
bad run gets one line before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.core.formats import EXPORT_FORMATS, FORMATS
from edgetl.core.rundir import Run, sha256_file

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def copy_run(run: Path, tmp_path: Path, artifacts: bool = False) -> Path:
    """A writable copy of a session run (its exported files and manifest only with artifacts=True)."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=None if artifacts else shutil.ignore_patterns("*.tflite", "*.onnx",
                                                                                   "manifest.json"))
    return dst


def one_line_error(res, *needles):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), res.output  # the error comes first: before any work
    assert sum("error:" in ln for ln in lines) == 1, res.output
    for n in needles:
        assert n in res.output.replace("\n", " "), res.output


@pytest.fixture(scope="module")
def val_x(tiny_exported):
    """The run's preprocessed validation images (what export's parity check ran on)."""
    from edgetl.core.images import decode_all, decoding_of, preprocess

    run = Run(tiny_exported)
    pix, y, _, _ = decode_all(run.split_items("val"), run.image_size, decoding=decoding_of(run.preprocessing))
    return preprocess(pix, run.preprocessing), y


# ---------------------------------------------------------------------------------------------- round trip
def test_manifest_records_every_format_and_the_machine(tiny_exported):
    from edgetl.core import cpu

    m = manifest(tiny_exported)
    assert list(m["artifacts"]) == EXPORT_FORMATS  # registry order
    assert all(a["status"] == "ok" for a in m["artifacts"].values())
    assert m["run"] == str(tiny_exported.resolve())
    assert m["model_sha256"] == sha256_file(tiny_exported / "model.keras")
    assert m["checked_on"] == cpu.features() and m["skipped_val"] == [] and m["seconds"] > 0


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_round_trip_format(tiny_exported, val_x, name):
    """Each registry format: the file matches its manifest entry, its metadata reads back, and loaded as a
    user loads it (runtime.load, from the file alone) it reproduces the recorded parity numbers."""
    from edgetl.core.artifact import read_meta
    from edgetl.core.runtime import load

    fmt = FORMATS[name]
    path = tiny_exported / fmt.filename
    entry = manifest(tiny_exported)["artifacts"][name]
    assert entry["bytes"] == path.stat().st_size and entry["sha256"] == sha256_file(path)
    meta, r = read_meta(path), Run(tiny_exported)
    assert meta["format"] == name and meta["classes"] == r.classes and meta["preprocessing"] == r.preprocessing
    assert meta["input"]["shape"][1:] == [32, 32, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["output"]["shape"] == [1, len(r.classes)] and meta["output"]["kind"] == "probabilities"
    assert isinstance(meta["macs"], int) and meta["macs"] > 100_000
    assert meta["source"]["image_size"] == 32 and meta["source"]["qat"] is False
    assert entry["input_dtype"] == meta["input"]["dtype"]
    x, y = val_x
    probs = load(path).outputs(x)
    par = entry["parity"]
    assert par["n"] == len(y) == len(r.split_items("val"))
    assert par["accuracy"] == round(float((probs.argmax(1) == y).mean()), 6)
    assert np.allclose(probs.sum(1), 1, atol=0.02)
    if fmt.precision == "int8":
        assert par["max_drop"] == 100.0  # the factory's --max-drop, overriding the registry's tolerance
        assert np.isclose(par["drop_points"], 100 * (par["keras_accuracy"] - par["accuracy"]), atol=1e-3)
        if fmt.suffix == ".tflite":  # full integer I/O with its quantization parameters recorded
            q = meta["quantization"]
            assert meta["input"]["dtype"] in ("int8", "uint8")
            assert q["input"]["scale"] > 0 and q["output"]["dtype"] == meta["output"]["dtype"]
    else:
        assert meta["quantization"] is None and meta["input"]["dtype"] == "float32"
        assert par["tolerance"] == fmt.tolerance and par["agreement"] == 1.0
        assert par["drop_points"] == 0.0


def test_float_files_agree_with_each_other(tiny_exported, val_x):
    """Each float file is within its tolerance of Keras, so any two are within the sum of theirs: checked
    on the written files, independently of the exporter's own check."""
    from edgetl.core.runtime import load

    names = [n for n in EXPORT_FORMATS if FORMATS[n].precision != "int8"]
    probs = {n: load(tiny_exported / FORMATS[n].filename).outputs(val_x[0]) for n in names}
    for a in names:
        for b in names[names.index(a) + 1:]:
            assert np.abs(probs[a] - probs[b]).max() <= FORMATS[a].tolerance + FORMATS[b].tolerance, (a, b)


def test_int8_files_are_small(tiny_exported):
    m = manifest(tiny_exported)["artifacts"]
    assert m["tflite-int8"]["bytes"] < 0.5 * m["tflite-fp32"]["bytes"]
    assert m["onnx-int8"]["bytes"] < 0.5 * m["onnx-fp32"]["bytes"]


def test_artifacts_load_without_tensorflow(tiny_exported):
    """A subprocess loads every file with ai_edge_litert / onnxruntime and reads its metadata; TensorFlow
    must never be imported there."""
    code = r"""
import sys, json
import numpy as np
from ai_edge_litert.interpreter import Interpreter
import onnxruntime as ort
from edgetl.core.artifact import read_meta
out = {}
for p in sys.argv[1:]:
    meta = read_meta(p)
    x = np.zeros([1] + meta["input"]["shape"][1:], dtype=meta["input"]["dtype"])
    if p.endswith(".tflite"):
        it = Interpreter(model_path=p); it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x); it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
    else:
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
    out[p] = [meta["format"], list(y.shape)]
assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules), "tensorflow imported"
assert "tf_keras" not in sys.modules
print(json.dumps(out))
"""
    files = [str(tiny_exported / FORMATS[n].filename) for n in EXPORT_FORMATS]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    python = os.environ.get("EDGETL_LIGHT_PYTHON") or sys.executable  # `make test`: the install without TF
    r = subprocess.run([python, "-c", code, *files], capture_output=True, text=True, timeout=120,
                       env=env, cwd=str(REPO))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(v[0] for v in got.values()) == sorted(EXPORT_FORMATS)
    assert all(v[1] == [1, 2] for v in got.values())


# ---------------------------------------------------------------------------------------------- manifest
def test_format_subset_keeps_valid_entries_and_needs_no_calibration(tiny_exported, tmp_path):
    """Without its training images a run cannot export int8 (one line, before any work), but float formats
    still export; the manifest keeps other formats' entries whose files are unchanged, and only those."""
    run = copy_run(tiny_exported, tmp_path, artifacts=True)
    before = manifest(run)["artifacts"]
    with open(run / "model-fp16.tflite", "ab") as f:  # changed since its export: its entry must go
        f.write(b"\0")
    train = Run(run).split_items("train")
    for p, _ in train:
        Path(p).rename(Path(p).with_suffix(".gone"))
    try:
        one_line_error(runner.invoke(app, ["export", str(run), "--int8"]), "calibration", "--int8")
        res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32"])
    finally:
        for p, _ in train:
            Path(p).with_suffix(".gone").rename(p)
    assert res.exit_code == 0, res.output
    assert f"edgetl bench {run}" in res.output.replace("\n", "")
    after = manifest(run)["artifacts"]
    assert set(after) == set(before) - {"tflite-fp16"}
    assert all(after[n] == before[n] for n in after if n != "tflite-fp32")
    assert after["tflite-fp32"]["sha256"] == sha256_file(run / "model-fp32.tflite") != before["tflite-fp32"]["sha256"]


# ---------------------------------------------------------------------------------------------- failures
def test_parity_failure_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    """An impossible float tolerance: the check fails (exit 3), the stale file of that format is removed
    and the manifest gives the reason; with --keep-going the other formats finish."""
    run = copy_run(tiny_run, tmp_path)
    monkeypatch.setitem(FORMATS, "tflite-fp32", replace(FORMATS["tflite-fp32"], tolerance=-1.0))
    (run / "model-fp32.tflite").write_bytes(b"stale file from an earlier export")
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32,tflite-fp16", "--keep-going"])
    assert res.exit_code == 3, res.output
    out = res.output.replace("\n", " ")
    assert "Traceback" not in out and "tolerance -1" in out and "1 of 2 formats failed" in out
    assert not (run / "model-fp32.tflite").exists() and (run / "model-fp16.tflite").is_file()
    m = manifest(run)["artifacts"]
    assert m["tflite-fp32"]["status"] == "failed" and "tolerance" in m["tflite-fp32"]["reason"]
    assert m["tflite-fp16"]["status"] == "ok"
    assert not list(run.glob(".*.tmp"))


def test_run_without_model(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "model.keras").unlink()
    one_line_error(runner.invoke(app, ["export", str(run)]), "no trained model", "model.keras")


def test_corrupted_model(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 3])
    one_line_error(runner.invoke(app, ["export", str(run)]), "model.keras", "corrupt")
    assert not list(run.glob("*.tflite")) and not list(run.glob("*.onnx"))
