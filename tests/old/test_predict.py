"""`edgetl predict` (issue 4): top-k from one exported file, folders walked recursively, bad input handled."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl import runtime
from edgetl.cli import app
from edgetl.data import load_image

runner = CliRunner()


def _images(c_run, tmp_path):
    """A nested folder: 3 good images (one in a sub-sub-folder, one with a space), 1 unreadable, 1 non-image."""
    from edgetl.rundir import Run

    items = Run(c_run).split_items("val")
    d = tmp_path / "imgs"
    (d / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(items[0][0], d / "a.jpg")
    shutil.copy(items[1][0], d / "sub" / "b c.jpg")
    shutil.copy(items[-1][0], d / "sub" / "deeper" / "c.png")
    (d / "sub" / "broken.jpg").write_text("not really a jpeg")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


@pytest.mark.parametrize("fmt_file", ["model-fp32.tflite", "model-int8.tflite", "model-fp32.onnx"])
def test_predict_json_one_document_ranked(c_run, tmp_path, fmt_file):
    d = _images(c_run, tmp_path)
    r = runner.invoke(app, ["predict", str(c_run / fmt_file), str(d), "--json", "--top-k", "5"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["images"] == 3 and len(doc["predictions"]) == 3
    assert [s["file"] for s in doc["skipped"]] == [str(d / "sub" / "broken.jpg")]
    assert doc["top_k"] == 2  # clamped to the number of classes
    model = runtime.load(c_run / fmt_file)
    for p in doc["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True)
        assert {t["label"] for t in p["top"]} == {"cats", "dogs"}
        # same decoding + preprocessing as training/bench: the runtime on data.load_image pixels
        want = model.predict_pixels(load_image(p["path"], model.image_size)[None])[0]
        got = {t["label"]: t["probability"] for t in p["top"]}
        np.testing.assert_allclose([got["cats"], got["dogs"]], want, atol=1e-6)
    assert any(p["path"].endswith("deeper/c.png") for p in doc["predictions"])
    assert "1 unreadable image(s) skipped" in r.stderr


def test_predict_table_and_single_files(c_run, tmp_path):
    d = _images(c_run, tmp_path)
    r = runner.invoke(app, ["predict", str(c_run / "model-fp32.tflite"), str(d / "a.jpg"), str(d / "sub" / "b c.jpg"),
                            "-k", "1"])
    assert r.exit_code == 0, r.output
    assert "2 image(s) classified" in r.stdout
    assert ("cats" in r.stdout) or ("dogs" in r.stdout)


@pytest.mark.parametrize("case", ["not-a-model", "missing-image", "top-k-0", "threads-0", "keras", "only-bad"])
def test_predict_bad_input_one_line_error(c_run, tmp_path, case):
    good = str(c_run / "model-fp32.tflite")
    img = str(_images(c_run, tmp_path) / "a.jpg")
    if case == "not-a-model":
        bad = tmp_path / "fake.tflite"
        bad.write_text("hello")
        args = [str(bad), img]
    elif case == "missing-image":
        args = [good, str(tmp_path / "nope.jpg")]
    elif case == "top-k-0":
        args = [good, img, "--top-k", "0"]
    elif case == "threads-0":
        args = [good, img, "--threads", "0"]
    elif case == "keras":
        args = [str(c_run / "model.keras"), img]
    else:
        args = [good, str(tmp_path / "imgs" / "sub" / "broken.jpg")]
    r = runner.invoke(app, ["predict", *args])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    flag_or_file = {"not-a-model": "fake.tflite", "missing-image": "nope.jpg", "top-k-0": "--top-k",
                    "threads-0": "--threads", "keras": "model.keras", "only-bad": "no readable images"}[case]
    assert flag_or_file in lines[0]
