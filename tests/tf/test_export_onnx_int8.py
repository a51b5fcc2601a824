"""Portable int8 ONNX files: export stores u8 weights, so no GEMM-lowered layer can saturate on a CPU
without VNNI. The property is checked from the file alone, and a file that breaks it is refused. (How
predict and bench open foreign s8 files is the runtime's: tests/tf/test_runtime.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from factory import signed_onnx

from edgetl.core.errors import ArtifactCheckError
from edgetl.core.formats import FORMATS


def run_file(blob: bytes, name: str, x: np.ndarray) -> np.ndarray:
    """Probabilities of a file in memory, through its registry row's runner."""
    fmt = FORMATS[name]
    return fmt.runner_class()(blob, fmt).outputs(x)


def test_onnx_int8_cannot_saturate_checked_from_the_file(tiny_exported):
    """The property holds in the file itself, so a VNNI or Arm machine catches a regression as well as
    an AVX2 one: no GEMM-lowered layer holds s8 weights outside [-64, 63]. The check is not vacuous:
    the same file in the usual s8 form is flagged, and turning it back to u8 gives bit-identical outputs."""
    import onnx

    from edgetl.export.onnx_int8 import saturation_risks, unsigned_weights

    path = tiny_exported / "model-int8.onnx"
    proto, signed = onnx.load(path), onnx.load(path)
    assert saturation_risks(proto) == []
    n = signed_onnx(signed)
    assert n >= 50  # every conv of MobileNetV2
    assert len(saturation_risks(signed)) >= 30
    assert unsigned_weights(signed) == n and saturation_risks(signed) == []
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(run_file(proto.SerializeToString(), "onnx-int8", x),
                          run_file(signed.SerializeToString(), "onnx-int8", x))
    sessions = json.loads((tiny_exported / "manifest.json").read_text())["artifacts"]["onnx-int8"]["parity"]["sessions"]
    assert sessions["saturation_risks"] == 0
    assert sessions["tolerance"] == FORMATS["onnx-int8"].options["session_tolerance"]


def test_onnx_int8_with_saturating_weights_is_refused(tiny_exported):
    """An int8 ONNX file whose s8 weights could saturate fails its check from the file alone, before
    anything runs, whatever this CPU is."""
    import onnx

    from edgetl.export.parity import check_onnx_sessions

    proto = onnx.load(tiny_exported / "model-int8.onnx")
    assert signed_onnx(proto) >= 50
    nothing = np.zeros((0, 32, 32, 3), np.float32)
    with pytest.raises(ArtifactCheckError, match="GEMM layer.* s8 weights outside .* can saturate"):
        check_onnx_sessions(FORMATS["onnx-int8"], proto.SerializeToString(), nothing[:, 0, 0, :2], nothing)
