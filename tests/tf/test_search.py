"""`edgetl search` on tiny generated images (--weights random, alpha 0.35, 32-64 px, a few trials): the
report's shape, the best run trained and exported, and a search interrupted mid-trial that resumes
without losing or repeating a finished trial."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import factory
from edgetl.bench.worker import run_worker
from edgetl.cli import app
from edgetl.core import images
from edgetl.core.errors import EdgetlError
from edgetl.core.rundir import Run
from edgetl.search import stage, trials
from edgetl.search.config import OPTIONS_ATTR, STUDY_NAME, SearchConfig, study_options, study_storage, validate

TINY = ["--weights", "random", "--alphas", "0.35", "--epochs", "3", "--augment", "1"]


def test_search_end_to_end_tiny(tiny_data, tmp_path):
    out = tmp_path / "search"
    r = CliRunner().invoke(app, ["search", str(tiny_data), "--out", str(out), *TINY, "--sizes", "32,64",
                                 "--heads", "linear", "--trials", "3", "--formats", "tflite-fp32,tflite-fp16",
                                 "--max-latency-ms", "1000",
                                 "--max-size-mb", "50"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "search.json").read_text())
    assert rep["n_trials"] == 3 and [t["number"] for t in rep["trials"]] == [0, 1, 2]
    for t in rep["trials"]:
        assert set(t["config"]) == {"alpha", "image_size", "head", "dropout", "augment", "format"}
        assert t["config"]["image_size"] in (32, 64) and t["config"]["format"] in ("tflite-fp32", "tflite-fp16")
        assert 0 <= t["val_accuracy"] <= 1 and t["latency_ms"] > 0 and t["latency_source"] == "measured"
        assert t["size_mb"] > 0 and t["ram_mb"] > 0 and t["feasible"] and t["threads"] == 1
    assert set(rep["pareto"]) <= {0, 1, 2} and rep["pareto"]
    best = rep["best"]
    near = [t for t in rep["trials"] if t["val_accuracy"] >= max(x["val_accuracy"] for x in rep["trials"])
            - 1 / t["n_val"] - 1e-9]
    assert best["feasible"] and best["trial"] in [t["number"] for t in near]
    candidates = [t for t in near if t["baseline"]] or near  # train's defaults ship when within one image
    assert best["baseline"] == candidates[0]["baseline"]
    assert best["latency_ms"] <= min(t["latency_ms"] for t in candidates) * (1 + stage.LATENCY_NOISE)
    # the files the choice rests on were measured again: the report keeps the lowest of their runs
    assert len(best["latency_runs_ms"]) == 2 and best["latency_ms"] == min(best["latency_runs_ms"])
    assert all(len(t["latency_runs_ms"]) == 2 for t in near) and "measuring again the" in r.output
    # the study starts from train's defaults (one format: a third of 3 trials), the other trials sampled
    assert [t["baseline"] for t in rep["trials"]] == [True, False, False] and rep["baseline"]["trials"] == [0]
    assert rep["trials"][0]["config"] == {"alpha": 0.35, "image_size": 64, "head": "linear", "dropout": 0.5,
                                          "augment": 1, "format": "tflite-fp32"}
    # the best configuration trained into OUT/best (train's own run) and its file exported and checked
    run = Run(out / "best")
    assert best["run"] == str(out / "best") and run.meta["image_size"] == best["config"]["image_size"]
    assert (run.meta["config"]["head"], run.meta["config"]["augment"]) == (best["config"]["head"],
                                                                          best["config"]["augment"])
    assert (out / "best" / best["file"]).is_file() and best["file_size_mb"] > 0
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["artifacts"][best["config"]["format"]]["status"] == "ok"
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "search.journal").is_file() and "Pareto set" in r.output
    assert f"next: edgetl bench {out / 'best'}" in r.output


def test_search_nothing_fits_names_the_closest(tiny_data, tmp_path):
    out = tmp_path / "search"
    r = CliRunner().invoke(app, ["search", str(tiny_data), "--out", str(out), *TINY, "--sizes", "32", "--trials",
                                 "2", "--heads", "linear", "--formats", "tflite-fp32", "--max-latency-ms", "0.0001"])
    assert r.exit_code == 1, r.output
    rep = json.loads((out / "search.json").read_text())
    assert rep["best"] is None and rep["closest"]["misses"]["latency_ms"] > 0
    assert "nothing fits the budget: the closest is trial" in " ".join(r.output.split())
    assert not (out / "best").exists()


def test_search_resumes_without_losing_or_repeating_a_trial(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "search"
    opts = dict(data=str(tiny_data), out=str(out), weights="random", alphas="0.35", sizes="32,64", epochs=3,
                augment=1, heads="linear", formats="tflite-fp32", max_latency_ms=1000.0, trials=4,
                export_best=False)
    real, calls = trials.evaluate_head, []

    def interrupted_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third trial, its head trained
        return real(*a, **k)

    monkeypatch.setattr(trials, "evaluate_head", interrupted_third)
    cfg = SearchConfig(**opts)
    with pytest.raises(KeyboardInterrupt):
        stage.search(cfg, validate(cfg), run_worker, console=factory.quiet_console())
    monkeypatch.setattr(trials, "evaluate_head", real)
    first = {t.number: t for t in trials.load_study(out, 0, 4).get_trials() if t.state.name == "COMPLETE"}
    assert sorted(first) == [0, 1]
    probes = {p.name: p.stat().st_mtime_ns for p in (out / "probes").glob("a*") if p.suffix != ".json"}
    runs = {p.name: json.loads(p.read_text())["latency_runs_ms"] for p in (out / "probes").glob("a*.json")}

    # a resume with other options would mix trials made under both: refused, naming the flag
    with pytest.raises(EdgetlError, match=r"searched with --max-latency-ms 1000, not 500; give the options"):
        validate(SearchConfig(**{**opts, "max_latency_ms": 500.0}, resume=True))
    with pytest.raises(EdgetlError, match=r"searched with --sizes 32,64, not 32;"):
        validate(SearchConfig(**{**opts, "sizes": "32"}, resume=True))
    monkeypatch.setitem(images.MOBILENET_V2_PREPROCESSING, "antialias", True)
    with pytest.raises(EdgetlError, match="another image preprocessing"):
        validate(SearchConfig(**opts, resume=True))
    monkeypatch.undo()

    cfg = SearchConfig(**opts, resume=True)
    rep = stage.search(cfg, validate(cfg), run_worker, console=factory.quiet_console())
    by = {t["number"]: t for t in rep["trials"]}
    assert rep["n_trials"] == 4 and len(by) == 4
    for n, t in first.items():  # kept as they were, not run again
        assert by[n]["val_accuracy"] == t.value and by[n]["config"]["image_size"] == t.params["image_size"]
    study = trials.load_study(out, 0, 4)
    all_trials = study.get_trials()
    assert [t.state.name for t in all_trials][:3] == ["COMPLETE", "COMPLETE", "FAIL"]
    # the interrupted trial ran again once, with its own parameters
    retry = [t for t in all_trials if t.user_attrs.get("retry_of") == 2]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == all_trials[2].params
    for name, mtime in probes.items():  # every file reused, none made again
        assert (out / "probes" / name).stat().st_mtime_ns == mtime
    for name, first in runs.items():  # nor measured again for a trial (only once more, for the choice)
        again = json.loads((out / "probes" / name).read_text())["latency_runs_ms"]
        assert again[:len(first)] == first and len(again) - len(first) <= 1


def test_resume_refuses_a_study_without_recorded_options(tiny_data, tmp_path):
    import optuna

    out = tmp_path / "search"
    out.mkdir()
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(out), direction="maximize")
    opts = dict(data=str(tiny_data), out=str(out), weights="random", alphas="0.35", sizes="32",
                max_latency_ms=1000.0)
    assert validate(SearchConfig(**opts, resume=True)).sizes == [32]  # no trial yet: nothing to mix with
    study.enqueue_trial({"image_size": 32})
    with pytest.raises(EdgetlError, match="records no options .* pass --overwrite"):
        validate(SearchConfig(**opts, resume=True))
    # options recorded by a version that had one option fewer: its trials may differ in it
    recorded = study_options(validate(SearchConfig(**opts, overwrite=True)))
    del recorded["--head-start"]
    study.set_user_attr(OPTIONS_ATTR, recorded)
    with pytest.raises(EdgetlError, match="records no --head-start; pass --overwrite"):
        validate(SearchConfig(**opts, resume=True))
    assert validate(SearchConfig(**opts, overwrite=True)).sizes == [32]


def test_search_workers_share_one_study(tiny_data, tmp_path):
    out = tmp_path / "search"
    r = CliRunner().invoke(app, ["search", str(tiny_data), "--out", str(out), *TINY, "--sizes", "32", "--trials", "4",
                                 "--heads", "linear", "--formats", "tflite-fp32", "--max-latency-ms", "1000",
                                 "--workers", "2", "--no-export-best"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "search.json").read_text())
    # 4 finished trials between the two processes (one more may have started before the count was reached)
    assert rep["n_trials"] >= 4 and len({t["number"] for t in rep["trials"]}) == rep["n_trials"]
    assert len(list((out / "probes").glob("*.json"))) == 1  # the one (size, head, format) measured once


def test_search_on_ray_reports_what_a_local_search_reports(tiny_data, tmp_path):
    pytest.importorskip("ray", reason="the cluster extra (make test installs it)")
    common = [*TINY, "--sizes", "32,64", "--trials", "3", "--heads", "linear", "--formats", "tflite-fp32",
              "--max-latency-ms", "1000", "--no-export-best"]
    reps = {}
    for name, extra in (("local", []), ("ray", ["--ray", "auto"])):
        r = CliRunner().invoke(app, ["search", str(tiny_data), "--out", str(tmp_path / name), *common, *extra])
        assert r.exit_code == 0, r.output
        reps[name] = json.loads((tmp_path / name / "search.json").read_text())
    local, ray = reps["local"], reps["ray"]
    assert set(local) == set(ray) and ray["n_trials"] == local["n_trials"] == 3
    assert "--ray auto:" in r.output  # the Ray run said where its trials ran
    for a, b in zip(local["trials"], ray["trials"]):  # the same seeded sampler: the same configurations
        assert set(a) == set(b) and (a["via"], b["via"]) == ("optuna", "ray")
        assert a["config"] == b["config"] and a["val_accuracy"] == b["val_accuracy"]  # trained the same way
        assert a["size_mb"] == b["size_mb"] and a["latency_source"] == b["latency_source"] == "measured"
    assert ray["best"]["config"] == local["best"]["config"]


@pytest.mark.parametrize("fmt", ["tflite-int8", "onnx-int8", "onnx-fp32"])
def test_every_searchable_format_is_probed(tmp_path, fmt):
    """The probe converts with export's own converter for every format search offers (the registry's
    EXPORT_FORMATS), int8 files included, and measures the file in bench's worker."""
    import numpy as np

    from edgetl.core.formats import EXPORT_FORMATS
    from edgetl.search.probe import Prober

    assert fmt in EXPORT_FORMATS
    prober = Prober(tmp_path, {"path": None, "source": "random"}, 0, 1, run_worker, None, None, 0.05)
    calib = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    got = prober.get(0.35, 32, "linear", fmt, ["a", "b"], calib)
    assert got["size_mb"] > 0 and got["latency_ms"] > 0 and got["latency_source"] == "measured"
    assert (tmp_path / "probes" / got["file"].split("/")[-1]).is_file()


def test_the_files_the_choice_rests_on_are_measured_again(tmp_path):
    """Measured again: every trial that only latency keeps out, within one val image of the top feasible one
    or above it (a slow first measurement may have kept it out); not one kept out by its size, nor one
    further behind. A report then takes the lowest of the runs."""
    import optuna

    from edgetl.search.probe import PROBES_DIR

    study = optuna.create_study(direction="maximize")
    dist = {"alpha": optuna.distributions.CategoricalDistribution([0.35]),
            "image_size": optuna.distributions.CategoricalDistribution([96, 128, 160, 192]),
            "head": optuna.distributions.CategoricalDistribution(["linear"]),
            "format": optuna.distributions.CategoricalDistribution(["tflite-int8"])}
    (tmp_path / PROBES_DIR).mkdir()
    for size, acc, cons in ((96, 0.90, [-0.1, -1, -1]), (128, 0.95, [0.2, -1, -1]), (160, 0.99, [-0.1, 0.5, -1]),
                            (192, 0.50, [-0.1, -1, -1])):
        study.add_trial(optuna.trial.create_trial(
            params={"alpha": 0.35, "image_size": size, "head": "linear", "format": "tflite-int8"},
            distributions=dist, value=acc, user_attrs={"n_val": 100, "constraints": cons}))
        (tmp_path / PROBES_DIR / f"a0.35-{size}-linear-tflite-int8.json").write_text(json.dumps(
            {"file": str(tmp_path / f"{size}.tflite"), "threads": 1, "latency_ms": 1.0}))
    measured = []

    def measure(job):
        measured.append(job["path"])
        return {"status": "ok", "latency_ms": {"p50": 0.5}}

    cfg = SearchConfig(data=".", out=str(tmp_path), max_latency_ms=0.8)
    got = stage.confirm_latencies(cfg, study, measure, None, factory.quiet_console())
    assert got == {"a0.35-96-linear-tflite-int8": [1.0, 0.5], "a0.35-128-linear-tflite-int8": [1.0, 0.5]}
    assert sorted(measured) == sorted(str(tmp_path / f"{s}.tflite") for s in (96, 128))
    assert stage.confirm_latencies(cfg, study, measure, {"name": "rpi4"}, factory.quiet_console()) == {}
