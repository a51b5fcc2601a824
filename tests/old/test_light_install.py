"""The light install (no TensorFlow, no tf-keras) runs `edgetl predict` and `edgetl bench` on artifacts
exported in the full environment (issue 4). The light venv's python comes from $EDGETL_LIGHT_PYTHON
(`make test` sets it to .venv-light/bin/python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder

LIGHT = os.environ.get("EDGETL_LIGHT_PYTHON")
TF_FREE_CHECK = (
    "import sys\n"
    "from edgetl.cli import app\n"
    "code = 0\n"
    "try:\n"
    "    app(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "    code = e.code or 0\n"
    "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
    "sys.stderr.write(f'\\nLOADED_TF={loaded}\\n')\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="module")
def light_python() -> str:
    if not LIGHT:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but EDGETL_LIGHT_PYTHON is not set: run the tests through `make test`")
        pytest.skip("EDGETL_LIGHT_PYTHON not set (run through `make test`, which builds .venv-light)")
    if not Path(LIGHT).exists():
        pytest.fail(f"EDGETL_LIGHT_PYTHON={LIGHT} does not exist")
    return LIGHT


@pytest.fixture(scope="module")
def full_env_export(tmp_path_factory, light_python) -> Path:
    """`edgetl train --weights random` + `edgetl export` in the FULL env, as a user would on a laptop."""
    root = tmp_path_factory.mktemp("light")
    data = make_image_folder(root / "data", per_class=6, size=40)
    run = root / "run"
    edgetl = [sys.executable, "-m", "edgetl"]
    r = subprocess.run(edgetl + ["train", str(data), "--out", str(run), "--weights", "random", "--alpha", "0.35",
                                 "--image-size", "32", "--epochs", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(edgetl + ["export", str(run), "--keep-going"], capture_output=True, text=True, timeout=900)
    assert (run / "model-fp32.tflite").exists() and (run / "model-fp32.onnx").exists(), r.stderr[-2000:]
    return run


def _light(light_python, *args, timeout=600):
    return subprocess.run([light_python, "-c", TF_FREE_CHECK, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_light_env_has_no_tensorflow(light_python):
    r = subprocess.run([light_python, "-c", "import importlib.util as u; "
                        "print([m for m in ('tensorflow', 'tf_keras', 'keras') if u.find_spec(m)])"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_predict_in_light_env_matches_full_env(light_python, full_env_export):
    run = full_env_export
    imgs = Path(json.loads((run / "edgetl.json").read_text())["split"]["val"][0][0]).parents[1]
    for name in ("model-fp32.tflite", "model-fp32.onnx"):
        r = _light(light_python, "predict", str(run / name), str(imgs), "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "LOADED_TF=[]" in r.stderr
        doc = json.loads(r.stdout)
        assert doc["images"] == 6 and not doc["skipped"]
        # same numbers as the full environment's runtime on the same file
        from edgetl import runtime
        from edgetl.data import load_image

        m = runtime.load(run / name)
        for p in doc["predictions"]:
            got = {t["label"]: t["probability"] for t in p["top"]}
            want = m.predict_pixels(load_image(p["path"], m.image_size)[None])[0]
            np.testing.assert_allclose([got[c] for c in m.classes], want, atol=1e-5)


def test_bench_in_light_env(light_python, full_env_export, tmp_path):
    r = _light(light_python, "bench", str(full_env_export), "--min-time", "0.05", "--min-runs", "3",
               "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "LOADED_TF=[]" in r.stderr
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    st = {row["format"]: row["status"] for row in res["rows"]}
    assert st.pop("keras") == "skipped: TensorFlow not installed"
    assert st and all(v == "ok" for v in st.values()), st
    assert "tensorflow" not in res["host"]["versions"]
    assert "p50 ms" in r.stdout
    if "matplotlib is not installed" in r.stdout:  # optional in the light install: no PNG, said so
        assert not (tmp_path / "o" / "bench.png").exists()
