"""Whether this process lets the int8 kernels use AMX (Intel's tile unit), decided per model.

XNNPACK (LiteRT's CPU kernels) and onnxruntime pick their AMX int8 GEMM kernels whenever the process may
use AMX. Linux grants that on request: the runtime calls arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) as it
initialises. AMX multiplies 16 x 64-byte tiles; MobileNetV2's narrow layers (8-112 channels at alpha 0.35)
leave most of each tile as padding, and on a Xeon with AMX its int8 TFLite file ran 1.56x slower with AMX
than with its VNNI kernels (bit-identical outputs). `deny()` makes that request fail with EPERM through a
seccomp filter, so the runtimes fall back to VNNI; it must run before the runtime initialises, and cannot
be undone for the process (bench runs one process per row; predict one per call).

The filter is built here with ctypes (prctl / seccomp): no kept library installs a one-syscall seccomp
rule without a C extension, and this must run on a Pi install too (where it does nothing).

Modes: "on" leaves the process as it is, "off" denies AMX, "auto" (`decide`) denies it for TFLite int8
files whose GEMM layers fill AMX tiles poorly (`tile_fill` below AUTO_MIN_FILL). Statuses: "on" (AMX
present and allowed), "off" (present, denied), "unavailable" (this CPU or kernel has no AMX).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
from pathlib import Path

from . import cpu
from .errors import EdgetlError

MODES = ("auto", "on", "off")
ARCH_REQ_XCOMP_PERM = 0x1023  # arch_prctl option: ask for an XSAVE feature (AMX tile data: 18)
ARCH_GET_XCOMP_PERM = 0x1022  # arch_prctl option: the features this process may use (bit mask)
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86_64
SYS_SECCOMP = 317  # x86_64
AUDIT_ARCH_X86_64 = 0xC000003E
# AMX int8 tiles: 64 bytes of K per row, 16 output columns per tile; a GEMM layer's fill is the share of
# the padded tiles its K x N uses. auto allows AMX when the MAC-weighted fill reaches this: MobileNetV2
# alpha 0.35 (0.54) measured 1.56x slower with AMX on one Xeon; no AMX machine here to measure others
AUTO_MIN_FILL = 0.8
_denied = False


def check_mode(mode, flag: str = "--amx") -> str:
    if mode not in MODES:
        raise EdgetlError(f"{flag} {mode!r}: valid values: {', '.join(MODES)}")
    return mode


def present(feat: dict | None = None) -> bool:
    """The CPU has AMX int8 (and this is Linux on x86_64, where the permission exists)."""
    feat = cpu.features() if feat is None else feat
    return bool(feat.get("amx_int8")) and platform.system() == "Linux" and feat.get("arch") == "x86_64"


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def arch_prctl(option: int, arg: int | ctypes.c_uint64 = 0) -> tuple[int, int]:
    """(return value, errno) of the raw arch_prctl syscall (x86_64 Linux)."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(option),
                       ctypes.byref(arg) if isinstance(arg, ctypes.c_uint64) else ctypes.c_ulong(arg))
    return int(ret), ctypes.get_errno()


def granted() -> bool:
    """AMX tile data is already permitted in this process (a runtime asked before any filter)."""
    mask = ctypes.c_uint64(0)
    ret, _ = arch_prctl(ARCH_GET_XCOMP_PERM, mask)
    return ret == 0 and bool(mask.value >> XFEATURE_XTILEDATA & 1)


def _filter() -> bytes:
    """Classic BPF: arch_prctl(ARCH_REQ_XCOMP_PERM, ...) on x86_64 -> EPERM; every other call allowed.
    seccomp_data: nr (u32 at 0), arch (u32 at 4), args[0] (u64 at 16; the option is an int: low half)."""
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    prog = [(ld, 0, 0, 4), (jeq, 0, 5, AUDIT_ARCH_X86_64),
            (ld, 0, 0, 0), (jeq, 0, 3, SYS_ARCH_PRCTL),
            (ld, 0, 0, 16), (jeq, 0, 1, ARCH_REQ_XCOMP_PERM),
            (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def deny() -> None:
    """Install the seccomp filter in this process (every thread, and every process it starts): from now
    on asking for AMX fails with EPERM. Raises EdgetlError where the kernel refuses."""
    global _denied
    if _denied:
        return
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise EdgetlError("--amx off: only x86_64 Linux has AMX to turn off")
    code = _filter()
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = _libc()
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: lets an unprivileged process add a filter
        raise EdgetlError(f"--amx off: prctl(PR_SET_NO_NEW_PRIVS) failed ({os.strerror(ctypes.get_errno())})")
    libc.syscall.restype = ctypes.c_long
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC): threads already running get it too
    if libc.syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_long(1), ctypes.c_long(1), ctypes.byref(prog)) != 0:
        raise EdgetlError(f"--amx off: the kernel refused the seccomp filter ({os.strerror(ctypes.get_errno())})")
    _denied = True


def tile_fill(path: str | Path) -> float | None:
    """MAC-weighted share of AMX int8 tiles the file's GEMM layers fill (conv and fully-connected layers
    with int8 weights; depthwise convolutions are not GEMMs): per layer (K / K padded to 64) x (N / N
    padded to 16), K = kernel taps x input channels, N = output channels. None for a file that is not an
    int8 TFLite file (read with the schema bindings LiteRT ships, without starting its interpreter)."""
    from .flatbuffer import is_tflite, schema

    buf = Path(path).read_bytes()
    if not is_tflite(buf):
        return None
    s = schema()
    model = s.Model.GetRootAs(buf, 0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    gemm = {s.BuiltinOperator.CONV_2D, s.BuiltinOperator.FULLY_CONNECTED}
    macs = used = 0.0
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            if codes[op.OpcodeIndex()] not in gemm or op.InputsLength() < 2 or op.OutputsLength() < 1:
                continue
            w, y = sg.Tensors(op.Inputs(1)), sg.Tensors(op.Outputs(0))
            if w.Type() != s.TensorType.INT8:
                continue
            shape = w.ShapeAsNumpy()  # conv (O, kh, kw, I), fully connected (O, I)
            n, k = int(shape[0]), int(shape[1:].prod())
            m = int(y.ShapeAsNumpy()[:-1].prod()) if y.ShapeLength() else 1
            fill = (k / (-(-k // 64) * 64)) * (n / (-(-n // 16) * 16))
            macs += m * n * k
            used += m * n * k * fill
    return used / macs if macs else None


def decide(mode: str, path: str | Path | None) -> tuple[bool, str]:
    """(deny AMX?, why) for `mode` and the model file about to run."""
    if mode == "off":
        return True, "--amx off"
    if mode == "on":
        return False, "--amx on"
    fill = tile_fill(path) if path is not None else None
    if fill is None:
        return False, "auto: not an int8 TFLite file"
    if fill < AUTO_MIN_FILL:
        return True, f"auto: its int8 layers fill {100 * fill:.0f}% of AMX tiles (< {100 * AUTO_MIN_FILL:.0f}%)"
    return False, f"auto: its int8 layers fill {100 * fill:.0f}% of AMX tiles"


def control(mode: str, path: str | Path | None = None) -> dict:
    """Apply `mode` to this process before a runtime loads `path`: {"amx": status, "amx_reason": why}."""
    check_mode(mode)
    if not present():
        return {"amx": "unavailable", "amx_reason": "this CPU has no AMX"}
    off, why = decide(mode, path)
    if off:
        if granted():  # a runtime already asked: the permission cannot be taken back
            return {"amx": "on", "amx_reason": "already granted to this process before the filter"}
        deny()
        return {"amx": "off", "amx_reason": why}
    return {"amx": "on", "amx_reason": why}
