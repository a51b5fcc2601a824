"""AMX control without AMX hardware: the seccomp filter makes the permission request fail with EPERM (and
nothing else), in a fresh process, and the per-model decision of `--amx auto|on|off`."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from edgetl.core import amx
from edgetl.core.errors import EdgetlError

linux_x86 = pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                               reason="arch_prctl and AMX exist on x86_64 Linux only")


def in_fresh_process(code: str) -> str:
    """Run `code` in a new interpreter (a seccomp filter cannot be removed from a process)."""
    r = subprocess.run([sys.executable, "-c", "from edgetl.core import amx\n" + code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@linux_x86
def test_filter_makes_the_amx_request_fail_with_eperm():
    """Without the filter the request succeeds (AMX CPU) or fails for want of AMX (EOPNOTSUPP / EINVAL);
    with it, EPERM. Asking which features are permitted still works, and nothing is granted."""
    before = in_fresh_process("print(amx.arch_prctl(amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA))")
    ret, err = eval(before)
    assert err != 1  # not EPERM: whatever the CPU, the plain process is not refused for permission
    after = in_fresh_process("amx.deny()\n"
                             "print(amx.arch_prctl(amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA),\n"
                             "      amx.arch_prctl(amx.ARCH_GET_XCOMP_PERM, amx.ctypes.c_uint64(0))[0],\n"
                             "      amx.granted())")
    assert after == "(-1, 1) 0 False"


@linux_x86
def test_filter_covers_threads_started_before_it():
    """The runtimes' thread pools may already run when the filter goes in: it is synchronised to them."""
    out = in_fresh_process("import threading, queue\n"
                           "go, res = threading.Event(), queue.Queue()\n"
                           "def ask():\n"
                           "    go.wait()\n"
                           "    res.put(amx.arch_prctl(amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA))\n"
                           "t = threading.Thread(target=ask)\n"
                           "t.start()\n"
                           "amx.deny()\n"
                           "go.set()\n"
                           "t.join()\n"
                           "print(res.get())")
    assert out == "(-1, 1)"


def test_modes_and_decisions(tmp_path):
    with pytest.raises(EdgetlError, match=r"^--amx 'sometimes': valid values: auto, on, off$"):
        amx.check_mode("sometimes")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07")
    assert amx.decide("off", other) == (True, "--amx off")
    assert amx.decide("on", other) == (False, "--amx on")
    assert amx.decide("auto", other) == (False, "auto: not an int8 TFLite file")
    assert amx.tile_fill(other) is None


def test_cpu_without_amx_is_left_alone():
    if amx.present():
        pytest.skip("this CPU has AMX")
    assert amx.control("off") == {"amx": "unavailable", "amx_reason": "this CPU has no AMX"}
    assert not amx.present({"arch": "x86_64", "amx_int8": False})
    assert not amx.present({"arch": "aarch64"})
