"""One-candle (streaming) paths of the feature kernels: the same bits as the general kernel.

ta, mtf and risk (and core27, `Ewm.step`) evaluate a single new candle on Python floats instead of
1-element arrays (see each module's `_kernel_one`): the same IEEE operations in the same order, so the
values are bit-identical to the batch kernel's. The real-data tests of each set assert streaming ==
batch at every step; here the paths meet the cases real candles rarely give: a price on a coarse tick
grid (many unchanged closes, so exact zeros and signed-zero corners), flat stretches (every guarded
division's default), zero volumes, high == low, histories starting off the hour (bar ends and GPD refits
at every phase), and the recursions' block ends interleaved with array calls.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipelines.features import StreamingFeatures, compute_features, fit_feature_params, risk
from pipelines.features._ewm import BLOCK, Ewm

SETS = "core27+ta+mtf+risk"


def tick_candles(n: int, seed: int) -> dict[str, np.ndarray]:
    """n one-minute candles on a 0.001 tick grid: ~40 % unchanged closes, a 300-candle flat stretch
    with zero volume, candles with high == low, zero-volume candles; starts 7 minutes before an hour."""
    rng = np.random.default_rng(seed)
    tick = 0.001
    steps = rng.choice([-3, -1, 0, 0, 1, 3], size=n, p=[0.05, 0.25, 0.2, 0.2, 0.25, 0.05])
    steps[2500:2800] = 0
    close = 5.0 + tick * np.cumsum(steps)
    open_ = np.r_[close[0], close[:-1]]
    wick = tick * rng.integers(0, 3, size=(2, n))
    wick[:, 2500:2800] = 0.0
    wick[:, ::17] = 0.0  # some candles with high == low where open == close
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    volume = np.round(rng.exponential(50.0, n) * (rng.random(n) > 0.15), 1)  # 15 % zero volume
    volume[2500:2800] = 0.0
    buy = np.round(volume * rng.random(n), 1)
    start = 1_700_000_000_000 // 3_600_000 * 3_600_000 - 7 * 60_000
    return {
        "open_time": start + 60_000 * np.arange(n, dtype=np.int64),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "quote_asset_volume": volume * close,
        "taker_buy_base_asset_volume": buy,
        "taker_buy_quote_asset_volume": buy * close,
        "number_of_trades": np.round(volume / 3.0),
        "spread_bps": np.where(rng.random(n) < 0.5, np.nan, 1.5),
    }


def records(c: dict[str, np.ndarray]) -> list[dict]:
    n = c["open_time"].size
    return [{k: (int(v[i]) if k == "open_time" else float(v[i])) for k, v in c.items()} for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_stream_equals_batch_on_tick_grid_candles(seed):
    c = tick_candles(4200, seed)
    params = fit_feature_params({k: v[:3000] for k, v in c.items()}, SETS)
    want = compute_features(c, SETS, params=params).to_numpy()
    sf = StreamingFeatures(SETS, interval_ms=60_000, params=params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scalar paths raise no warning or ZeroDivisionError
        got = np.array([sf.update(r) for r in records(c)])
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))  # signed zeros too
    assert np.isfinite(got[sf.feature_set.warmup - 1 :]).all()


def test_ewm_step_equals_the_array_path():
    """`Ewm.step` (Python floats) gives the bits of `Ewm.__call__` over any chunking, block ends
    included, and either may follow the other on one state."""
    rng = np.random.default_rng(3)
    alpha = np.array([2 / 13, 2 / 27, 2 / 10, 1 / 14, 1 / 14, 1 / 14])
    scale = np.array([[1.0], [1e-3], [1e3], [1.0], [5.0], [0.1]])
    x = rng.standard_normal((6, 5 * BLOCK + 17)) * scale
    x[:, 100:150] = 0.0
    whole = Ewm(alpha)
    whole.seed(x[:, 0])
    want = whole(x)
    stepped = Ewm(alpha)
    stepped.seed(x[:, 0])
    got = np.array([stepped.step(x[:, m].tolist()) for m in range(x.shape[1])]).T
    np.testing.assert_array_equal(got, want)
    mixed = Ewm(alpha)
    mixed.seed(x[:, 0])
    parts, m = [], 0
    while m < x.shape[1]:
        n = int(rng.integers(2, 3 * BLOCK)) if rng.random() < 0.2 else 1
        if n == 1 and rng.random() < 0.5:
            parts.append(np.array(mixed.step(x[:, m].tolist()))[:, None])
        else:
            parts.append(mixed(x[:, m : m + n]))
        m += n
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), want)
    np.testing.assert_array_equal(mixed.Y, whole.Y)
    assert mixed.phase == whole.phase


def test_gpd_one_equals_gpd_tail_rows():
    """The streaming refit (`_gpd_one`, one window on Python floats) gives the bits of `gpd_tail`'s row,
    across heavy tails (xi capped at XI_MAX), light tails (xi < 0), ties and equal exceedances (xi = 0)."""
    rng = np.random.default_rng(5)
    w = risk.EVT_WINDOW
    Z = np.concatenate(
        [
            rng.standard_t(3, size=(40, w)),
            rng.standard_cauchy(size=(20, w)),  # xi capped
            rng.uniform(-1.0, 1.0, size=(20, w)),  # bounded tail: xi < 0
            np.round(rng.standard_normal((20, w)), 1),  # ties
            np.zeros((2, w)),  # every exceedance 0: xi = 0, beta = 0
        ]
    )
    Z[-1, -300:] = 2.0  # equal exceedances above a tied threshold
    G = risk.gpd_tail(Z)
    assert (G[:, 1] == risk.XI_MAX).any() and (G[:, 1] < 0).any() and (G[:, 1] == 0).any()
    for i in range(Z.shape[0]):
        g = np.array(risk._gpd_one(Z[i]))
        np.testing.assert_array_equal(g, G[i], err_msg=f"row {i}")
        assert np.array_equal(np.signbit(g), np.signbit(G[i])), f"row {i}"
