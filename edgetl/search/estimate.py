"""Latency ESTIMATES for a device profile (never presented as measurements: every value made here is
recorded with source "estimated").

    latency_ms = FIXED_MS[runtime] + MACs / (peak MAC/s per core x EFFICIENCY[precision] x RUNTIME_SPEED[runtime]
                                             x thread_speedup(threads))

- peak MAC/s per core: the profile's [peak] (FMA pipes x SIMD lanes x clock; half its FP32 FLOP/s).
- EFFICIENCY[precision]: the share of that peak MobileNetV2's kernels reach. int8 is fitted on the one
  published TFLite MobileNetV2 int8 figure in devices/rpi4.toml (1.0 @ 224, ~300 M MACs, 22 ms, 4 threads,
  Pi 4 at 1.95 GHz): 300e6 / (22e-3 - FIXED) / 3.4 / (1.95 x 8 GMAC/s) = 0.26. fp32 assumes int8 is 1.5x
  faster than fp32 on Arm NEON (devices/README.md's range), so 0.17; fp16 files run fp32 kernels (their
  weights are dequantized at load), so they take fp32's.
- RUNTIME_SPEED: onnxruntime relative to TFLite (XNNPACK), from this repository's measured table
  (README: onnx-fp32 3.67 ms vs tflite-fp32 2.73 ms -> 0.74; onnx-int8 6.34 vs tflite-int8 4.06 -> 0.64).
- thread_speedup(n) = 1 + 0.8 (n - 1): each extra core adds 80 % of one.
- FIXED_MS: per-call overhead (input copy, interpreter dispatch), 0.3 ms.

The model ignores memory bandwidth and cache effects; measure the chosen file on the device with
`edgetl bench OUT/best --device NAME`.
"""

from __future__ import annotations

FIXED_MS = 0.3
EFFICIENCY = {"fp32": 0.17, "fp16": 0.17, "int8": 0.26}
RUNTIME_SPEED = {("litert", "fp32"): 1.0, ("litert", "fp16"): 1.0, ("litert", "int8"): 1.0,
                 ("onnxruntime", "fp32"): 0.74, ("onnxruntime", "int8"): 0.64}
EXTRA_CORE = 0.8


def thread_speedup(threads: int) -> float:
    return 1.0 + EXTRA_CORE * (max(1, threads) - 1)


def estimate_latency_ms(macs: int, runtime: str, precision: str, threads: int, peak_gmacs_per_core: float) -> float:
    """The model above for one file (MACs per image) on a device with that peak."""
    rate = (peak_gmacs_per_core * 1e9 * EFFICIENCY[precision] * RUNTIME_SPEED[(runtime, precision)]
            * thread_speedup(threads))
    return FIXED_MS + macs / rate * 1e3
