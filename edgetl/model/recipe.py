"""The training recipe train and compare share: its options (one set of defaults for both commands)
and their checks, made before any work and without TensorFlow."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.config import as_dict, opt
from ..core.errors import EdgetlError
from ..core.outdir import check_out
from ..core.rundir import META_FILE
from .backbone import check_backbone_options
from .finetune import BASE_LAYERS, DEFAULT_CUT, fine_tune_cut
from .graph import HEAD_STARTS, HEADS

DEFAULT_ALPHA = 1.0
DEFAULT_SIZE = 224
MAX_SEED = 2**32 - 1  # numpy's and Python's seeding accept any such integer, TensorFlow's too
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_AUGMENT = 32
# Augmented views pay on small sets and cost feature time on large ones (docs/benchmarks.md: on 1,930 training
# images 0, 1 and 2 views score within one val image of each other, and 2 views take 2.7x the feature work);
# 2,400 keeps both bundled sets' 2 views (hymenoptera 245 images, flowers12 720).
MAX_TRAIN_VIEWS = 2400


@dataclass
class Recipe:
    """The options train and compare share, so both commands have one set of defaults."""

    data: str | None = opt(None, "Image folder: DATA/{train,val}/<class>/ or DATA/<class>/", argument=True)
    out: str = opt("runs/run", "Run directory to write", "--out", "-o")
    alpha: float | None = opt(None, "MobileNetV2 width: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 (default 1.0; with --from: "
                                    "the run's)")
    image_size: int | None = opt(None, "Input size in px, 96-224 (default 224; with --from: the run's)")
    weights: str = opt("imagenet", "'imagenet' (Keras cache/download or $EDGETL_WEIGHTS_DIR), a .h5 path, or "
                                   "'random'")
    epochs: int = opt(100, "Head epochs on cached features (at most: early stopping on val loss)")
    batch_size: int = opt(32, "Batch size")
    lr: float = opt(1e-3, "Head learning rate (Adam)")
    dropout: float = opt(0.5, "Dropout before the head's dense layer(s)")
    head: str = opt("linear", "'linear' (dropout + dense softmax) or 'dense128' (the seed's Dense(128, relu) + "
                              "softmax)")
    head_start: str = opt("zeros", "The head's softmax layer starts from 'zeros' or 'glorot' (random: 0.56 points "
                                   "less held-out accuracy on average, docs/accuracy.md#head-settings)")
    patience: int = opt(10, "Early-stopping patience (epochs without val-loss improvement)")
    augment: int = opt(2, "N extra augmented views per training image for the head (flip/crop/brightness), cached")
    max_train_views: int = opt(MAX_TRAIN_VIEWS, "Augmented views are used while training images x (1 + views) stay "
                                                "within this many; larger sets use fewer (0: no limit)")
    fine_tune: str = opt("off", f"Fine-tune the top of the base after the head: 'on' (the top {DEFAULT_CUT[1]} "
                                f"layers, blocks 13-16), LAYERS (the top LAYERS of the base's {BASE_LAYERS}, "
                                "rounded to a block boundary) or 'off'", metavar="on|LAYERS|off")
    fine_tune_epochs: int = opt(8, "Fine-tuning epochs (1 of warm-up, then a cosine learning-rate decay)")
    fine_tune_lr: float = opt(1e-4, "Fine-tuning peak learning rate (Adam)")
    fine_tune_any_size: bool = opt(False, "Fine-tune even data too small for it to gain (tests, measurements)",
                                   cli=False)
    val_split: float = opt(0.2, "Validation fraction carved from the training images when DATA has no val/")
    seed: int = opt(0, "Random seed (same seed + data -> same result)")
    overwrite: bool = opt(False, "Replace an existing --out folder that edgetl wrote (or an empty one)", "--overwrite")
    verbose: bool = opt(False, "Show TensorFlow's native log lines on stderr", "--verbose")
    workers: int = opt(2, "Image decoding threads", cli=False)
    feature_batch: int = opt(32, "Images per base-feature batch (TensorFlow path)", cli=False)

    def as_dict(self) -> dict:
        return as_dict(self)

    def recipe(self) -> dict:
        """Just the shared options (e.g. to make a train config from a compare config)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)}


def check_recipe(r: Recipe, marker: str = META_FILE) -> None:
    """Every shared option; one EdgetlError naming the flag and the accepted values. `marker`: the file
    that makes an existing --out folder replaceable with --overwrite (edgetl.json, or compare.json)."""
    if r.data is None or str(r.data) == "":
        raise EdgetlError("DATA: missing; give an image folder (DATA/<class>/*.jpg or DATA/{train,val}/<class>/)")
    if r.head not in HEADS:
        raise EdgetlError(f"--head {r.head}: accepted values are {', '.join(HEADS)}")
    if r.head_start not in HEAD_STARTS:
        raise EdgetlError(f"--head-start {r.head_start}: accepted values are {', '.join(HEAD_STARTS)}")
    for flag, v, lo in (("--epochs", r.epochs, 1), ("--batch-size", r.batch_size, 1), ("--patience", r.patience, 1),
                        ("--fine-tune-epochs", r.fine_tune_epochs, 1), ("--augment", r.augment, 0),
                        ("--workers", r.workers, 1), ("--max-train-views", r.max_train_views, 0)):
        check_int(flag, v, lo)
    if r.augment > MAX_AUGMENT:
        raise EdgetlError(f"--augment {r.augment}: at most {MAX_AUGMENT} extra views per image")
    fine_tune_cut(r.fine_tune)
    for flag, v in (("--lr", r.lr), ("--fine-tune-lr", r.fine_tune_lr)):
        if v is not None and not 0 < v < 1:
            raise EdgetlError(f"{flag} {v}: must be between 0 and 1")
    if not 0.0 <= r.dropout < 1.0:
        raise EdgetlError(f"--dropout {r.dropout}: must be in [0, 1)")
    if not 0.0 < r.val_split < 1.0:
        raise EdgetlError(f"--val-split {r.val_split}: must be between 0 and 1 (exclusive)")
    if isinstance(r.seed, bool) or int(r.seed) != r.seed or not 0 <= r.seed <= MAX_SEED:
        raise EdgetlError(f"--seed {r.seed}: must be an integer from 0 to {MAX_SEED}")
    weights = r.weights if r.weights not in ("imagenet", "random") else None
    check_out(r.out, r.overwrite, marker, {"DATA": r.data, "--test": getattr(r, "test", None),
                                           "--from": getattr(r, "from_run", None), "--weights": weights})


def views_used(augment: int, n_train: int, max_train_views: int) -> int:
    """The augmented views per training image actually used: `augment`, fewer when n_train x (1 + views)
    would exceed max_train_views (0: no limit)."""
    if not max_train_views or n_train <= 0:
        return augment
    return max(0, min(augment, max_train_views // n_train - 1))


def check_int(flag: str, v, lo: int) -> None:
    if int(v) != v or v < lo:
        raise EdgetlError(f"{flag} {v}: must be an integer >= {lo}")


def check_backbone(alpha, size, weights: str) -> tuple[float, int]:
    """(alpha, image size) with defaults applied, checked against the pretrained weights on offer."""
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    size = DEFAULT_SIZE if size is None else int(size)
    check_backbone_options(alpha, size, weights)
    if weights not in ("imagenet", "random"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EdgetlError(f"--weights {weights}: no such file (give 'imagenet', 'random' or a path to a .h5)")
        if not is_hdf5(path):
            raise EdgetlError(f"--weights {weights}: not an HDF5 weights file (.h5), e.g. Keras' "
                              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_*_no_top.h5")
    return alpha, size


def is_hdf5(path: Path) -> bool:
    """The HDF5 signature at one of the offsets the format allows (0, 512, 1024, 2048, ...)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                f.seek(offset)
                if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False
