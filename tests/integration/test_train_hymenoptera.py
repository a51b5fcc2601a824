"""`edgetl train ../shared/data/hymenoptera --alpha 0.35` (the session's run, ImageNet weights from the shared
mirror): accuracy, the weights record, and the data set's odd files."""

from __future__ import annotations

import json
from pathlib import Path


def test_hymenoptera_run(hymenoptera_run):
    meta = json.loads((hymenoptera_run / "edgetl.json").read_text())
    assert meta["metrics"]["val_accuracy"] >= 0.85, meta["metrics"]["val_accuracy"]
    assert meta["weights"]["source"] == "$EDGETL_WEIGHTS_DIR" and len(meta["weights"]["sha256"]) == 64
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] + meta["metrics"]["n_skipped"] == 398
    # odd files in the shared data: the GIF placeholder and the name with a space are decoded (not skipped)
    train_names = {Path(p).name for p, _ in meta["split"]["train"]}
    assert {"imageNotFound.gif", "ant photos.jpg"} <= train_names
    assert meta["metrics"]["n_skipped"] == len(meta["skipped"])
    assert not {Path(s["file"]).name for s in meta["skipped"]} & {"imageNotFound.gif", "ant photos.jpg"}
    assert meta["classes"] == ["ants", "bees"] and meta["alpha"] == 0.35 and meta["image_size"] == 224
    # ImageNet weights have a sha256: the base features came from the cached TFLite copy of the base
    assert meta["features"]["engine"] == "tflite"
    assert meta["features"]["base_cache_status"] in ("created", "hit")
