"""Regression labels: future log returns over several horizons (numpy only).

label[t, j] = ln(close[t + h_j] / close[t]): what a model standing at candle t (features use
candles <= t) is asked to predict. Rows whose horizon runs past the end are NaN; the walk-forward
splitter purges at least max(horizons) rows between train and test so labels never overlap.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipelines.contracts.errors import KairosError


class LabelError(KairosError):
    """Labels cannot be made (bad horizons or prices)."""


def _check_horizons(horizons: Sequence[int]) -> list[int]:
    hs = [int(h) for h in horizons]
    if not hs or any(h < 1 for h in hs) or any(h != hh for h, hh in zip(hs, horizons)):
        raise LabelError(
            f"horizons must be positive whole candle counts, got {list(horizons)}; e.g. [1, 2, 3, 4, 5]"
        )
    if len(set(hs)) != len(hs):
        raise LabelError(f"horizons repeat a value: {hs}; list each horizon once")
    return hs


def label_names(horizons: Sequence[int]) -> list[str]:
    """Column names of the labels: ["ret_h1", "ret_h2", ...] in `horizons` order."""
    return [f"ret_h{h}" for h in _check_horizons(horizons)]


def make_labels(close: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """Future log returns of every candle.

    Args:
        close: (N,) close prices in time order, > 0.
        horizons: candles ahead, e.g. [1, 2, 3, 4, 5].

    Returns:
        float64 (N, H): [t, j] = ln(close[t + h_j] / close[t]); NaN where t + h_j >= N.

    Raises:
        LabelError: empty/non-positive/repeated horizons, a non 1-D close, or a close <= 0 or
            non-finite (NaN labels are reserved for "beyond the end").
    """
    hs = _check_horizons(horizons)
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise LabelError(f"close must be 1-D (N,), got shape {c.shape}")
    bad = ~np.isfinite(c) | (c <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise LabelError(f"close[{i}] = {c[i]}; labels need finite prices > 0 (validate the candles first)")
    n = c.size
    out = np.full((n, len(hs)), np.nan)
    for j, h in enumerate(hs):
        if h < n:
            # ln of the ratio (not a difference of logs): exact to ~1 ulp of the return itself
            out[: n - h, j] = np.log(c[h:] / c[: n - h])
    return out
