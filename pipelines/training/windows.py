"""Sliding windows of feature rows for sequence models (numpy only: no torch import here).

Contract (issue 5): `sliding_windows(X [N, F], length) -> [N-length+1, length, F]` where window k is
`X[k : k+length]`, i.e. the window ENDING at row `k+length-1`. The label of window k is the label of
its last row, so the caller aligns labels with `align_to_windows(Y, length)` (= `Y[length-1:]`).

Windows are a zero-copy strided view (read-only): 30 days of 1m candles × 60 × 27 float32 would be
~280 MB materialised, while the view costs nothing; a batch is copied only when it is indexed.
"""

from __future__ import annotations

import numpy as np

from pipelines.contracts.errors import KairosError


class WindowError(KairosError):
    """Windows cannot be built from the given rows (too few rows, wrong rank, bad length)."""


def sliding_windows(X: np.ndarray, length: int) -> np.ndarray:
    """All windows of `length` consecutive rows.

    Args:
        X: feature rows, shape (N, F), oldest first.
        length: rows per window T (>= 1).

    Returns:
        Read-only view of shape (N - length + 1, length, F); row k is X[k : k + length].

    Raises:
        WindowError: X is not 2-D, length < 1, or N < length.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise WindowError(
            f"sliding_windows needs rows of shape (N, F), got shape {X.shape}; pass a 2-D array"
        )
    if length < 1:
        raise WindowError(f"window length must be >= 1, got {length}")
    if X.shape[0] < length:
        raise WindowError(
            f"{X.shape[0]} rows are fewer than one window of {length}; pass more history or a shorter length"
        )
    # sliding_window_view over axis 0 gives (N-T+1, F, T); swap to (N-T+1, T, F) without copying.
    return np.lib.stride_tricks.sliding_window_view(X, length, axis=0).transpose(0, 2, 1)


def align_to_windows(Y: np.ndarray, length: int) -> np.ndarray:
    """Labels (or times) of the windows of `sliding_windows(X, length)`: the rows each window ends on.

    Args:
        Y: per-row values, shape (N, ...) aligned with the X given to `sliding_windows`.
        length: the same window length T.

    Returns:
        Y[length - 1:], shape (N - length + 1, ...).
    """
    if len(Y) < length:
        raise WindowError(f"{len(Y)} rows are fewer than one window of {length}")
    return Y[length - 1 :]


def window_dataset(X: np.ndarray, Y: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows and their labels, keeping only windows with finite features and finite labels.

    Warm-up rows (NaN features) poison every window that contains them and the last `max(h)` rows
    have NaN labels; both are dropped here, AFTER windowing, so that a window never spans a gap
    created by dropping rows.

    Args:
        X: feature rows (N, F) float.
        Y: labels (N, H) float, NaN where unknown.
        length: window length T.

    Returns:
        (windows (M, T, F) float32, labels (M, H) float64, end_rows (M,) int64 index of each
        window's last row in X).
    """
    if len(X) != len(Y):
        raise WindowError(f"X has {len(X)} rows but Y has {len(Y)}; they must be aligned row for row")
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    W = sliding_windows(X32, length)
    Yw = align_to_windows(np.asarray(Y, dtype=np.float64), length)
    # A window is finite iff none of its rows has a non-finite value: count bad rows with a cumsum.
    bad_row = ~np.isfinite(X32).all(axis=1)
    bad_cum = np.concatenate([[0], np.cumsum(bad_row)])
    bad_in_window = bad_cum[length:] - bad_cum[:-length]  # (N - T + 1,)
    Y2 = Yw.reshape(len(Yw), -1)
    keep = (bad_in_window == 0) & np.isfinite(Y2).all(axis=1)
    end_rows = np.arange(length - 1, len(X), dtype=np.int64)[keep]
    idx = np.flatnonzero(keep)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        # The usual case (warm-up at the start, unknown labels at the end): one contiguous block,
        # so slice and stay a zero-copy view.
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        return W[sl], Yw[sl], end_rows
    return W[keep], Yw[keep], end_rows
