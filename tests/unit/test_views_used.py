"""The augmented views a training set gets: all asked for on small sets, fewer on large ones (--max-train-views)."""

from __future__ import annotations

from edgetl.model.recipe import MAX_TRAIN_VIEWS, views_used


def test_views_shrink_with_the_training_set():
    assert views_used(2, 245, MAX_TRAIN_VIEWS) == 2  # hymenoptera
    assert views_used(2, 720, MAX_TRAIN_VIEWS) == 2  # flowers12
    assert views_used(2, 980, MAX_TRAIN_VIEWS) == 1  # 980 x 2 views fit in 2,400, 980 x 3 do not
    assert views_used(2, 1930, MAX_TRAIN_VIEWS) == 0
    assert views_used(2, 5000, MAX_TRAIN_VIEWS) == 0
    assert views_used(2, 1930, 0) == 2  # 0: no limit
    assert views_used(0, 10, MAX_TRAIN_VIEWS) == 0
