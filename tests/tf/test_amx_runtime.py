"""The runtimes with AMX denied to the process: the TFLite (and ONNX) int8 runners still run and answer
exactly as without the filter; `--amx auto` decides from the file's layers; bench rows say which."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest

from edgetl.bench.worker import run_worker
from edgetl.core import amx, runtime

RUN = """
import json, sys
import numpy as np
from edgetl.core import amx, runtime
if sys.argv[2] == "deny":
    amx.deny()
x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
out = {}
for name in ("model-int8.tflite", "model-int8.onnx"):
    m = runtime.load(sys.argv[1] + "/" + name)
    out[name] = m.predict_pixels(x).tolist()
print(json.dumps({"out": out, "refused": amx.arch_prctl(amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA)[1] == 1}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="arch_prctl and AMX exist on x86_64 Linux only")
def test_runtimes_run_identically_with_amx_denied(tiny_exported):
    res = {}
    for mode in ("allow", "deny"):
        r = subprocess.run([sys.executable, "-c", RUN, str(tiny_exported), mode], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["deny"]["refused"] and not res["allow"]["refused"]
    assert res["deny"]["out"] == res["allow"]["out"]  # bit for bit


def test_auto_decides_from_the_int8_layers(tiny_exported):
    """MobileNetV2 alpha 0.35 fills AMX tiles poorly: auto denies AMX for its int8 TFLite file and leaves
    float files (whose kernels do not use AMX) alone."""
    fill = amx.tile_fill(tiny_exported / "model-int8.tflite")
    assert 0.3 < fill < amx.AUTO_MIN_FILL
    deny, why = amx.decide("auto", tiny_exported / "model-int8.tflite")
    assert deny and why.startswith("auto: its int8 layers fill")
    assert amx.tile_fill(tiny_exported / "model-fp32.tflite") is None
    assert amx.decide("auto", tiny_exported / "model-fp32.tflite") == (False, "auto: not an int8 TFLite file")


def test_bench_row_says_what_amx_did(tiny_exported):
    res = run_worker({"path": str(tiny_exported / "model-int8.tflite"), "threads": 1, "min_time": 0.01,
                      "min_runs": 2, "amx": "auto"})
    assert res["status"] == "ok"
    if amx.present():
        assert (res["amx"], res["amx_reason"].split(":")[0]) == ("off", "auto")
    else:
        assert res["amx"] == "unavailable"
    assert "amx" not in run_worker({"path": str(tiny_exported / "model-int8.tflite"), "threads": 1,
                                    "min_time": 0.01, "min_runs": 2})
    assert runtime.load(tiny_exported / "model-int8.tflite").amx == {}
