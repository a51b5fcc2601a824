"""Run directories: atomic file writes (a failure leaves nothing half-written), files that follow the umask,
and a run read back from disk is validated with one-line errors. Folders: tests/unit/test_outdir.py."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import factory
from edgetl.core import rundir
from edgetl.core.errors import EdgetlError


def test_write_json_is_atomic_and_knows_numpy(tmp_path):
    p = tmp_path / "m.json"
    rundir.write_json(p, {"a": np.float32(0.5), "b": np.arange(3), "p": tmp_path})
    assert json.loads(p.read_text()) == {"a": 0.5, "b": [0, 1, 2], "p": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        rundir.write_json(p, {"a": object()})
    assert json.loads(p.read_text())["a"] == 0.5  # the old file survives a failed write
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json"]  # no temp file left


def test_write_bytes_replaces_and_hashes(tmp_path):
    p = tmp_path / "model.tflite"
    rundir.write_bytes(p, b"old")
    rundir.write_bytes(p, b"new bytes")
    assert p.read_bytes() == b"new bytes" and [f.name for f in tmp_path.iterdir()] == ["model.tflite"]
    assert rundir.sha256_file(p, chunk=4) == hashlib.sha256(b"new bytes").hexdigest()


def _run(tmp_path, meta) -> rundir.Run:
    (tmp_path / "edgetl.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return rundir.Run(tmp_path)


def test_run_reads_its_metadata(tmp_path):
    spec = {"scale": 1 / 127.5, "offset": -1.0, "size": [32, 32]}
    run = _run(tmp_path, {"classes": ["a", "b"], "image_size": 32, "preprocessing": spec,
                          "split": {"val": [["x.jpg", "1"]]}})
    assert run.classes == ["a", "b"] and run.image_size == 32 and run.preprocessing == spec
    assert run.split_items("val") == [("x.jpg", 1)] and run.split_items("train") == []
    assert run.manifest == {"artifacts": {}}
    with pytest.raises(EdgetlError, match="no trained model .model.keras.; re-run `edgetl train`"):
        run.require_model()


@pytest.mark.parametrize("qat, info, source, model, graph", [
    (False, None, "ptq", "model.keras", False),
    (True, {"int8_source": "ptq", "qat_model": "model-qat.keras"}, "ptq", "model.keras", False),
    (True, {"int8_source": "qat", "qat_model": "model-qat.keras"}, "qat", "model-qat.keras", False),
    (True, {"epochs": 5}, "qat", "model.keras", True),  # model.keras is a fake-quant graph
])
def test_run_names_the_model_its_int8_files_come_from(tmp_path, qat, info, source, model, graph):
    run = _run(tmp_path, {"classes": ["a"], "image_size": 32, "preprocessing": factory.RUN_META["preprocessing"], "qat": qat, "qat_info": info})
    assert run.int8_source() == (source, tmp_path / model) and run.qat_graph is graph


@pytest.mark.parametrize("meta,needle", [
    (None, "no such folder"),
    ("", "not an edgetl run (no edgetl.json)"),
    ("{not json", "edgetl.json is corrupt"),
    ({"classes": ["a"], "image_size": 32}, "lacks 'preprocessing'"),
])
def test_bad_runs_are_one_line_errors(tmp_path, meta, needle):
    path = tmp_path / "run"
    if meta is not None:
        path.mkdir()
        if meta != "":
            (path / "edgetl.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(EdgetlError) as e:
        rundir.Run(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_versions_name_installed_packages_only():
    v = rundir.versions("numpy", "no-such-package-xyz")
    assert v["numpy"] == np.__version__ and v["edgetl"] == rundir.edgetl_version()
    assert "no-such-package-xyz" not in v and v["python"].count(".") == 2
