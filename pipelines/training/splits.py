"""Walk-forward folds with a purge gap, anchored so that the newest rows are always tested.

Rows are labelled candles in time order (row i is older than row i+1). A fold trains on
`[train_start, train_end)` and tests on `[test_start, test_end)` with `purge` rows dropped between
them: the label of training row t looks `max(horizons)` candles ahead, so with
`purge >= max(horizons)` (enforced by `TrainingConfig`) no training label sees a test price.

Layout for the newest fold (k = 0) and the one before it (k = 1), `step` rows apart::

    k=1:  [ train ........ ] purge [ test ]
    k=0:          [ train ........ ] purge [ test ]| n_rows
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import WalkForwardConfig
from pipelines.contracts.errors import KairosError


class SplitError(KairosError):
    """There are too few rows for the walk-forward configuration."""


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold; all bounds are row indices, ends exclusive."""

    index: int  # 0 = oldest fold kept
    train_start: int
    train_end: int
    test_start: int
    test_end: int

    @property
    def train_rows(self) -> int:
        return self.train_end - self.train_start

    @property
    def test_rows(self) -> int:
        return self.test_end - self.test_start


def rows_needed(cfg: WalkForwardConfig, n_folds: int = 1) -> int:
    """Rows needed for `n_folds` folds: one full train window, the purge, and the test windows."""
    return cfg.train_size + cfg.purge + cfg.test_size + (n_folds - 1) * cfg.step


def walk_forward_folds(n_rows: int, cfg: WalkForwardConfig) -> list[Fold]:
    """Split `n_rows` time-ordered rows into walk-forward folds.

    The newest fold's test window ends at `n_rows`; each older fold is `cfg.step` rows earlier.
    `rolling` trains on the `train_size` rows before the purge gap; `expanding` trains on every
    row from 0 (and still needs at least `train_size` of them). Only the newest `max_folds` folds
    are kept (0 keeps all).

    Args:
        n_rows: number of labelled rows available.
        cfg: the walk-forward configuration.

    Returns:
        Folds, oldest first, with `index` 0..len-1.

    Raises:
        SplitError: when not even one fold fits, naming the rows needed.
    """
    need = rows_needed(cfg)
    if n_rows < need:
        raise SplitError(
            f"{n_rows} rows are too few for one walk-forward fold: need train_size {cfg.train_size} + "
            f"purge {cfg.purge} + test_size {cfg.test_size} = {need}; supply more candles or shrink "
            "walk_forward.train_size/test_size"
        )
    bounds: list[tuple[int, int, int, int]] = []
    test_end = n_rows
    while True:
        test_start = test_end - cfg.test_size
        train_end = test_start - cfg.purge
        train_start = train_end - cfg.train_size
        if train_start < 0:
            break
        if cfg.scheme == "expanding":
            train_start = 0
        bounds.append((train_start, train_end, test_start, test_end))
        if cfg.max_folds and len(bounds) >= cfg.max_folds:
            break
        test_end -= cfg.step
    bounds.reverse()  # collected newest first
    return [Fold(i, *b) for i, b in enumerate(bounds)]


def validation_split(train_start: int, train_end: int, purge: int, fraction: float = 0.1) -> tuple[int, int]:
    """Split a training range into fit rows and a purged validation slice at its end.

    Returns `(fit_end, val_start)`: fit on `[train_start, fit_end)`, validate on
    `[val_start, train_end)`, with `purge` rows between them so fit labels do not see validation
    prices. The validation slice is `fraction` of the range (at least 1 row).
    """
    n = train_end - train_start
    n_val = max(1, int(round(n * fraction)))
    val_start = train_end - n_val
    fit_end = val_start - purge
    if fit_end - train_start < 1:
        raise SplitError(
            f"a training range of {n} rows leaves nothing to fit after a {n_val}-row validation slice "
            f"and a {purge}-row purge; raise walk_forward.train_size"
        )
    return fit_end, val_start
