"""`edgetl train`'s options and their checks, made before any work and without TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core import data as datamod
from ..core.config import opt
from ..core.errors import EdgetlError
from ..core.outdir import check_inputs_outside
from ..core.rundir import Run
from ..model.recipe import Recipe, check_backbone, check_int, check_recipe

QAT_LOSSES = ("distill", "labels")  # --qat-loss: QAT fine-tunes towards the float model's probabilities, or the labels


@dataclass
class TrainConfig(Recipe):
    """Every `edgetl train` option (recorded verbatim in edgetl.json["config"])."""

    test: str | None = opt(None, "Labelled folder DIR/<class>/ scored once at the end as the test set (DATA's own "
                                 "test/ folder is used without it)")
    from_run: str | None = opt(None, "Continue from a trained RUN (same classes)", "--from")
    qat: bool = opt(False, "Quantization-aware training after the float phases", "--qat")
    qat_epochs: int = opt(5, "QAT fine-tuning epochs")
    qat_lr: float = opt(1e-4, "QAT fine-tuning learning rate")
    qat_loss: str = opt("distill", "QAT fine-tuning targets: 'distill' (the float model's probabilities) or 'labels'")
    adapt_bn: bool = opt(False, "Re-estimate the base's BatchNorm statistics on DATA", "--adapt-bn")
    base_cache: bool = opt(True, "Compute base features with the backbone's TFLite copy, made once and cached in "
                                 "$EDGETL_CACHE_DIR (default ~/.cache/edgetl)", "--base-cache/--no-base-cache")


@dataclass
class Prepared:
    """Validated options + the scanned data split (no TensorFlow needed to build it)."""

    cfg: TrainConfig
    split: datamod.Split
    alpha: float
    image_size: int
    from_meta: dict | None = None


@dataclass
class TrainResult:
    path: Path
    meta: dict
    timings: dict = field(default_factory=dict)


def validate(cfg: TrainConfig) -> Prepared:
    """Check every option and scan DATA; raise EdgetlError naming the flag/file. Never imports TF."""
    check_recipe(cfg)
    check_int("--qat-epochs", cfg.qat_epochs, 1)
    if not (0 < cfg.qat_lr < 1):
        raise EdgetlError(f"--qat-lr {cfg.qat_lr}: must be between 0 and 1")
    if cfg.qat_loss not in QAT_LOSSES:
        raise EdgetlError(f"--qat-loss {cfg.qat_loss}: accepted values are {', '.join(QAT_LOSSES)}")
    from_meta, alpha, size = None, cfg.alpha, cfg.image_size
    if cfg.from_run is not None:
        from_meta, alpha, size = _check_from(cfg)
    else:
        alpha, size = check_backbone(alpha, size, cfg.weights)
    split = datamod.scan(cfg.data, cfg.val_split, cfg.seed, cfg.test)
    check_inputs_outside(cfg.out, cfg.overwrite, split.reached)
    if from_meta is not None and list(split.classes) != list(from_meta["classes"]):
        raise EdgetlError(f"--from {cfg.from_run}: class names differ: DATA has {split.classes}, "
                          f"the run has {list(from_meta['classes'])}")
    return Prepared(cfg, split, alpha, size, from_meta)


def _check_from(cfg: TrainConfig) -> tuple[dict, float, int]:
    """The --from run's metadata, alpha and image size (the new run keeps them)."""
    try:
        frun = Run(cfg.from_run)
        frun.require_model()
    except EdgetlError as e:  # name the flag: "--from X: not an edgetl run ..."
        msg = str(e)
        raise EdgetlError("--from " + msg[4:] if msg.startswith("RUN ") else f"--from: {msg}") from None
    meta = frun.meta
    if meta.get("qat"):
        raise EdgetlError(f"--from {frun.path}: a QAT run cannot be trained further; use the run it was made from")
    f_alpha, f_size = meta.get("alpha"), frun.image_size
    if cfg.alpha is not None and f_alpha is not None and float(cfg.alpha) != float(f_alpha):
        raise EdgetlError(f"--alpha {cfg.alpha}: differs from --from run's alpha {f_alpha}; omit --alpha")
    if cfg.image_size is not None and int(cfg.image_size) != f_size:
        raise EdgetlError(f"--image-size {cfg.image_size}: differs from --from run's image size {f_size}; "
                          "omit --image-size")
    return meta, f_alpha, f_size
