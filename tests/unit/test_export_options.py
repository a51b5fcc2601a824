"""`edgetl export` without TensorFlow: option checks come first (one line, before the run is read), and
the size budget's search."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.core.formats import EXPORT_FORMATS

runner = CliRunner()


def one_line_error(res, *needles):
    """exit != 0, one 'error:' line first (no traceback, no work before it), naming every needle."""
    assert res.exit_code != 0
    out = res.output
    assert "Traceback" not in out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), out
    assert sum("error:" in ln for ln in lines) == 1, out
    for n in needles:
        assert n in out.replace("\n", " "), out


@pytest.mark.parametrize("args, needles", [
    (["--int8", "--calib", "0"], ["--calib"]),
    (["--max-drop", "-1"], ["--max-drop"]),
    (["--int8", "--size-budget", "120"], ["--size-budget", "0 (off) to 100"]),
    (["--int8", "--size-budget", "-5"], ["--size-budget", "0 (off) to 100"]),
    (["--format", "tflite-fp32,tflite-int4"], ["tflite-int4", *EXPORT_FORMATS]),
    (["--format", "keras"], ["'keras' cannot be exported"]),
])
def test_bad_options_are_named_before_the_run_is_read(tmp_path, args, needles):
    """The run folder does not exist: an error about it would mean the options were checked too late."""
    res = runner.invoke(app, ["export", str(tmp_path / "no-such-run"), *args])
    one_line_error(res, *needles)
    assert "no such folder" not in res.output


def test_bad_path_not_a_run(tmp_path):
    (tmp_path / "x").mkdir()
    one_line_error(runner.invoke(app, ["export", str(tmp_path / "x")]), "not an edgetl run")
    one_line_error(runner.invoke(app, ["export", str(tmp_path / "nope")]), "no such folder")


def test_smallest_fit_bisects():
    """The smallest k whose build fits, found with few builds; a hint that fits or not; nothing fits."""
    from edgetl.export.budget import smallest_fit

    sizes = [0, 100, 90, 80, 70, 60, 50, 40, 30, 20, 10]  # size of build(k), falling with k
    built = []

    def build(k):
        built.append(k)
        return b"x" * sizes[k]

    for limit, want in ((65, 5), (100, 1), (10, 10), (5, None)):
        for hint in (None, want, 2, 9, 10):
            built.clear()
            k, res = smallest_fit(10, build, len, limit, hint=hint)
            assert k == want, (limit, hint)
            assert res == (None if want is None else b"x" * sizes[want])
            assert len(set(built)) <= 6, (limit, hint, built)
    built.clear()
    assert smallest_fit(10, build, len, 65, hint=5)[0] == 5 and sorted(set(built)) == [4, 5]
    assert smallest_fit(0, build, len, 65) == (None, None)
