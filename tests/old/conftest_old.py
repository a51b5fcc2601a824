"""Shared fixtures: tiny generated image folders (unit) and the ../shared assets (integration)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# cached TFLite bases (edgetl.backbone) go to a folder of this test session, never to ~/.cache;
# removed when the session ends (subprocesses started by tests inherit the variable and finish first)
if "EDGETL_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["EDGETL_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgetl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EDGETL_CACHE_DIR"], True)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", REPO.parent / "shared"))
HYMENOPTERA = SHARED / "data" / "hymenoptera"
WEIGHTS_DIR = SHARED / "weights"


def shared_or_skip():
    if not HYMENOPTERA.is_dir() or not WEIGHTS_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared assets at {SHARED}")
        pytest.skip(f"shared assets not found at {SHARED}")


@pytest.fixture
def shared_data() -> Path:
    shared_or_skip()
    return HYMENOPTERA


@pytest.fixture
def shared_weights(monkeypatch) -> Path:
    shared_or_skip()
    monkeypatch.setenv("EDGETL_WEIGHTS_DIR", str(WEIGHTS_DIR))
    return WEIGHTS_DIR


def make_image_folder(root: Path, classes=("cats", "dogs"), per_class=6, size=48, split=True, seed=0) -> Path:
    """A small, learnable image folder: each class has its own dominant colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    parts = [("train", per_class), ("val", max(2, per_class // 2))] if split else [("", per_class)]
    for part, n in parts:
        for ci, c in enumerate(classes):
            d = root / part / c if part else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(colours[ci % len(colours)], dtype=np.float64)
                arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"img_{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


# ---- A (issue 2): one real `edgetl train` run on hymenoptera, shared by B's and C's integration tests ----
HYMENOPTERA_RUN_OPTIONS = {"alpha": 0.35, "image_size": 224, "seed": 0}


@pytest.fixture(scope="session")
def hymenoptera_run(tmp_path_factory) -> Path:
    """RUN dir trained once per session: shared hymenoptera, alpha 0.35, 224 px, shared ImageNet weights
    (found through EDGETL_WEIGHTS_DIR). Treat it as read-only (copy it before writing into it)."""
    shared_or_skip()
    from rich.console import Console

    from edgetl.train import TrainConfig, train

    out = tmp_path_factory.mktemp("hymenoptera") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_WEIGHTS_DIR", str(WEIGHTS_DIR))
        train(TrainConfig(data=str(HYMENOPTERA), out=str(out), **HYMENOPTERA_RUN_OPTIONS),
              console=Console(stderr=True, quiet=True))
    return out


# ---- C (issue 4): tiny artifacts for runtime/bench/predict unit tests ----------------------------------
@pytest.fixture(scope="session")
def c_run(tmp_path_factory) -> Path:
    """Run-like dir: tiny random MobileNetV2 (alpha 0.35, 32 px) + model-fp32/int8.tflite, model-fp32.onnx
    with edgetl metadata, val split = generated images. Built in a subprocess (tests/_tiny_artifacts.py) so
    this pytest process never imports TensorFlow. Read-only: copy before writing into it."""
    import json
    import subprocess
    import sys

    from edgetl.data import labelled_folder

    root = tmp_path_factory.mktemp("c_run")
    imgs = make_image_folder(root / "data", per_class=6, size=40)
    _, items, _ = labelled_folder(imgs / "val", ["cats", "dogs"])
    out = root / "run"
    r = subprocess.run([sys.executable, str(REPO / "tests" / "_tiny_artifacts.py"), str(out), "32",
                        json.dumps({"items": [[p, y] for p, y in items]})], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


# ---- B (issue 3): the hymenoptera run exported to every registry format (int8 included) -------------
EXPORTED_RUN_CALIB = 64


@pytest.fixture(scope="session")
def exported_run(hymenoptera_run, tmp_path_factory) -> Path:
    """Copy of `hymenoptera_run` after `edgetl export RUN --int8 --calib 64`: model-*.tflite/onnx with
    edgetl metadata + manifest.json with parity results. Read-only: copy it before writing into it."""
    import shutil

    from rich.console import Console

    from edgetl.export import export_run

    out = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(hymenoptera_run, out)
    export_run(out, int8=True, calib=EXPORTED_RUN_CALIB, console=Console(stderr=True, quiet=True))
    return out
