"""`edgetl train` option checks (no TensorFlow): every bad value is one EdgetlError naming its flag, raised
before any image is decoded; through the CLI it is one line and exit 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.core.errors import EdgetlError
from edgetl.train.config import TrainConfig, validate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return factory.image_folder(tmp_path_factory.mktemp("train-options") / "data", per_class=4, size=32)


def _cfg(data_dir, tmp, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(data_dir), "out": str(tmp / "out"), **factory.TINY, **kw})


@pytest.mark.parametrize("options, flag", [
    ({"augment": 33}, "--augment 33"),
    ({"augment": -1}, "--augment -1"),
    ({"qat_epochs": 0}, "--qat-epochs 0"),
    ({"qat_lr": 0.0}, "--qat-lr 0.0"),
    ({"qat_loss": "kl"}, "--qat-loss kl"),
    ({"epochs": 0}, "--epochs 0"),
    ({"batch_size": 2.5}, "--batch-size 2.5"),
    ({"fine_tune": 155}, "--fine-tune 155"),
    ({"fine_tune": "all"}, "--fine-tune all"),
    ({"fine_tune_epochs": 0}, "--fine-tune-epochs 0"),
    ({"fine_tune_lr": 2.0}, "--fine-tune-lr 2.0"),
    ({"test": "/no/such/folder"}, "--test /no/such/folder"),
    ({"lr": 1.5}, "--lr 1.5"),
    ({"dropout": 1.0}, "--dropout 1.0"),
    ({"val_split": 1.0}, "--val-split 1.0"),
    ({"head": "mlp"}, "--head mlp"),
    ({"head_start": "ones"}, "--head-start ones"),
    ({"alpha": 0.3}, "--alpha 0.3"),
    ({"image_size": 40}, "--image-size 40"),  # random weights: multiples of 32
    ({"weights": "imagenet", "image_size": 100}, "--image-size 100"),  # pretrained: Keras' sizes
    ({"weights": "/no/such/file.h5", "image_size": 96}, "--weights /no/such/file.h5"),
    ({"data": None}, "DATA: missing"),
])
def test_bad_option_is_one_error_naming_the_flag(data, tmp_path, options, flag):
    with pytest.raises(EdgetlError) as e:
        validate(_cfg(data, tmp_path, **options))
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_accepted_values_are_listed(data, tmp_path):
    with pytest.raises(EdgetlError, match=r"accepted values are distill, labels"):
        validate(_cfg(data, tmp_path, qat_loss="x"))
    with pytest.raises(EdgetlError, match=r"accepted values are 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"):
        validate(_cfg(data, tmp_path, alpha=2.0))


def test_existing_out_needs_overwrite(data, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(EdgetlError, match="--out .* already exists; pass --overwrite"):
        validate(_cfg(data, tmp_path))
    p = validate(_cfg(data, tmp_path, overwrite=True))
    assert (p.alpha, p.image_size) == (0.35, 32)
    assert p.split.classes == ["cats", "dogs"] and len(p.split.train) == 8 and len(p.split.val) == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgetlError, match="is not a folder"):
        validate(TrainConfig(data=str(data), out=str(tmp_path / "file"), overwrite=True, **factory.TINY))


def test_defaults_alpha_1_at_224_px(data, tmp_path):
    p = validate(TrainConfig(data=str(data), out=str(tmp_path / "out"), weights="random"))
    assert (p.alpha, p.image_size, p.from_meta) == (1.0, 224, None)


@pytest.mark.parametrize("bad", ["missing", "file", "empty-dir"])
def test_from_not_a_run_is_a_one_line_error(data, tmp_path, bad):
    target = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty-dir": tmp_path / "empty"}[bad]
    if bad == "file":
        target.write_text("x")
    if bad == "empty-dir":
        target.mkdir()
    r = CliRunner().invoke(app, ["train", str(data), "--from", str(target), "--adapt-bn",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"--from {target}" in lines[0] and "error" in lines[0], r.output
    assert ("no such folder" if bad == "missing" else "not an edgetl run") in lines[0]
    assert "decode" not in r.output and not (tmp_path / "out").exists()


def test_bad_input_through_the_cli_is_one_line_before_any_work(data, tmp_path):
    out = tmp_path / "out"
    for args, flag in ((["--augment", "40"], "--augment"), (["--qat-loss", "kl"], "--qat-loss"),
                       (["--fine-tune", "999"], "--fine-tune"), (["--image-size", "100"], "--image-size")):
        r = CliRunner().invoke(app, ["train", str(data), "--out", str(out), *args])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and "error" in lines[0], r.output
    assert not out.exists()
    r = CliRunner().invoke(app, ["train", str(tmp_path / "no-data"), "--out", str(out)])
    assert r.exit_code == 2 and "no such folder" in r.output and len(r.output.strip().splitlines()) == 1


def test_defaults_are_declared_once_for_train_and_compare():
    from edgetl.compare.config import CompareConfig

    for cfg in (TrainConfig(data="d", out="o"), CompareConfig(data="d", out="o")):
        got = (cfg.dropout, cfg.epochs, cfg.patience, cfg.augment, cfg.fine_tune_epochs, cfg.fine_tune_lr, cfg.lr)
        assert got == (0.5, 100, 10, 2, 8, 1e-4, 1e-3), type(cfg).__name__
    assert TrainConfig(data="d", out="o").fine_tune == "off" and CompareConfig(data="d", out="o").fine_tune == "on"
