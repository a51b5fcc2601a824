"""`edgetl bench` on a real exported tiny run (every registry format): one fresh worker per artifact x
threads, rows with status, JSON/CSV/PNG, --compare, device profiles, failed rows (exit 3) and one-line
errors for bad input. Timing is kept tiny (--min-time 0.05)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import factory
from edgetl.bench import devices
from edgetl.bench.stage import bench
from edgetl.cli import app
from edgetl.core import cpu, runtime
from edgetl.core.formats import FORMATS
from edgetl.core.rundir import Run

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "5"]
QUICK = {"min_time": 0.05, "min_runs": 3, "console": factory.quiet_console()}


@pytest.fixture(scope="module")
def bench_result(tiny_exported, tmp_path_factory):
    """One real bench of the run dir (Keras row included: TensorFlow is installed in the full env)."""
    out = tmp_path_factory.mktemp("bench_out")
    r = runner.invoke(app, ["bench", str(tiny_exported), *FAST, "--threads", "1", "--out", str(out),
                            "--json", str(out / "copy.json")])
    assert r.exit_code == 0, r.output
    return r, out, json.loads((out / "bench.json").read_text())


def n_val(run: Path) -> int:
    return len(Run(run).split_items("val"))


def test_bench_rows_measure_every_artifact(bench_result, tiny_exported):
    r, out, res = bench_result
    manifest = Run(tiny_exported).manifest["artifacts"]
    assert [row["name"] for row in res["rows"]] == list(FORMATS)  # registry order, every format present
    for row in res["rows"]:
        assert row["status"] == "ok", row
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert lat["runs"] >= 5
        assert row["cpu_ms"]["p50"] > 0
        assert row["throughput_ips"] == pytest.approx(1e3 / lat["mean"])
        assert 0.0 <= row["accuracy"] <= 1.0 and row["eval_images"] == n_val(tiny_exported)
        assert set(row["per_class_accuracy"]) == set(factory.CLASSES)
        assert row["bytes"] == Path(row["file"]).stat().st_size
        assert row["format"] == "keras" or row["bytes"] == manifest[row["format"]]["bytes"]
        assert row["peak_rss_mb"] > 10
        assert row["macs"] > 0 and row["gmacs_per_s"] == pytest.approx(row["macs"] / lat["p50"] * 1e3 / 1e9)
        # % of the FP32 peak is given for float kernels only
        assert ("pct_of_fp32_peak" in row) == (FORMATS[row["format"]].precision != "int8")
        assert row["load_ms"] > 0 and row["threads"] == 1
    rows = {row["name"]: row for row in res["rows"]}
    assert rows["keras"]["macs"] == rows["tflite-fp32"]["macs"]  # borrowed from the run's artifacts
    # the TF graph + runtime needs far more memory than a TFLite interpreter: rows really are separate processes
    assert rows["keras"]["peak_rss_mb"] > 2 * rows["tflite-fp32"]["peak_rss_mb"]
    assert res["summary"]["threads=1"]["speedup_best_vs_keras"] > 1
    assert res["host"]["cores"] >= 1 and res["host"]["versions"]["onnxruntime"]
    assert res["host"]["cpu_features"] == cpu.features()
    assert res["peak"]["fp32_gflops_per_core"] > 0
    assert res["eval_sets"][0]["images"] == n_val(tiny_exported)


def test_int8_onnx_row_names_its_session(bench_result, tiny_exported):
    r, _, res = bench_result
    rows = {row["name"]: row for row in res["rows"]}
    _, meta = runtime.identify(tiny_exported / FORMATS["onnx-int8"].filename)
    assert rows["onnx-int8"]["session"] == runtime.session_mode(meta) != "default"
    assert rows["onnx-fp32"]["session"] == "default"
    out = " ".join(r.stdout.split())  # console lines wrap at 80 columns
    assert f"onnx-int8: onnxruntime session {rows['onnx-int8']['session']}" in out
    assert "onnx-fp32: onnxruntime session" not in out
    assert "keras x1 called as" in out  # Keras' eager and model.predict timings, one line each


def test_bench_outputs_table_json_csv_png(bench_result):
    r, out, res = bench_result
    assert "p50 ms" in r.stdout and "tflite-int8" in r.stdout and "next: edgetl predict" in r.stdout
    assert json.loads((out / "copy.json").read_text())["rows"] == res["rows"]
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert [x["name"] for x in rows] == [x["name"] for x in res["rows"]]
    for x, row in zip(rows, res["rows"]):
        assert float(x["p50_ms"]) == pytest.approx(row["latency_ms"]["p50"])
        assert float(x["accuracy"]) == pytest.approx(row["accuracy"]) and int(x["bytes"]) == row["bytes"]
    assert (out / "bench.png").stat().st_size > 1000  # matplotlib is in the full env


def test_default_names_after_device_and_date_and_threads_sweep(tiny_exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_exported, run)
    res = bench([run], formats="tflite-int8", threads="2,1", **QUICK)
    files = sorted((run / "bench").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith(res["device"] + "-20")
    assert res["files"]["csv"].endswith(".csv") and Path(res["files"]["csv"]).parent == run / "bench"
    assert [(r["name"], r["threads"]) for r in res["rows"]] == [("tflite-int8", 2), ("tflite-int8", 1)]
    assert list(res["summary"]) == ["threads=1", "threads=2"]


def test_compare_shows_change_per_row(bench_result, tiny_exported, tmp_path):
    _, out, _ = bench_result
    res = bench([tiny_exported], formats="tflite-fp32,onnx-fp32", out=tmp_path, compare=out / "bench.json", **QUICK)
    assert res["compared_to"] == str(out / "bench.json")
    for row in res["rows"]:
        c = row["compare"]
        assert c["p50_ms_before"] > 0
        assert c["p50_change_pct"] == pytest.approx(100 * (row["latency_ms"]["p50"] / c["p50_ms_before"] - 1))
        assert c["accuracy_change"] == pytest.approx(0.0) and c["bytes_change_pct"] == pytest.approx(0.0)


def test_failing_artifact_gets_status_and_run_goes_on(tiny_exported, tmp_path):
    bad = tmp_path / "broken.tflite"
    data = (tiny_exported / "model-fp32.tflite").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    txt = tmp_path / "notes.onnx"
    txt.write_text("not a model")
    r = runner.invoke(app, ["bench", str(bad), str(tiny_exported / "model-fp32.onnx"), str(txt), *FAST,
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 3, r.output  # the table and files hold every row; the exit status says some failed
    assert "2 of 3 rows failed" in r.output.replace("\n", " ")
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    st = {Path(row["file"]).name: row["status"] for row in res["rows"]}
    assert st["model-fp32.onnx"] == "ok"
    assert st["broken.tflite"].startswith("error:") and "broken.tflite" in st["broken.tflite"]
    assert st["notes.onnx"].startswith("error:") and "neither a TFLite" in st["notes.onnx"]
    # bare file next to its run: accuracy still comes from that run's val split
    assert [row for row in res["rows"] if row["status"] == "ok"][0]["eval_images"] == n_val(tiny_exported)


def test_format_that_failed_at_export_is_named_and_the_others_are_benched(tiny_exported, tmp_path):
    """`make demo` on a CPU where one format fails its export check still benches the others, and the
    table names the failed format with export's reason."""
    run = tmp_path / "run"
    shutil.copytree(tiny_exported, run)
    reason = "onnx-int8: accuracy 80.0% vs Keras 90.0% (drop 10.0 points > --max-drop 2)"
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["artifacts"]["onnx-int8"] = {"file": "model-int8.onnx", "status": "failed", "reason": reason}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "model-int8.onnx").unlink()  # export leaves no file for a format that failed
    r = runner.invoke(app, ["bench", str(run), *FAST, "--format", "tflite-int8,onnx-int8", "--out", str(tmp_path / "o")])
    assert r.exit_code == 3, r.output
    rows = {row["format"]: row for row in json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]}
    assert set(rows) == {"tflite-int8", "onnx-int8"}
    assert rows["onnx-int8"]["status"] == f"failed at export: {reason}"
    assert rows["tflite-int8"]["status"] == "ok"
    assert "failed at export" in r.output and "1 of 2 rows failed (onnx-int8)" in r.output.replace("\n", " ")


def test_data_folder_with_unreadable_image_is_counted(tiny_exported, tmp_path):
    d = factory.image_folder(tmp_path / "d", per_class=3, split=False, size=36)
    (d / "dogs" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = bench([tiny_exported / "model-int8.tflite"], data_dir=d, out=tmp_path / "o", **QUICK)
    assert res["eval_sets"][0]["images"] == 6 and res["eval_sets"][0]["source"] == f"--data {d}"
    assert [Path(s["file"]).name for s in res["eval_sets"][0]["skipped"]] == ["zz_broken.jpg"]
    assert res["rows"][0]["eval_images"] == 6


def test_device_profile_is_applied_and_recorded(tiny_exported, tmp_path):
    res = bench([tiny_exported], device="rpi4", threads="1", out=tmp_path, **QUICK)
    assert res["profile"]["name"] == "rpi4"
    assert [r["format"] for r in res["rows"]] == [f for f in FORMATS if f in res["profile"]["formats"]]
    assert "keras" not in [r["format"] for r in res["rows"]]  # the Pi profile's formats: no Keras
    assert res["settings"]["formats"] == res["profile"]["formats"]
    assert all(ref["source"].startswith("http") for ref in res["profile"]["reference"])


def test_rows_measured_here_are_this_machines(tiny_exported, tmp_path):
    """--device rpi4 on this machine: the rows, their % of peak and the file name are this machine's, and
    the profile's thread counts above its cores are not run."""
    run = tmp_path / "run"
    shutil.copytree(tiny_exported, run)
    res = bench([run], device="rpi4", formats="tflite-fp32", **QUICK)
    host = res["host"]
    assert res["device"] == devices.host_slug(host) and res["peak"] == host["peak"]
    assert res["measured_on"] == {"place": "here", "cpu": host["cpu"], "cores": os.cpu_count(),
                                  "arch": host["arch"], "remote": None}
    expected = [n for n in (1, 4) if n <= os.cpu_count()]
    assert [r["threads"] for r in res["rows"]] == expected
    assert all(r["measured_on"] == "here" for r in res["rows"])
    assert Path(res["files"]["json"]).name.startswith(devices.host_slug(host) + "-20")
    for r in res["rows"]:
        pk = host["peak"].get("fp32_gmacs_per_core")
        if pk:
            assert r["pct_of_fp32_peak"] == pytest.approx(100 * r["gmacs_per_s"] / (pk * r["threads"]))


@pytest.mark.parametrize("case", ["class-mismatch", "no-artifacts"])
def test_bench_bad_run_input_one_line_error(tiny_run, tiny_exported, tmp_path, case):
    if case == "class-mismatch":
        d = factory.image_folder(tmp_path / "d", classes=("ants", "bees"), per_class=2, split=False, size=32)
        args, expect = [str(tiny_exported), "--data", str(d)], ["['ants', 'bees']", "['cats', 'dogs']"]
    else:  # a trained run that was never exported
        args, expect = [str(tiny_run)], ["edgetl export", str(tiny_run)]
    r = runner.invoke(app, ["bench", *args, *FAST, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    assert all(e in lines[0] for e in expect), lines[0]
    assert not (tmp_path / "o").exists()  # checked before any measuring: nothing written


def test_run_copied_without_its_images_benches_without_accuracy(tiny_exported, tmp_path):
    run = tmp_path / "on-the-pi"
    run.mkdir()
    meta = json.loads((tiny_exported / "edgetl.json").read_text())
    meta["split"]["val"] = [["/laptop/only/" + Path(p).name, y] for p, y in meta["split"]["val"]]
    (run / "edgetl.json").write_text(json.dumps(meta))
    shutil.copy(tiny_exported / "model-int8.tflite", run)
    res = bench([run], out=tmp_path / "o", **QUICK)
    row = res["rows"][0]
    assert row["status"] == "ok" and row.get("accuracy") is None and row["latency_ms"]["p50"] > 0
    assert "pass --data DIR" in row["accuracy_note"] and res["eval_sets"] == []


def test_bench_png_reads_at_a_glance(tmp_path):
    """Plain millisecond ticks with a 1-2-5 tick at each end, one colour per format, one marker per place,
    and labels that overlap neither each other, nor a point, nor the title (many rows at one accuracy)."""
    from matplotlib.text import Text

    from edgetl.bench.report import bench_figure

    rows = [{"name": f, "format": f, "threads": n, "status": "ok", "latency_ms": {"p50": ms / n ** 0.7},
             "accuracy": acc, "measured_on": place}
            for n in (1, 2) for f, ms, acc, place in
            (("keras", 13.2, .902, "here"), ("tflite-fp32", 2.73, .902, "here"), ("tflite-fp16", 2.85, .902, "here"),
             ("tflite-int8", 4.06, .908, "remote"), ("onnx-fp32", 3.67, .902, "here"), ("onnx-int8", 6.34, .902, "here"))]
    fig = bench_figure({"device": "x86_64-test", "rows": rows, "measured_on": {"cpu": "Test CPU", "cores": 2}})
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["1", "2", "5", "10", "20"]
    colours = {r["format"]: c.get_facecolor()[0].tolist() for r, c in zip(rows, ax.collections)}
    assert len({tuple(c) for c in colours.values()}) == 6
    markers = {h.get_label(): h.get_marker() for h in ax.get_legend().legend_handles if hasattr(h, "get_marker")}
    assert markers["this machine"] != markers["remote"]
    labels = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert len(labels) == len(rows)
    title = ax.title.get_window_extent(renderer)
    for i, a in enumerate(labels):
        assert not a.overlaps(title)
        assert not any(a.overlaps(b) for b in labels[i + 1:]), [t.get_text() for t in ax.texts]
