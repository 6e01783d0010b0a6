"""Walk-forward folds: anchored at the newest row, purged, ordered; property tests over configs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.config import WalkForwardConfig
from pipelines.contracts.errors import KairosError
from pipelines.training.splits import Fold, SplitError, rows_needed, validation_split, walk_forward_folds


def test_rolling_folds_exact_bounds():
    cfg = WalkForwardConfig(train_size=100, test_size=20, step=20, purge=5, max_folds=3)
    folds = walk_forward_folds(200, cfg)
    assert folds == [
        Fold(0, 35, 135, 140, 160),
        Fold(1, 55, 155, 160, 180),
        Fold(2, 75, 175, 180, 200),
    ]


def test_expanding_trains_from_zero_and_max_folds_zero_keeps_all():
    cfg = WalkForwardConfig(train_size=100, test_size=20, step=30, purge=5, max_folds=0, scheme="expanding")
    folds = walk_forward_folds(200, cfg)
    # test ends 200, 170, 140 fit (train_end 175, 145, 115 >= 100); 110 -> train_end 85 < 100 does not
    assert [(f.train_start, f.train_end, f.test_start, f.test_end) for f in folds] == [
        (0, 115, 120, 140),
        (0, 145, 150, 170),
        (0, 175, 180, 200),
    ]


def test_too_few_rows_names_the_rows_needed():
    cfg = WalkForwardConfig(train_size=100, test_size=20, step=20, purge=5)
    assert rows_needed(cfg) == 125
    assert len(walk_forward_folds(125, cfg)) == 1
    with pytest.raises(SplitError, match="124 rows are too few.*= 125") as e:
        walk_forward_folds(124, cfg)
    assert isinstance(e.value, KairosError)


def test_validation_split_is_purged_and_tenth():
    fit_end, val_start = validation_split(0, 1000, purge=5)
    assert (fit_end, val_start) == (895, 900)
    with pytest.raises(SplitError):
        validation_split(0, 5, purge=5)


@settings(max_examples=200, deadline=None)
@given(
    n_rows=st.integers(10, 3000),
    train=st.integers(1, 800),
    test=st.integers(1, 300),
    step=st.integers(1, 400),
    purge=st.integers(0, 20),
    max_folds=st.integers(0, 8),
    scheme=st.sampled_from(["rolling", "expanding"]),
)
def test_fold_properties(n_rows, train, test, step, purge, max_folds, scheme):
    cfg = WalkForwardConfig(
        train_size=train, test_size=test, step=step, purge=purge, max_folds=max_folds, scheme=scheme
    )
    if n_rows < train + purge + test:
        with pytest.raises(SplitError):
            walk_forward_folds(n_rows, cfg)
        return
    folds = walk_forward_folds(n_rows, cfg)
    assert folds, "at least one fold when enough rows"
    assert max_folds == 0 or len(folds) <= max_folds
    assert folds[-1].test_end == n_rows  # the newest data is always tested
    assert [f.index for f in folds] == list(range(len(folds)))
    for f in folds:
        assert 0 <= f.train_start < f.train_end
        assert f.test_start - f.train_end == purge  # purge gap respected exactly
        assert f.test_rows == test
        assert (
            f.train_rows == train if scheme == "rolling" else (f.train_start == 0 and f.train_rows >= train)
        )
    for a, b in zip(folds, folds[1:]):
        assert b.test_start - a.test_start == step  # ordered, oldest first
        assert b.test_end > a.test_end
