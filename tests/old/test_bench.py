"""`edgetl bench` (issue 4): one fresh worker per artifact x threads, rows with status, JSON/CSV/PNG, compare,
device profiles, and one-line errors for bad input. Timing is kept tiny (--min-time 0.05)."""

from __future__ import annotations

import csv
import json
import shutil
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_image_folder
from edgetl import bench as B
from edgetl.cli import app
from edgetl.errors import EdgetlError

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "5"]


@pytest.fixture(scope="module")
def bench_result(c_run, tmp_path_factory):
    """One real bench of the run dir (Keras row included: TensorFlow is installed in the full env)."""
    out = tmp_path_factory.mktemp("bench_out")
    r = runner.invoke(app, ["bench", str(c_run), *FAST, "--threads", "1", "--out", str(out),
                            "--json", str(out / "copy.json")])
    assert r.exit_code == 0, r.output
    return r, out, json.loads((out / "bench.json").read_text())


def test_bench_rows_measure_every_artifact(bench_result, c_run):
    r, out, res = bench_result
    names = [row["name"] for row in res["rows"]]
    assert names == ["keras", "tflite-fp32", "tflite-int8", "onnx-fp32"]  # registry order, files present
    for row in res["rows"]:
        assert row["status"] == "ok", row
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert lat["runs"] >= 5
        assert row["cpu_ms"]["p50"] > 0
        assert row["throughput_ips"] == pytest.approx(1e3 / lat["mean"])
        assert 0.0 <= row["accuracy"] <= 1.0 and row["eval_images"] == 6
        assert set(row["per_class_accuracy"]) == {"cats", "dogs"}
        assert row["bytes"] == Path(row["file"]).stat().st_size
        assert row["peak_rss_mb"] > 10
        assert row["macs"] > 0 and row["gmacs_per_s"] == pytest.approx(row["macs"] / lat["p50"] * 1e3 / 1e9)
        assert row["load_ms"] > 0 and row["threads"] == 1
    rows = {row["name"]: row for row in res["rows"]}
    # the TF graph + runtime needs far more memory than a TFLite interpreter: rows really are separate processes
    assert rows["keras"]["peak_rss_mb"] > 2 * rows["tflite-fp32"]["peak_rss_mb"]
    assert res["summary"]["threads=1"]["speedup_best_vs_keras"] > 1
    assert res["host"]["cores"] >= 1 and res["host"]["versions"]["onnxruntime"]
    assert res["peak"]["fp32_gflops_per_core"] > 0
    assert res["eval_sets"][0]["images"] == 6


def test_bench_outputs_table_json_csv_png(bench_result):
    r, out, res = bench_result
    assert "p50 ms" in r.stdout and "tflite-int8" in r.stdout and "next: edgetl predict" in r.stdout
    assert json.loads((out / "copy.json").read_text())["rows"] == res["rows"]
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert [x["name"] for x in rows] == [x["name"] for x in res["rows"]]
    assert float(rows[1]["p50_ms"]) == pytest.approx(res["rows"][1]["latency_ms"]["p50"])
    assert (out / "bench.png").stat().st_size > 1000  # matplotlib is in the full env


def test_default_names_after_device_and_date(c_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(c_run, run)
    res = B.bench([run], min_time=0.05, min_runs=3, formats="tflite-int8")
    files = sorted((run / "bench").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith(res["device"] + "-20")
    assert res["files"]["csv"].endswith(".csv")


def test_compare_shows_change_per_row(bench_result, c_run, tmp_path):
    _, out, _ = bench_result
    res = B.bench([c_run], min_time=0.05, min_runs=3, formats="tflite-fp32,onnx-fp32", out=tmp_path,
                  compare=out / "bench.json")
    for row in res["rows"]:
        c = row["compare"]
        assert c["p50_ms_before"] > 0
        assert c["p50_change_pct"] == pytest.approx(100 * (row["latency_ms"]["p50"] / c["p50_ms_before"] - 1))
        assert c["accuracy_change"] == pytest.approx(0.0)


def test_failing_artifact_gets_status_and_run_goes_on(c_run, tmp_path):
    bad = tmp_path / "broken.tflite"
    data = (c_run / "model-fp32.tflite").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    txt = tmp_path / "notes.onnx"
    txt.write_text("not a model")
    r = runner.invoke(app, ["bench", str(bad), str(c_run / "model-fp32.onnx"), str(txt), *FAST,
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 3, r.output  # the table and files hold every row; the exit status says some failed
    assert "2 of 3 rows failed" in r.output.replace("\n", " ")
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    st = {Path(row["file"]).name: row["status"] for row in res["rows"]}
    assert st["model-fp32.onnx"] == "ok"
    assert st["broken.tflite"].startswith("error:") and "broken.tflite" in st["broken.tflite"]
    assert st["notes.onnx"].startswith("error:") and "neither a TFLite" in st["notes.onnx"]
    # bare file next to its run: accuracy still comes from that run's val split
    assert [row for row in res["rows"] if row["status"] == "ok"][0]["eval_images"] == 6


def test_format_that_failed_at_export_is_named_and_the_others_are_benched(c_run, tmp_path):
    """`make demo` on a CPU where one format fails its export check still benches the others, and the
    table names the failed format with export's reason."""
    run = tmp_path / "run"
    shutil.copytree(c_run, run)
    reason = "onnx-int8: accuracy 80.0% vs Keras 90.0% (drop 10.0 points > --max-drop 2)"
    (run / "manifest.json").write_text(json.dumps({"artifacts": {
        "onnx-int8": {"file": "model-int8.onnx", "status": "failed", "reason": reason}}}))
    r = runner.invoke(app, ["bench", str(run), *FAST, "--out", str(tmp_path / "o")])
    assert r.exit_code == 3, r.output
    rows = {row["format"]: row for row in json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]}
    assert rows["onnx-int8"]["status"] == f"failed at export: {reason}"
    assert all(rows[f]["status"] == "ok" for f in ("tflite-fp32", "tflite-int8", "onnx-fp32"))
    assert "failed at export" in r.output


def test_data_folder_with_unreadable_image_is_counted(c_run, tmp_path):
    d = make_image_folder(tmp_path / "d", classes=("cats", "dogs"), per_class=3, split=False, size=36)
    (d / "dogs" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = B.bench([c_run / "model-int8.tflite"], data_dir=d, min_time=0.05, min_runs=3, out=tmp_path / "o")
    assert res["eval_sets"][0]["images"] == 6
    assert [Path(s["file"]).name for s in res["eval_sets"][0]["skipped"]] == ["zz_broken.jpg"]
    assert res["rows"][0]["eval_images"] == 6


def test_device_profile_is_applied_and_recorded(c_run, tmp_path):
    res = B.bench([c_run], device="rpi4", threads="1", min_time=0.05, min_runs=3, out=tmp_path)
    assert res["device"] == "rpi4" and res["profile"]["name"] == "rpi4"
    assert "keras" not in [r["format"] for r in res["rows"]]  # the Pi profile's formats: no Keras
    assert res["peak"]["fp32_gflops_per_core"] == 24.0
    assert all(ref["source"].startswith("http") for ref in res["profile"]["reference"])


def test_all_profiles_load():
    names = B.available_devices()
    assert {"rpi4", "rpi5", "laptop-x86"} <= set(names)
    for n in names:
        p = B.load_device(n)
        assert p["threads"] and p["formats"] and p["recommended_alpha"] and p["recommended_image_size"]
        assert p["reference"] and all(r.get("source") and r.get("model") for r in p["reference"])


def test_cpu_peak_from_cpuinfo():
    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "flags": "fma avx2 avx512f", "cpu MHz": "2600.0"}
    assert B.cpu_peak(zen4)["fp32_gflops_per_core"] == pytest.approx(32 * 2.6, abs=0.1)
    intel = {"vendor_id": "GenuineIntel", "cpu family": "6", "flags": "fma avx2 avx512f", "cpu MHz": "3000"}
    assert B.cpu_peak(intel)["fp32_gflops_per_core"] == pytest.approx(64 * 3.0, abs=0.1)
    avx2 = {"flags": "fma avx2", "cpu MHz": "2000"}
    assert B.cpu_peak(avx2)["fp32_gflops_per_core"] == pytest.approx(32 * 2.0)


@pytest.mark.parametrize("case", ["threads-0", "threads-neg", "threads-word", "class-mismatch", "no-run",
                                  "unknown-device", "bad-compare", "min-time", "unknown-format", "no-artifacts"])
def test_bench_bad_input_one_line_error(c_run, tmp_path, case):
    args = [str(c_run), *FAST]
    if case == "threads-0":
        args += ["--threads", "0"]
    elif case == "threads-neg":
        args += ["--threads", "1,-2"]
    elif case == "threads-word":
        args += ["--threads", "two"]
    elif case == "class-mismatch":
        d = make_image_folder(tmp_path / "d", classes=("ants", "bees"), per_class=2, split=False, size=32)
        args += ["--data", str(d)]
    elif case == "no-run":
        args = [str(tmp_path / "nothing-here")]
    elif case == "unknown-device":
        args += ["--device", "toaster"]
    elif case == "bad-compare":
        (tmp_path / "prev.json").write_text("[1, 2]")
        args += ["--compare", str(tmp_path / "prev.json")]
    elif case == "min-time":
        args = [str(c_run), "--min-time", "0"]
    elif case == "unknown-format":
        args += ["--format", "tflite-int4"]
    else:
        empty = tmp_path / "run"
        empty.mkdir()
        shutil.copy(c_run / "edgetl.json", empty / "edgetl.json")
        args = [str(empty)]
    r = runner.invoke(app, ["bench", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    expect = {"threads-0": "--threads", "threads-neg": "--threads", "threads-word": "--threads",
              "class-mismatch": "['ants', 'bees']", "no-run": "nothing-here", "unknown-device": "rpi4",
              "bad-compare": "prev.json", "min-time": "--min-time", "unknown-format": "tflite-int8",
              "no-artifacts": "edgetl export"}[case]
    assert expect in lines[0]
    if case == "class-mismatch":
        assert "['cats', 'dogs']" in lines[0]
    assert not (tmp_path / "o").exists()  # checked before any work: nothing written


def test_parse_threads():
    assert B.parse_threads("1, 2,4,2") == [1, 2, 4]
    assert B.parse_threads(None) is None
    with pytest.raises(EdgetlError):
        B.parse_threads("0")


def test_run_copied_without_its_images_benches_without_accuracy(c_run, tmp_path):
    run = tmp_path / "on-the-pi"
    run.mkdir()
    meta = json.loads((c_run / "edgetl.json").read_text())
    meta["split"]["val"] = [["/laptop/only/" + Path(p).name, y] for p, y in meta["split"]["val"]]
    (run / "edgetl.json").write_text(json.dumps(meta))
    shutil.copy(c_run / "model-int8.tflite", run)
    res = B.bench([run], min_time=0.05, min_runs=3, out=tmp_path / "o")
    row = res["rows"][0]
    assert row["status"] == "ok" and row.get("accuracy") is None
    assert "pass --data DIR" in row["accuracy_note"]


@pytest.mark.integration
def test_bench_on_exported_hymenoptera_run_matches_export_parity(exported_run, tmp_path):
    """Real pipeline (A's train + B's export --int8 at 224 px): bench's accuracy per artifact equals the
    accuracy export measured in its parity check (same decoding, preprocessing and quantization)."""
    manifest = json.loads((exported_run / "manifest.json").read_text())["artifacts"]
    fmts = [f for f in ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8")
            if (manifest.get(f) or {}).get("status") == "ok"]
    assert "tflite-int8" in fmts
    res = B.bench([exported_run], min_time=0.05, min_runs=3, formats=",".join(fmts), out=tmp_path)
    assert [r["format"] for r in res["rows"]] == [f for f in B.FORMATS if f in fmts]
    for row in res["rows"]:
        assert row["status"] == "ok", row
        parity = manifest[row["format"]]["parity"]
        assert row["eval_images"] == parity["n"]
        assert abs(row["accuracy"] - parity["accuracy"]) <= 1.0 / parity["n"] + 1e-6, (row["format"], parity)
        assert row["macs"] > 50e6  # MobileNetV2 alpha 0.35 @ 224 is ~58 M MACs
    r = runner.invoke(app, ["predict", str(exported_run / "model-int8.tflite"),
                            str(Path(res["rows"][0]["file"]).parent / "edgetl.json"), "--json"])
    assert r.exit_code == 2 and "no readable images" in r.stderr  # a JSON file is not an image: skipped, counted


def test_wheel_ships_the_device_profiles(tmp_path):
    """`pip install edgetl` on a Pi (no repo checkout) still knows --device rpi4: the wheel carries
    devices/ as edgetl.devices, and the bench finds the profiles there."""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "whl"), str(repo)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("edgetl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    repo_profiles = sorted(p.name for p in (repo / "devices").glob("*.toml"))
    assert sorted(p.name for p in (tmp_path / "site" / "edgetl" / "devices").glob("*.toml")) == repo_profiles
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from edgetl import bench; "
            "print(bench.available_devices()); print(bench.load_device('rpi4')['file'])")
    env = {k: v for k, v in os.environ.items() if k != "EDGETL_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    names, rpi4 = out.stdout.strip().splitlines()
    assert names == str([Path(n).stem for n in repo_profiles])
    assert Path(rpi4).resolve() == (tmp_path / "site" / "edgetl" / "devices" / "rpi4.toml").resolve()
