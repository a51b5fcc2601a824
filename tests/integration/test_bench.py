"""`edgetl bench` on the real pipeline (hymenoptera, ImageNet weights, 224 px, export --int8): bench's
accuracy per artifact equals the accuracy export measured in its parity check."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import factory
from edgetl.bench.stage import bench
from edgetl.cli import app
from edgetl.core.formats import FORMATS

runner = CliRunner()


def test_bench_on_exported_hymenoptera_run_matches_export_parity(exported_run, tmp_path):
    """Same decoding, preprocessing and quantization in bench and export: equal accuracy up to one image."""
    manifest = json.loads((exported_run / "manifest.json").read_text())["artifacts"]
    fmts = [f for f in ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8")
            if (manifest.get(f) or {}).get("status") == "ok"]
    assert "tflite-int8" in fmts
    res = bench([exported_run], min_time=0.05, min_runs=3, formats=",".join(fmts), out=tmp_path,
                console=factory.quiet_console())
    assert [r["format"] for r in res["rows"]] == [f for f in FORMATS if f in fmts]
    for row in res["rows"]:
        assert row["status"] == "ok", row
        parity = manifest[row["format"]]["parity"]
        assert row["eval_images"] == parity["n"]
        assert abs(row["accuracy"] - parity["accuracy"]) <= 1.0 / parity["n"] + 1e-6, (row["format"], parity)
        assert row["macs"] > 50e6  # MobileNetV2 alpha 0.35 @ 224 is ~58 M MACs
    r = runner.invoke(app, ["predict", str(exported_run / "model-int8.tflite"),
                            str(Path(res["rows"][0]["file"]).parent / "edgetl.json"), "--json"])
    assert r.exit_code == 2 and "no readable images" in r.stderr  # a JSON file is not an image: skipped, counted
