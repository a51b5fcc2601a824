"""Test tiers, by folder: unit/ (no TensorFlow; runs in the light install, `make test-unit`), tf/ (tiny
models), integration/ (../shared data and weights), emulated/ (aarch64 kernels under QEMU). `make test`
runs them all. Shared fixtures: a generated image folder, one tiny run and its exported artifacts per
session (made by edgetl's own train and export), and the ../shared assets."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import factory

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# cached TFLite bases go to a folder of this test session, never to ~/.cache; removed at exit
# (subprocesses started by tests inherit the variable and finish first)
if "EDGETL_CACHE_DIR" not in os.environ:
    import atexit

    os.environ["EDGETL_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgetl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EDGETL_CACHE_DIR"], True)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", REPO.parent / "shared"))
HYMENOPTERA = SHARED / "data" / "hymenoptera"
FLOWERS12 = SHARED / "data" / "flowers12"
WEIGHTS_DIR = SHARED / "weights"
TIERS = ("unit", "tf", "integration", "emulated")
collect_ignore = ["old"]


def pytest_collection_modifyitems(items):
    for item in items:
        tier = next((p for p in Path(item.fspath).relative_to(REPO / "tests").parts if p in TIERS), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def shared_or_skip():
    if not HYMENOPTERA.is_dir() or not WEIGHTS_DIR.is_dir():
        if in_ci():
            pytest.fail(f"CI needs the shared assets at {SHARED}")
        pytest.skip(f"shared assets not found at {SHARED}")


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return factory.image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One `edgetl train --weights random --alpha 0.35 --image-size 32` run per session. Read-only: copy it
    before writing into it."""
    root = tmp_path_factory.mktemp("tiny")
    data = factory.image_folder(root / "data", per_class=8, size=40)
    return factory.train_run(data, root / "run").path


@pytest.fixture(scope="session")
def tiny_exported(tiny_run, tmp_path_factory) -> Path:
    """A copy of `tiny_run` after `edgetl export --int8`: every registry format, manifest.json. Read-only.
    The accuracy control's targets are off here, so the int8 files are the plain ones in the first ONNX
    encoding whatever a random tiny model's noise estimates say (tests/tf/test_export_steps.py tests the
    control itself)."""
    from edgetl.export import control

    out = tmp_path_factory.mktemp("tiny_exported") / "run"
    shutil.copytree(tiny_run, out)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("TARGET_AGREEMENT", "VAL_AGREEMENT", "NOISE_CUT"):
            mp.setattr(control, name, 0.0)
        factory.export_run(out)
    return out


@pytest.fixture
def shared_weights(monkeypatch) -> Path:
    shared_or_skip()
    monkeypatch.setenv("EDGETL_WEIGHTS_DIR", str(WEIGHTS_DIR))
    return WEIGHTS_DIR


@pytest.fixture(scope="session")
def hymenoptera_run(tmp_path_factory) -> Path:
    """`edgetl train ../shared/data/hymenoptera --alpha 0.35` (224 px, ImageNet weights), once per session.
    Read-only."""
    shared_or_skip()
    out = tmp_path_factory.mktemp("hymenoptera") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_WEIGHTS_DIR", str(WEIGHTS_DIR))
        factory.train_run(HYMENOPTERA, out, weights="imagenet", image_size=224, epochs=30, seed=0)
    return out


@pytest.fixture(scope="session")
def exported_run(hymenoptera_run, tmp_path_factory) -> Path:
    """A copy of `hymenoptera_run` after `edgetl export --int8 --calib 64` (the real accuracy check).
    Read-only."""
    out = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(hymenoptera_run, out)
    factory.export_run(out, calib=64, max_drop=2.0)
    return out
