"""The light install (no TensorFlow, no tf-keras, no onnx) runs `edgetl predict` and `edgetl bench` on files
exported in the full environment, with the same numbers. Its python comes from $EDGETL_LIGHT_PYTHON
(`make test` sets it to .venv-light/bin/python)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import in_ci
from edgetl.core import runtime
from edgetl.core.formats import EXPORT_FORMATS, FORMATS
from edgetl.core.images import decoding_of, load_image
from edgetl.core.rundir import Run

HEAVY = ("tensorflow", "tf_keras", "keras", "onnx", "tf2onnx")
# runs the CLI in the light python, then says which heavy modules it imported
CHECKED_CLI = (
    "import sys\n"
    "from edgetl.cli import app\n"
    "code = 0\n"
    "try:\n"
    "    app(sys.argv[1:], prog_name='edgetl')\n"
    "except SystemExit as e:\n"
    "    code = e.code or 0\n"
    f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
    "sys.stderr.write(f'\\nLOADED={loaded}\\n')\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="module")
def light_python() -> str:
    light = os.environ.get("EDGETL_LIGHT_PYTHON")
    if not light:
        if in_ci():
            pytest.fail("CI is set but EDGETL_LIGHT_PYTHON is not: run the tests through `make test`")
        pytest.skip("EDGETL_LIGHT_PYTHON not set (run through `make test`, which builds .venv-light)")
    if not Path(light).exists():
        pytest.fail(f"EDGETL_LIGHT_PYTHON={light} does not exist")
    return light


def _light(light_python, *args):
    return subprocess.run([light_python, "-c", CHECKED_CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_light_env_has_no_tensorflow(light_python):
    r = subprocess.run([light_python, "-c", "import importlib.util as u; "
                        f"print([m for m in {HEAVY!r} if u.find_spec(m)])"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_predict_in_the_light_env_matches_the_full_env(light_python, tiny_exported):
    images = Path(Run(tiny_exported).split_items("val")[0][0]).parents[1]  # the val folder
    for name in EXPORT_FORMATS:
        path = tiny_exported / FORMATS[name].filename
        r = _light(light_python, "predict", path, images, "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "LOADED=[]" in r.stderr
        doc = json.loads(r.stdout)
        assert doc["images"] == len(Run(tiny_exported).split_items("val")) and not doc["skipped"]
        m = runtime.load(path)  # the full environment's runtime on the same file
        for p in doc["predictions"]:
            got = {t["label"]: t["probability"] for t in p["top"]}
            want = m.predict_pixels(load_image(p["path"], m.image_size, decoding_of(m.spec))[None])[0]
            np.testing.assert_allclose([got[c] for c in m.classes], want, atol=1e-5, err_msg=name)


def test_bench_in_the_light_env(light_python, tiny_exported, tmp_path):
    r = _light(light_python, "bench", tiny_exported, "--min-time", "0.05", "--min-runs", "3", "--out",
               tmp_path / "o")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "LOADED=[]" in r.stderr
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    status = {row["format"]: row["status"] for row in res["rows"]}
    assert status.pop("keras") == "skipped: TensorFlow not installed"
    assert status == {name: "ok" for name in EXPORT_FORMATS}
    assert "tensorflow" not in res["host"]["versions"]
    assert "p50 ms" in r.stdout
    if "matplotlib is not installed" in r.stdout:  # optional in the light install: no PNG, and it says so
        assert not (tmp_path / "o" / "bench.png").exists()
