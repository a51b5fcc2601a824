"""`edgetl search`'s option checks (one line naming the flag, before any work), the latency estimate's fit
to its published reference, and the Pareto set."""

from __future__ import annotations

import pytest

import factory
from edgetl.core.errors import EdgetlError
from edgetl.search.config import JOURNAL_FILE, SearchConfig, validate
from edgetl.search.estimate import estimate_latency_ms
from edgetl.search.report import pareto
from edgetl.search.stage import LATENCY_NOISE, baseline_summary, choose_best
from edgetl.search.trials import baseline


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


def test_the_study_starts_from_train_s_defaults(tmp_path):
    """train's defaults in the space, one trial per format, up to a third of the trials; the width falls back
    to the narrowest searched, the size to the largest, the views to --augment."""
    data = factory.image_folder(tmp_path / "data")
    p = validate(_cfg(data, tmp_path / "out", sizes="160,224", formats="tflite-fp32,tflite-int8,onnx-int8"))
    got = baseline(p.cfg, p)
    assert [b["format"] for b in got] == ["tflite-fp32", "tflite-int8", "onnx-int8"]
    assert {(b["alpha"], b["image_size"], b["head"], b["dropout"], b["augment"]) for b in got} == {
        (0.35, 224, "linear", 0.5, 2)}
    p = validate(_cfg(data, tmp_path / "out", sizes="96,128", heads="dense128", augment=1, trials=6,
                      alphas="0.5", formats="tflite-fp32,tflite-int8,onnx-int8"))
    assert baseline(p.cfg, p) == [{"alpha": 0.5, "image_size": 128, "head": "dense128", "dropout": 0.5, "augment": 1,
                                   "format": f} for f in ("tflite-fp32", "tflite-int8")]


def _t(n, acc, ms, mb=1.0, base=False):
    return {"number": n, "val_accuracy": acc, "latency_ms": ms, "size_mb": mb, "n_val": 100, "baseline": base,
            "feasible": True, "config": {"alpha": 0.35, "format": "tflite-int8"}}


def test_the_best_is_the_smallest_of_the_fastest_within_one_val_image_of_the_top():
    """One val image is within the luck of picking the top of many trials, and latencies within LATENCY_NOISE
    within the noise of measuring them: among the trials that close to the top and to the fastest the
    smallest file ships, then the higher val accuracy; further behind, accuracy wins."""
    assert choose_best([_t(0, 1.00, 0.9), _t(1, 0.99, 0.5), _t(2, 0.99, 0.5, 0.5), _t(3, 0.98, 0.1)])["number"] == 2
    assert choose_best([_t(0, 1.00, 0.9), _t(3, 0.98, 0.1)])["number"] == 0
    slower = 0.5 * (1 + LATENCY_NOISE / 2)
    assert choose_best([_t(1, 1.00, 0.5, 0.6), _t(2, 0.99, slower, 0.4)])["number"] == 2  # equal speed, smaller
    assert choose_best([_t(1, 1.00, 0.5, 0.6), _t(2, 0.99, 0.5 * (1 + 2 * LATENCY_NOISE), 0.4)])["number"] == 1
    assert choose_best([_t(1, 1.00, 0.5), _t(2, 0.99, 0.5)])["number"] == 1  # equal speed and size: accuracy
    assert choose_best([]) is None


def test_train_s_defaults_ship_unless_beaten_by_more_than_one_val_image():
    """Within one val image of the top the defaults ship, in their fastest (then smallest) file, even where
    another configuration is faster; beaten by more, they do not."""
    base = [_t(0, 0.99, 0.8, 1.6, base=True), _t(1, 0.99, 0.53, 0.5, base=True), _t(2, 0.99, 0.55, 0.4, base=True)]
    assert choose_best([*base, _t(5, 1.00, 0.4), _t(6, 0.99, 0.3)])["number"] == 2
    assert choose_best([*base, _t(5, 1.00, 0.4), _t(6, 0.99, 0.3), _t(7, 1.01, 0.6)])["number"] == 5
    assert choose_best([_t(0, 0.99, 0.8, 1.6, base=True), _t(5, 0.99, 0.4)])["number"] == 0


def test_the_report_names_train_s_defaults_at_their_best():
    rows = [_t(0, 0.95, 0.8, base=True), _t(1, 0.95, 0.5, 0.5, base=True), _t(2, 0.99, 0.6)]
    assert baseline_summary(rows) == {"config": {"alpha": 0.35}, "trials": [0, 1], "best_trial": 1}
    assert baseline_summary(rows[2:]) is None


def test_a_file_measured_again_keeps_its_lowest_latency(tmp_path):
    """A busy machine only adds time: the report takes the lowest of a file's measurements, and a trial kept
    out by a slow first measurement fits when the second is within budget (its other misses stay)."""
    import json

    from edgetl.search.probe import PROBES_DIR, measure_again
    from edgetl.search.stage import with_latency

    (tmp_path / PROBES_DIR).mkdir()
    rec = tmp_path / PROBES_DIR / "a0.35-224-linear-tflite-int8.json"
    rec.write_text(json.dumps({"file": str(tmp_path / "x.tflite"), "threads": 1, "latency_ms": 0.74,
                               "latency_runs_ms": [0.74]}))
    jobs = []

    def measure(job):
        jobs.append(job)
        return {"status": "ok", "latency_ms": {"p50": 0.53}}

    assert measure_again(tmp_path, "a0.35-224-linear-tflite-int8", 0.5, measure) == [0.74, 0.53]
    assert json.loads(rec.read_text())["latency_ms"] == 0.53 and jobs[0]["timing"] and jobs[0]["threads"] == 1
    row = with_latency({}, [0.74 - 0.6, -1.0, -1.0], [0.74, 0.53], 0.6)
    assert row == {"latency_runs_ms": [0.74, 0.53], "latency_ms": 0.53, "feasible": True, "misses": {}}
    row = with_latency({}, [0.14, 0.2, -1.0], [0.74, 0.53], 0.6)
    assert not row["feasible"] and row["misses"] == {"size_mb": 0.2}
    assert with_latency({}, [0.14, -1.0, -1.0], None, 0.6)["misses"] == {"latency_ms": 0.14}
