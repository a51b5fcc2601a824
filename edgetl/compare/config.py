"""`edgetl compare`'s options and their checks, made before any decoding or TensorFlow import: the
fractions of the training images (stratified, nested subsets) and the from-scratch budget."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..core import data as datamod
from ..core.config import opt
from ..core.errors import EdgetlError
from ..core.outdir import COMPARE_FILE, check_inputs_outside
from ..model.recipe import Recipe, check_backbone, check_recipe


ARMS = ("feature-extraction", "fine-tuning", "from-scratch")
ARM_TITLES = {"feature-extraction": "Feature extraction", "fine-tuning": "+ Fine-tuning",
              "from-scratch": "From scratch"}
DEFAULT_FRACTIONS = "0.1,0.25,0.5,1.0"
DEFAULT_BUDGET = "4x"
DEFAULT_FINE_TUNE = "on"
DEFAULT_TARGET_REL = 0.9  # default target accuracy = 90% of the best accuracy any arm reached


@dataclass
class CompareConfig(Recipe):
    """`edgetl compare` options: the recipe train shares (model.recipe.Recipe) plus the comparison's own."""

    data: str | None = opt(None, "Image folder, as for train", argument=True)
    out: str = opt("runs/compare", "Folder for compare.json/.csv and the plot", "--out", "-o")
    alpha: float | None = opt(None, "MobileNetV2 width: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 (default 1.0)")
    image_size: int | None = opt(None, "Input size in px for all arms, 96-224 (default 224)")
    weights: str = opt("imagenet", "Pretrained weights of the transfer arms: 'imagenet', a .h5 path, or 'random'")
    head: str = opt("linear", "'linear' or 'dense128' (all arms)")
    seed: int = opt(0, "Random seed (same split and seed for every arm)")
    overwrite: bool = opt(False, "Replace an existing --out folder", "--overwrite")
    fine_tune: str = opt(DEFAULT_FINE_TUNE, "The fine-tuning arm: 'on' (the top 39 layers, as train --fine-tune on), "
                                            "LAYERS (rounded to a block boundary) or 'off' (no such arm)",
                         metavar="on|LAYERS|off")
    fractions: str = opt(DEFAULT_FRACTIONS, "Fractions of the training images (stratified, nested), each in (0, 1]")
    budget: str = opt(DEFAULT_BUDGET, "From-scratch budget per fraction: Nx (times the fine-tuning arm's time at "
                                      "that fraction), Ns/Nm (wall clock), Nep (epochs); comma-separated limits, "
                                      "first reached wins, e.g. 30ep,300s")
    target: float | None = opt(None, "Accuracy for the 'data needed' row (default: 0.9 x the best accuracy any arm "
                                     "reached)")
    scratch_lr: float = opt(1e-3, "From-scratch learning rate (Adam)")


@dataclass
class Budget:
    """Scratch-arm budget: any of a multiple of the transfer arm's time, seconds, epochs (first reached)."""

    times: float | None = None  # "4x": 4 x the fine-tuning (or feature-extraction) arm's wall time
    seconds: float | None = None  # "300s"
    epochs: float | None = None  # "30ep"
    text: str = ""

    def seconds_for(self, transfer_seconds: float) -> float | None:
        caps = [c for c in (self.seconds, None if self.times is None else self.times * transfer_seconds) if c]
        return min(caps) if caps else None

    def as_dict(self) -> dict:
        return {"spec": self.text, "times_transfer": self.times, "seconds": self.seconds, "epochs": self.epochs}


def parse_fractions(text: str) -> list[float]:
    """'0.1,0.25,1' -> sorted unique fractions, each in (0, 1]."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            f = float(part)
        except ValueError:
            raise EdgetlError(f"--fractions {text}: {part!r} is not a number (give e.g. {DEFAULT_FRACTIONS})") from None
        if not (0.0 < f <= 1.0) or math.isnan(f):
            raise EdgetlError(f"--fractions {text}: {part} is outside (0, 1]; each fraction must be > 0 and <= 1")
        out.append(f)
    if not out:
        raise EdgetlError(f"--fractions {text!r}: give at least one fraction in (0, 1], e.g. {DEFAULT_FRACTIONS}")
    return sorted(set(out))


_BUDGET_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|s|sec|ep|epochs?|m|min)\s*$")


MAX_BUDGET = {"x": 100.0, "s": 86400.0, "ep": 1000.0}  # per limit: a typo's budget would run for days


def parse_budget(text: str) -> Budget:
    """'4x' (times the transfer arm's time), '300s' / '5m' (seconds), '30ep' (epochs); combine with commas,
    e.g. '30ep,300s': the scratch arm stops at whichever limit comes first."""
    b = Budget(text=str(text))
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise EdgetlError(f"--budget {text!r}: give e.g. 4x, 300s, 30ep or 30ep,300s")
    for part in parts:
        m = _BUDGET_RE.match(part)
        if not m:
            raise EdgetlError(f"--budget {text}: {part.strip()!r} not understood; use Nx (times the transfer arm's "
                              "time), Ns or Nm (wall-clock), Nep (epochs), comma-separated")
        v, unit = float(m.group(1)), m.group(2)
        if not v > 0 or math.isinf(v):
            raise EdgetlError(f"--budget {text}: {part.strip()} must be > 0")
        kind = "x" if unit == "x" else "s" if unit in ("s", "sec", "m", "min") else "ep"
        amount = v * 60.0 if unit in ("m", "min") else v
        if amount > MAX_BUDGET[kind]:
            raise EdgetlError(f"--budget {text}: {part.strip()} is more than the most accepted "
                              f"({MAX_BUDGET[kind]:g}{kind}: 100x, 24 h or 1000 epochs)")
        if kind == "x":
            b.times = v
        elif kind == "s":
            b.seconds = amount
        else:
            b.epochs = v
    return b


def class_counts(labels, n_classes: int) -> list[int]:
    return [int(np.sum(np.asarray(labels) == c)) for c in range(n_classes)]


def per_class_take(count: int, fraction: float) -> int:
    """Images of a class kept at this fraction: round half up, so 1.0 keeps all."""
    return min(count, int(math.floor(count * fraction + 0.5)))


def nested_subsets(labels: np.ndarray, n_classes: int, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """Stratified, seeded, nested index sets: each class's images are shuffled once and every fraction
    takes a prefix, so a fraction's images contain every smaller fraction's images."""
    rng = np.random.default_rng([seed, 4242])
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    return {f: np.sort(np.concatenate([p[:per_class_take(len(p), f)] for p in perms])) for f in fractions}


def check_fractions(fractions: list[float], counts: list[int], classes: list[str], flag_text: str) -> None:
    """Every fraction must leave at least one training image per class."""
    for f in fractions:
        for c, n in zip(classes, counts):
            if per_class_take(n, f) < 1:
                need = 0.5 / n if n else 1.0
                raise EdgetlError(
                    f"--fractions {flag_text}: {f:g} leaves no training image of class {c!r} ({n} images); "
                    f"use fractions >= {need:.3g}")


@dataclass
class Prepared:
    cfg: CompareConfig
    split: datamod.Split
    alpha: float
    image_size: int
    fractions: list[float]
    budget: Budget


def validate(cfg: CompareConfig) -> Prepared:
    """All option checks and the data scan, before any decoding or TensorFlow import."""
    fractions = parse_fractions(cfg.fractions)
    budget = parse_budget(cfg.budget)
    if cfg.target is not None and not (0.0 < cfg.target <= 1.0):
        raise EdgetlError(f"--target {cfg.target}: must be an accuracy in (0, 1]")
    if not (0.0 < cfg.scratch_lr < 1.0):
        raise EdgetlError(f"--scratch-lr {cfg.scratch_lr}: must be between 0 and 1")
    check_recipe(cfg, COMPARE_FILE)
    alpha, size = check_backbone(cfg.alpha, cfg.image_size, cfg.weights)
    split = datamod.scan(cfg.data, cfg.val_split, cfg.seed)
    check_inputs_outside(cfg.out, cfg.overwrite, split.reached)
    counts = [sum(1 for _, y in split.train if y == c) for c in range(len(split.classes))]
    check_fractions(fractions, counts, split.classes, cfg.fractions)
    return Prepared(cfg, split, alpha, size, fractions, budget)
