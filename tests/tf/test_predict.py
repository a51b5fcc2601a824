"""`edgetl predict`: top-k labels from one exported file (every format), folders walked recursively, the
same numbers as the runtime on the same decoding, unreadable images skipped and named, bad input one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.core import runtime
from edgetl.core.formats import EXPORT_FORMATS, FORMATS
from edgetl.core.images import decoding_of, load_image
from edgetl.core.rundir import Run

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tiny_exported, tmp_path_factory):
    """Nested: 4 good images (one in a sub-sub-folder, one with a space, one grey PNG), 2 unreadable ones
    and a non-image, which is not even listed."""
    items = Run(tiny_exported).split_items("val")
    d = tmp_path_factory.mktemp("predict") / "imgs"
    (d / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(items[0][0], d / "a.jpg")
    shutil.copy(items[1][0], d / "sub" / "b c.jpg")
    shutil.copy(items[-1][0], d / "sub" / "deeper" / "c.jpg")
    Image.open(items[-2][0]).convert("L").save(d / "sub" / "grey.png")
    (d / "sub" / "broken.jpg").write_text("not really a jpeg")
    (d / "sub" / "deeper" / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_json_is_one_ranked_document(tiny_exported, folder, name):
    model_file = tiny_exported / FORMATS[name].filename
    r = runner.invoke(app, ["predict", str(model_file), str(folder), "--json", "--top-k", "5"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["format"] == name and doc["classes"] == ["cats", "dogs"] and doc["image_size"] == 32
    assert doc["images"] == 4 and doc["top_k"] == 2  # top-k clamped to the number of classes
    assert sorted(s["file"] for s in doc["skipped"]) == [str(folder / "sub" / "broken.jpg"),
                                                        str(folder / "sub" / "deeper" / "empty.png")]
    assert all(s["reason"] for s in doc["skipped"])
    assert "2 unreadable image(s) skipped" in r.stderr
    model = runtime.load(model_file)
    for p in doc["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True)
        got = {t["label"]: t["probability"] for t in p["top"]}
        want = model.predict_pixels(load_image(p["path"], model.image_size, decoding_of(model.spec))[None])[0]
        np.testing.assert_allclose([got["cats"], got["dogs"]], want, atol=1e-6)
    assert sorted(p["path"][len(str(folder)) + 1:] for p in doc["predictions"]) == \
        ["a.jpg", "sub/b c.jpg", "sub/deeper/c.jpg", "sub/grey.png"]


def test_table_for_named_files(tiny_exported, folder):
    r = runner.invoke(app, ["predict", str(tiny_exported / "model-int8.tflite"), str(folder / "a.jpg"),
                            str(folder / "sub" / "b c.jpg"), "-k", "1", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert "2 image(s) classified" in r.stdout and "skipped" not in r.stdout
    assert "#1" in r.stdout and "#2" not in r.stdout
    assert ("cats" in r.stdout) or ("dogs" in r.stdout)


def test_table_names_the_skipped_images(tiny_exported, folder):
    r = runner.invoke(app, ["predict", str(tiny_exported / "model-fp32.onnx"), str(folder)],
                      env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert "4 image(s) classified, 2 unreadable image(s) skipped" in r.stdout
    assert f"skipped {folder / 'sub' / 'broken.jpg'}:" in r.stdout


@pytest.mark.parametrize("case,needle", [
    ("not-a-model", "fake.tflite"), ("missing-image", "nope.jpg"), ("top-k-0", "--top-k"),
    ("threads-0", "--threads"), ("keras", "model.keras"), ("only-bad", "no readable images"),
    ("empty-folder", "no image files found"),
])
def test_bad_input_is_one_line(tiny_exported, folder, tmp_path, case, needle):
    good, img = str(tiny_exported / "model-fp32.tflite"), str(folder / "a.jpg")
    fake = tmp_path / "fake.tflite"
    fake.write_text("hello")
    (tmp_path / "empty").mkdir()
    args = {"not-a-model": [str(fake), img], "missing-image": [good, str(tmp_path / "nope.jpg")],
            "top-k-0": [good, img, "--top-k", "0"], "threads-0": [good, img, "--threads", "0"],
            "keras": [str(tiny_exported / "model.keras"), img],
            "only-bad": [good, str(folder / "sub" / "broken.jpg")],
            "empty-folder": [good, str(tmp_path / "empty")]}[case]
    r = runner.invoke(app, ["predict", *args])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], r.output
