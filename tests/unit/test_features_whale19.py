"""pipelines.features.whale19: the 000 seed's 19 inputs, against an independent reference and talib,
no look-ahead, streaming == batch (alone and as "core27+whale19"), and the optional book fields.

Real data: FILUSDT 1m 2023-08 from ../shared/data (read in place); the kline dumps carry no book, so
the bid/ask columns of the book tests are synthetic quotes around the real closes (tick 0.001).

Tolerances: the reference is written independently (pandas rolling/ewm/pct_change, numpy
sliding windows for the moments), so it agrees to rounding: rtol 1e-9 everywhere, plus an atol only
where a value crosses zero and its rounding error is absolute rather than relative:
- macd_12_26 is a difference of two price-scale EMAs: error ~ a few ulp of the price (~1e-15),
  atol 1e-12;
- bollinger_position_20 = 0.5 + (close - SMA) / (4 std): the price-scale rounding of close - SMA (~1e-15)
  is divided by 4 std (>= 1.6e-3 on this data), ~1e-12; atol 1e-10;
- skewness_20 / kurtosis_20: m3 and m4/m2^2 - 3 cancel; rounding relative to the moments' scale
  (O(1)), atol 1e-12;
- price_change_*: (c - c_k) / c_k vs pandas' c / c_k - 1 differ by ~1 ulp of 1, atol 1e-15.
talib (SMA, EMA, RSI, MACD, BBANDS) seeds its recursions differently (SMA seeds), so it is compared
from `warmup - 1` on, where the seeds' weight is < 1e-16: rtol 1e-6 plus atol 1e-9 for MACD and the
Bollinger position (talib's one-pass variance loses ~eps * mean^2 / var relative).
Streaming vs batch from the same history start is bit-identical (asserted as such).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from pipelines.features import (
    StreamingFeatures,
    arrays_from_records,
    compute_features,
    core27,
    get_feature_set,
    whale19,
)
from tests.conftest import FIL_FILES

WHALE19 = [
    "price",
    "base_volume",
    "sma_20",
    "ema_20",
    "rsi_14w",
    "bollinger_position_20",
    "macd_12_26",
    "vwap_20",
    "volume_sma_20",
    "volume_ratio_20",
    "spread",
    "relative_spread",
    "price_change_1m",
    "price_change_5m",
    "volatility_20",
    "skewness_20",
    "kurtosis_20",
    "bid_price",
    "ask_price",
]
BOOK = ["spread", "relative_spread", "bid_price", "ask_price"]
NOT_BOOK = [n for n in WHALE19 if n not in BOOK]
ATOL = {
    "macd_12_26": 1e-12,
    "bollinger_position_20": 1e-10,
    "skewness_20": 1e-12,
    "kurtosis_20": 1e-12,
    "price_change_1m": 1e-15,
    "price_change_5m": 1e-15,
}
N_REAL = 20000
WARMUP = 500


@pytest.fixture(scope="module")
def fil(shared_data) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:N_REAL].reset_index(drop=True)


@pytest.fixture(scope="module")
def fil_features(fil) -> np.ndarray:
    return compute_features(fil, "whale19").to_numpy()


@pytest.fixture(scope="module")
def fil_records(fil) -> list[dict]:
    df = fil.copy()
    df["open_time"] = df["open_time"].astype("datetime64[ms, UTC]").astype("int64")
    return df.to_dict("records")


def _windows(x: np.ndarray, n: int = 20) -> np.ndarray:
    """(N, n) trailing windows of x, NaN rows until the first full window."""
    out = np.full((x.size, n), np.nan)
    out[n - 1 :] = sliding_window_view(x, n)
    return out


def reference(df: pd.DataFrame) -> pd.DataFrame:
    """whale19 written independently (the module docstring's definitions), pandas + numpy."""
    c, v, q = df["close"], df["volume"], df["quote_asset_volume"]
    r = pd.DataFrame(index=df.index)
    r["price"] = c
    r["base_volume"] = v
    r["sma_20"] = c.rolling(20).mean()
    r["ema_20"] = c.ewm(span=20, adjust=False).mean()
    d = c.diff()
    g = d.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    lo = (-d).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    r["rsi_14w"] = (100 * g / (g + lo)).where(g + lo > 0, 50.0)
    w = _windows(c.to_numpy(float))
    mean, std = w.mean(axis=1), w.std(axis=1)  # population std
    upper, lower = mean + 2 * std, mean - 2 * std
    with np.errstate(invalid="ignore", divide="ignore"):
        r["bollinger_position_20"] = np.where(np.ptp(w, axis=1) > 0, (c - lower) / (upper - lower), 0.5)
    r["macd_12_26"] = c.ewm(span=12, adjust=False).mean() - c.ewm(span=26, adjust=False).mean()
    vs = v.rolling(20).sum()
    r["vwap_20"] = (q.rolling(20).sum() / vs).where(vs > 0, c)
    vsma = v.rolling(20).mean()
    r["volume_sma_20"] = vsma
    r["volume_ratio_20"] = (v / vsma).where(vsma != 0, 1.0)
    book = reference_book(df)
    r["spread"], r["relative_spread"] = book["spread"], book["relative_spread"]
    r["price_change_1m"] = c.pct_change(1, fill_method=None)
    r["price_change_5m"] = c.pct_change(5, fill_method=None)
    lr = np.log(c / c.shift(1)).to_numpy()
    w = np.full((len(c), 20), np.nan)
    w[20:] = sliding_window_view(lr[1:], 20)  # 20 log returns, the first at t=1
    dev = w - w.mean(axis=1, keepdims=True)
    m2, m3, m4 = ((dev**k).mean(axis=1) for k in (2, 3, 4))
    flat = np.ptp(w, axis=1) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        r["volatility_20"] = np.sqrt(m2)
        r["skewness_20"] = np.where(flat, 0.0, m3 / m2**1.5)
        r["kurtosis_20"] = np.where(flat, 0.0, m4 / m2**2 - 3.0)
    r["bid_price"], r["ask_price"] = book["bid_price"], book["ask_price"]
    return r[WHALE19]


def reference_book(df: pd.DataFrame) -> pd.DataFrame:
    """Row by row: best bid/ask when both are finite and > 0; else spread_bps around the close; else NaN."""
    n = len(df)
    nan = np.full(n, np.nan)
    bid = df["best_bid"].to_numpy(float) if "best_bid" in df else nan
    ask = df["best_ask"].to_numpy(float) if "best_ask" in df else nan
    bps = df["spread_bps"].to_numpy(float) if "spread_bps" in df else nan
    c = df["close"].to_numpy(float)
    out = {k: nan.copy() for k in BOOK}
    for i in range(n):
        if np.isfinite(bid[i]) and np.isfinite(ask[i]) and bid[i] > 0 and ask[i] > 0:
            s = ask[i] - bid[i]
            vals = (s, s / ((bid[i] + ask[i]) / 2), bid[i], ask[i])
        elif np.isfinite(bps[i]):
            s = bps[i] / 1e4 * c[i]
            vals = (s, bps[i] / 1e4, c[i] - s / 2, c[i] + s / 2)
        else:
            continue
        for k, x in zip(BOOK, vals, strict=True):
            out[k][i] = x
    return pd.DataFrame(out, index=df.index)


def with_book(fil: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """Real candles plus synthetic quotes: 70 % bid/ask (0-3 ticks around the close, zero spread
    included), 15 % spread_bps only, 15 % nothing."""
    rng = np.random.default_rng(seed)
    n = len(fil)
    c = fil["close"].to_numpy()
    mode = rng.choice(3, size=n, p=[0.7, 0.15, 0.15])
    bid = np.round(c - 0.001 * rng.integers(0, 4, n), 3)
    ask = np.round(c + 0.001 * rng.integers(0, 4, n), 3)
    bps = rng.uniform(0.5, 10.0, n)
    out = fil.copy()
    out["best_bid"] = np.where(mode == 0, bid, np.nan)
    out["best_ask"] = np.where(mode == 0, ask, np.nan)
    out["spread_bps"] = np.where(mode == 1, bps, np.nan)
    return out


def assert_close(got: np.ndarray, want: np.ndarray, names: list[str], rtol: float = 1e-9) -> None:
    for j, name in enumerate(names):
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=rtol, atol=ATOL.get(name, 0.0), err_msg=name)


# ----------------------------------------------------------------------------------- the spec


def test_spec():
    fs = get_feature_set("whale19")
    assert fs.name == "whale19" and fs.version == 1 and list(fs.names) == WHALE19
    assert not set(WHALE19) & set(core27.NAMES)  # composes with core27
    # RSI: (13/14)^k < 1e-16 needs k = 498, +1 for the first diff; EMA26 479; EMA20 369
    assert fs.warmup == WARMUP
    fv = dict(zip(WHALE19, whale19.first_valid(), strict=True))
    assert fv["rsi_14w"] == 499 and fv["macd_12_26"] == 479 and fv["ema_20"] == 369
    assert fv["sma_20"] == fv["bollinger_position_20"] == fv["vwap_20"] == fv["volume_ratio_20"] == 19
    assert fv["volatility_20"] == fv["skewness_20"] == fv["kurtosis_20"] == 20
    assert fv["price_change_5m"] == 5 and all(fv[n] == 0 for n in BOOK + ["price", "base_volume"])
    assert set(whale19.OPTIONAL) == {"best_bid", "best_ask", "spread_bps"}
    both = get_feature_set("core27+whale19")
    assert list(both.names) == list(core27.NAMES) + WHALE19 and both.warmup == 554
    assert both.components == (("core27", 1), ("whale19", 1))


# ------------------------------------------------------------------------ reference and talib


def test_matches_independent_reference(fil, fil_features):
    ref = reference(fil).to_numpy()
    fv = whale19.first_valid()
    for j, name in enumerate(WHALE19):
        col = fil_features[:, j]
        assert np.isnan(col[: fv[j]]).all(), f"{name}: values before its window is full"
        if name in BOOK:  # kline-only: unknown, never 0
            assert np.isnan(col).all() and np.isnan(ref[:, j]).all(), name
            continue
        assert np.isfinite(col[fv[j] :]).all(), f"{name}: NaN after its window is full"
        np.testing.assert_allclose(
            col[fv[j] :], ref[fv[j] :, j], rtol=1e-9, atol=ATOL.get(name, 0.0), err_msg=name
        )
    rsi = fil_features[WARMUP:, WHALE19.index("rsi_14w")]
    assert 0 < rsi.min() < 30 and 70 < rsi.max() < 100  # the 0-100 scale


def test_matches_talib_after_warmup(fil, fil_features):
    talib = pytest.importorskip("talib")
    c = fil["close"].to_numpy(float)
    upper, _, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    want = {
        "sma_20": talib.SMA(c, 20),
        "ema_20": talib.EMA(c, 20),
        "rsi_14w": talib.RSI(c, 14),
        "macd_12_26": talib.MACD(c, 12, 26, 9)[0],
        "bollinger_position_20": (c - lower) / (upper - lower),
    }
    s = WARMUP - 1
    for name, w in want.items():
        atol = 1e-9 if name in ("macd_12_26", "bollinger_position_20") else 0.0
        got = fil_features[s:, WHALE19.index(name)]
        np.testing.assert_allclose(got, w[s:], rtol=1e-6, atol=atol, err_msg=name)


def test_hand_checked_flat_and_ramp():
    """Flat windows: exact zero variance (bb 0.5, volatility/skewness/kurtosis 0, rsi 50)."""
    n = WARMUP + 40
    close = np.full(n, 4.2)  # sum of 20 x 4.2 / 20 != 4.2: a naive close - mean would not be 0
    close[:WARMUP] = 4.0 + 0.001 * (np.arange(WARMUP) % 7)
    f = compute_features(_frame(close), "whale19")
    tail = f.iloc[WARMUP + 20 :]
    assert (tail["bollinger_position_20"] == 0.5).all() and (tail["volatility_20"] == 0.0).all()
    assert (tail[["skewness_20", "kurtosis_20", "price_change_1m", "price_change_5m"]] == 0.0).all().all()
    assert np.allclose(tail[["sma_20", "vwap_20"]], 4.2, rtol=1e-15, atol=0)
    ramp = compute_features(_frame(np.arange(1.0, n + 1)), "whale19")
    assert np.allclose(ramp["rsi_14w"].iloc[WARMUP:], 100.0, rtol=1e-15)
    # a linear ramp: close - SMA20 = 9.5, population std of 20 consecutive integers = sqrt(399/12)
    assert np.allclose(
        ramp["bollinger_position_20"].iloc[30:], 0.5 + 9.5 / (4 * np.sqrt(399 / 12)), rtol=1e-13
    )
    assert (ramp["volume_ratio_20"].iloc[19:] == 1.0).all()
    flat = compute_features(_frame(np.full(n, 7.0)), "whale19")
    assert (flat["rsi_14w"].iloc[WARMUP:] == 50.0).all()
    assert np.abs(flat["macd_12_26"].iloc[WARMUP:]).max() < 1e-14  # the blocked EMAs: a few ulp of 7


def _frame(close: np.ndarray, volume: float = 2.0) -> pd.DataFrame:
    n = close.size
    return pd.DataFrame(
        {
            "open_time": pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC"),
            "close": close,
            "volume": np.full(n, volume),
            "quote_asset_volume": volume * close,
        }
    )


# ------------------------------------------------------------------------- no look-ahead


def test_no_look_ahead_on_real_data(fil, fil_features):
    rng = np.random.default_rng(20240819)
    cuts = np.concatenate([[1, 2, 20, 21, 499, 500, 501, 8192, 8193, 8192 + 20], rng.integers(2, N_REAL, 30)])
    for cut in cuts:
        part = compute_features(fil.iloc[:cut], "whale19").to_numpy()
        np.testing.assert_array_equal(part, fil_features[:cut], err_msg=f"prefix of {cut}")


# ------------------------------------------------------------------------ streaming == batch


@pytest.mark.parametrize("name", ["whale19", "core27+whale19"])
def test_stream_equals_batch_every_step(fil, fil_records, name):
    """12,000 real candles one at a time from the first: every feature at every step, bit for bit."""
    n = 12000
    want = compute_features(fil.iloc[:n], name).to_numpy()
    sf = StreamingFeatures(name, interval_ms=60_000)
    w = sf.feature_set.warmup
    got = np.empty_like(want)
    for i in range(n):
        got[i] = sf.update(fil_records[i])
    np.testing.assert_array_equal(got, want)  # NaN == NaN, in the same places
    book = [sf.feature_set.names.index(b) for b in BOOK]
    assert np.isnan(got[:, book]).all()
    rest = np.delete(got[w - 1 :], book, axis=1)
    assert np.isfinite(rest).all() and sf.ready


def test_composite_is_the_parts_side_by_side(fil, fil_features):
    both = compute_features(fil.iloc[:3000], "core27+whale19").to_numpy()
    np.testing.assert_array_equal(both[:, :27], compute_features(fil.iloc[:3000], "core27").to_numpy())
    np.testing.assert_array_equal(both[:, 27:], fil_features[:3000])


# ----------------------------------------------------------------------------------- book


def test_book_fields_batch(fil, fil_features):
    df = with_book(fil.iloc[:5000])
    got = compute_features(df, "whale19")
    want = reference_book(df)
    for name in BOOK:  # exact: the same few float operations per row
        np.testing.assert_allclose(got[name], want[name], rtol=1e-15, atol=0, err_msg=name)
    bid_ask = np.isfinite(df["best_bid"].to_numpy())
    quoted = np.isfinite(df["spread_bps"].to_numpy())
    none = ~bid_ask & ~quoted
    assert bid_ask.mean() > 0.6 and quoted.sum() > 500 and none.sum() > 500
    assert np.isnan(got.loc[none, BOOK].to_numpy()).all()  # unknown stays NaN, never 0
    assert np.isfinite(got.loc[bid_ask | quoted, BOOK].to_numpy()).all()
    assert (got.loc[bid_ask, "spread"] == 0.0).any()  # a known zero spread is 0, not NaN
    # the approximation: centred on the close, relative spread = spread_bps / 1e4
    q = got.loc[quoted]
    np.testing.assert_allclose(q["relative_spread"], df.loc[quoted, "spread_bps"] / 1e4, rtol=1e-15)
    np.testing.assert_allclose((q["bid_price"] + q["ask_price"]) / 2, df.loc[quoted, "close"], rtol=1e-15)
    # the other 15 features do not depend on the book
    cols = [WHALE19.index(n) for n in NOT_BOOK]
    np.testing.assert_array_equal(got[NOT_BOOK].to_numpy(), fil_features[:5000, cols])
    # spread_bps only, everywhere: the approximation on every row; neither: NaN on every row
    bps = fil.iloc[:500].assign(spread_bps=3.0)
    g = compute_features(bps, "whale19")
    np.testing.assert_allclose(g[BOOK], reference_book(bps), rtol=1e-15)
    assert (g["relative_spread"] == 3e-4).all()
    bare = fil.iloc[:500].drop(columns=["spread_bps"])
    assert np.isnan(compute_features(bare, "whale19")[BOOK].to_numpy()).all()


def test_book_fields_streaming(fil, fil_records):
    """Candle dicts lacking the book keys (or sending None) give NaN, in batch and streaming alike."""
    frame = with_book(fil.iloc[:3000])
    frame["open_time"] = frame["open_time"].astype("datetime64[ms, UTC]").astype("int64")
    recs = frame.to_dict("records")
    for r in recs:  # a feed sends only what it has: drop the unknown keys, or send None
        for k in ("best_bid", "best_ask", "spread_bps"):
            if not np.isfinite(r[k]):
                if r["open_time"] % 120_000:
                    del r[k]
                else:
                    r[k] = None
    arrays = arrays_from_records(recs, "whale19")  # missing / None → NaN
    batch = compute_features(arrays, "whale19").to_numpy()
    np.testing.assert_array_equal(batch, compute_features(frame, "whale19").to_numpy())
    book = [WHALE19.index(b) for b in BOOK]
    np.testing.assert_allclose(batch[:, book], reference_book(frame).to_numpy(), rtol=1e-15, atol=0)
    for name in ("whale19", "core27+whale19"):
        sf = StreamingFeatures(name, interval_ms=60_000)
        got = np.array([sf.update(r) for r in recs])[:, -19:]
        np.testing.assert_array_equal(got, batch, err_msg=name)
    sf = StreamingFeatures.from_history(fil.iloc[:3000], "whale19")  # kline-only
    row = sf.update({k: v for k, v in fil_records[3000].items() if k != "spread_bps"})
    assert np.isnan(row[book]).all() and np.isfinite(np.delete(row, book)).all()


# ----------------------------------------------------------------------------- from_history


def test_from_history_window_then_stream(fil, fil_records, fil_features):
    cols = [WHALE19.index(n) for n in NOT_BOOK]
    for start in (700, 9001):
        window = fil.iloc[start : start + WARMUP]
        sf = StreamingFeatures.from_history(window, "whale19")
        assert sf.ready and sf.count == WARMUP and sf.interval_ms == 60_000
        last = compute_features(window, "whale19").to_numpy()[-1:]  # the window alone, as serving sees it
        assert_close(last[:, cols], fil_features[start + WARMUP - 1 : start + WARMUP, cols], NOT_BOOK)
        got = np.array([sf.update(r) for r in fil_records[start + WARMUP : start + WARMUP + 1000]])
        assert_close(got[:, cols], fil_features[start + WARMUP : start + WARMUP + 1000, cols], NOT_BOOK)
    short = StreamingFeatures.from_history(fil.iloc[: WARMUP - 1], "whale19")
    assert not short.ready
    short.update(fil_records[WARMUP - 1])
    assert short.ready
