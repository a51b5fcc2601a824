"""`edgetl search`'s option checks (one line naming the flag, before any work), the latency estimate's fit
to its published reference, and the Pareto set."""

from __future__ import annotations

import pytest

import factory
from edgetl.core.errors import EdgetlError
from edgetl.search.config import JOURNAL_FILE, SearchConfig, validate
from edgetl.search.estimate import estimate_latency_ms
from edgetl.search.report import pareto


def _cfg(data, out, **kw):
    return SearchConfig(**{"data": str(data), "out": str(out), "weights": "random", "max_latency_ms": 5.0, **kw})


@pytest.mark.parametrize("kw, msg", [
    ({"max_latency_ms": ...}, "--max-latency-ms: missing"),
    ({"max_latency_ms": -1.0}, "--max-latency-ms -1.0: must be a number > 0"),
    ({"max_size_mb": 0.0}, "--max-size-mb 0.0: must be a number > 0"),
    ({"trials": 0}, "--trials 0: must be an integer >= 1"),
    ({"search_workers": 0}, "--workers 0: must be an integer >= 1"),
    ({"formats": "tflite-fp32,tflite-int4"}, "--formats tflite-fp32,tflite-int4: accepted values are tflite-fp32"),
    ({"heads": "big"}, "--heads big: accepted values are linear, dense128"),
    ({"alphas": "0.4"}, "--alpha 0.4: accepted values are"),
    ({"sizes": "40"}, "--image-size 40: with --weights random use a multiple of 32"),
    ({"epochs": 0}, "--epochs 0: must be an integer >= 1"),
])
def test_bad_options_get_one_line(tmp_path, kw, msg):
    data = factory.image_folder(tmp_path / "data")
    with pytest.raises(EdgetlError) as e:
        validate(_cfg(data, tmp_path / "out", **kw))
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_out_folder_rules(tmp_path):
    data = factory.image_folder(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(EdgetlError, match="holds no search to resume"):
        validate(_cfg(data, out, resume=True))
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EdgetlError, match="is not an edgetl search"):
        validate(_cfg(data, out, overwrite=True))
    (out / "notes.txt").unlink()
    (out / JOURNAL_FILE).write_text("")
    with pytest.raises(EdgetlError, match="pass --resume to continue it or --overwrite"):
        validate(_cfg(data, out))
    p = validate(_cfg(data, out, resume=True))
    assert p.alphas == [0.35, 0.5] and p.sizes == [96, 128, 160, 192, 224] and (out / JOURNAL_FILE).is_file()
    assert validate(_cfg(data, out, overwrite=True)).split.classes
    with pytest.raises(EdgetlError, match="DATA"):
        validate(_cfg(data, data / "train"))


def test_estimate_reproduces_its_reference():
    # devices/rpi4.toml: MobileNetV2 1.0 @ 224 int8 (~300 M MACs), TFLite, 4 threads, 22 ms at 1.95 GHz
    # (Cortex-A72: 8 MAC/cycle per core)
    assert estimate_latency_ms(300_000_000, "litert", "int8", 4, 1.95 * 8) == pytest.approx(22.0, rel=0.05)
    one, four = (estimate_latency_ms(60_000_000, "litert", "fp32", n, 12.0) for n in (1, 4))
    assert four < one and estimate_latency_ms(60_000_000, "onnxruntime", "fp32", 1, 12.0) > one


def test_pareto_keeps_the_non_dominated():
    rows = [{"number": i, "val_accuracy": a, "latency_ms": lat, "size_mb": s}
            for i, (a, lat, s) in enumerate([(0.9, 1.0, 1.0), (0.8, 2.0, 2.0), (0.95, 3.0, 1.0), (0.9, 1.0, 0.5)])]
    assert [r["number"] for r in pareto(rows)] == [2, 3]
