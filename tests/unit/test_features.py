"""pipelines.features: core27 definitions, no look-ahead, streaming == batch, sequence errors.

Real data: FILUSDT 1m 2023-08 from ../shared/data (read in place). Tolerances: stream vs batch
from the same history start is bit-identical (asserted as such). Where two computations start
from different histories (from_history), EMA/RSI agree to rounding; the *_norm / vwap_deviation
features are differences of price-scale quantities divided by price, so their rounding error is
absolute (~1e-16) and a purely relative test fails where a value crosses zero: those comparisons
use rtol=1e-9 plus atol=1e-12.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines.contracts.errors import KairosError, StreamError
from pipelines.features import (
    FeatureError,
    StreamingFeatures,
    UnknownFeatureSet,
    compute_features,
    core27,
    feature_matrix,
    get_feature_set,
)
from pipelines.features._ewm import Ewm
from tests.conftest import FIL_FILES, REPO

CORE27 = [
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_asset_volume",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
    "number_of_trades",
    "spread_bps",
    "taker_buy_ratio",
    "log_return_1m",
    "log_return_5m",
    "log_return_15m",
    "volatility_5m",
    "volatility_15m",
    "volatility_30m",
    "sma_5_norm",
    "sma_15_norm",
    "sma_30_norm",
    "ema_5_norm",
    "ema_15_norm",
    "ema_30_norm",
    "rsi_14",
    "volume_sma_ratio",
    "vwap_deviation",
    "price_position",
]
N_REAL = 20000  # candles of FILUSDT 2023-08 used (keeps the file fast on 2 shared cores)


@pytest.fixture(scope="module")
def fil(shared_data) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:N_REAL].reset_index(drop=True)


@pytest.fixture(scope="module")
def fil_features(fil) -> np.ndarray:
    return compute_features(fil).to_numpy()


@pytest.fixture(scope="module")
def fil_records(fil) -> list[dict]:
    df = fil.copy()
    df["open_time"] = df["open_time"].astype("datetime64[ms, UTC]").astype("int64")
    return df.to_dict("records")


def frame(close, high=None, low=None, volume=None, qav=None, tbb=None, spread=None) -> pd.DataFrame:
    """A tiny candle frame (1m, from 2024-01-01) with the given series; others filled plainly."""
    close = np.asarray(close, dtype=float)
    n = close.size
    vol = np.full(n, 2.0) if volume is None else np.asarray(volume, dtype=float)
    return pd.DataFrame(
        {
            "symbol": "TEST",
            "interval": "1m",
            "open_time": pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC"),
            "open": close,
            "high": close if high is None else high,
            "low": close if low is None else low,
            "close": close,
            "volume": vol,
            "quote_asset_volume": vol * close if qav is None else qav,
            "number_of_trades": np.arange(n),
            "taker_buy_base_asset_volume": vol / 2 if tbb is None else tbb,
            "taker_buy_quote_asset_volume": vol * close / 2,
            "spread_bps": np.nan if spread is None else spread,
        }
    )


def reference(df: pd.DataFrame) -> pd.DataFrame:
    """core27 written independently with pandas rolling/ewm (the definitions in the brief)."""
    c, v, q = df["close"], df["volume"], df["quote_asset_volume"]
    r = pd.DataFrame(index=df.index)
    for n in CORE27[:9]:
        r[n] = df[n].astype(float)
    r["spread_bps"] = df["spread_bps"].fillna(0.0)
    r["taker_buy_ratio"] = np.where(v > 0, df["taker_buy_base_asset_volume"] / v.where(v > 0, 1), 0.0)
    lr1 = np.log(c / c.shift(1))
    for k in (1, 5, 15):
        r[f"log_return_{k}m"] = np.log(c / c.shift(k))
    for n in (5, 15, 30):
        r[f"volatility_{n}m"] = lr1.rolling(n).std(ddof=0)
    for n in (5, 15, 30):
        r[f"sma_{n}_norm"] = (c - c.rolling(n).mean()) / c
    for n in (5, 15, 30):
        r[f"ema_{n}_norm"] = (c - c.ewm(span=n, adjust=False).mean()) / c
    d = c.diff()
    g = d.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    lo = (-d).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    r["rsi_14"] = (g / (g + lo)).where(g + lo > 0, 0.5)
    sma20 = v.rolling(20).mean()
    r["volume_sma_ratio"] = (v / sma20).where(sma20 != 0, 1.0)
    vs, qs = v.rolling(30).sum(), q.rolling(30).sum()
    r["vwap_deviation"] = (c - (qs / vs).where(vs != 0, c)) / c
    hl = df["high"] - df["low"]
    r["price_position"] = ((c - df["low"]) / hl).where(hl != 0, 0.5)
    return r[CORE27]


# ----------------------------------------------------------------------------------- the spec


def test_feature_set_spec():
    fs = get_feature_set("core27")
    assert fs.name == "core27" and fs.version == 1
    assert list(fs.names) == CORE27 and isinstance(fs.names, tuple)
    # EMA30's seed weight (29/31)^k < 1e-16 needs k = 553; RSI's (13/14)^k needs 497 (+1: first diff)
    assert fs.warmup == 554
    assert (1 - 2 / 31) ** (fs.warmup - 1) < 1e-16 and (13 / 14) ** (fs.warmup - 2) < 1e-16
    assert get_feature_set() == fs


def test_unknown_feature_set_names_known_sets():
    with pytest.raises(UnknownFeatureSet, match="core27") as e:
        get_feature_set("core99")
    assert isinstance(e.value, KairosError) and isinstance(e.value, KeyError)
    assert str(e.value).startswith("unknown feature set 'core99'")
    with pytest.raises(KeyError):
        compute_features(frame(np.ones(5)), "nope")


def test_matches_independent_pandas_reference(fil, fil_features):
    ours = fil_features[:6000]
    ref = reference(fil.iloc[:6000]).to_numpy()
    fv = core27.first_valid()
    for j, name in enumerate(CORE27):
        col = ours[:, j]
        assert np.isnan(col[: fv[j]]).all(), f"{name}: values before its window is full"
        assert np.isfinite(col[fv[j] :]).all(), f"{name}: NaN after its window is full"
        np.testing.assert_allclose(col[fv[j] :], ref[fv[j] :, j], rtol=1e-9, atol=1e-12, err_msg=name)
    assert fv[CORE27.index("log_return_15m")] == 15 and fv[CORE27.index("volatility_30m")] == 30
    assert fv[CORE27.index("sma_30_norm")] == 29 and fv[CORE27.index("volume_sma_ratio")] == 19
    assert fv[CORE27.index("vwap_deviation")] == 29 and fv[CORE27.index("price_position")] == 0


# ------------------------------------------------------------------------------ hand-checked


def test_hand_checked_window_features():
    n = 40
    close = np.arange(1.0, n + 1)  # 1, 2, ..., 40
    high, low = close + 1.0, close - 1.0
    high[35], low[35] = close[35], close[35]  # high == low → 0.5
    low[36], high[36] = close[36] - 1.0, close[36] + 3.0  # (c - l)/(h - l) = 1/4
    vol = np.full(n, 2.0)
    vol[38] = 0.0
    tbb = vol * 0.25
    spread = np.full(n, np.nan)
    spread[37] = 3.5
    f = compute_features(frame(close, high, low, vol, vol * close, tbb, spread))
    assert f.loc[35, "price_position"] == 0.5 and f.loc[36, "price_position"] == 0.25
    assert f.loc[10, "price_position"] == 0.5  # (11 - 10) / (12 - 10)
    assert f.loc[37, "spread_bps"] == 3.5 and f.loc[36, "spread_bps"] == 0.0
    assert f.loc[37, "taker_buy_ratio"] == 0.25 and f.loc[38, "taker_buy_ratio"] == 0.0
    assert math.isclose(f.loc[10, "log_return_5m"], math.log(11 / 6), rel_tol=1e-15)
    # VWAP30 at t=29: volume 2 each → mean close of 1..30 = 15.5; sma_30 the same
    assert math.isclose(f.loc[29, "vwap_deviation"], (30 - 15.5) / 30, rel_tol=1e-14)
    assert math.isclose(f.loc[29, "sma_30_norm"], (30 - 15.5) / 30, rel_tol=1e-14)
    assert math.isclose(f.loc[4, "sma_5_norm"], (5 - 3) / 5, rel_tol=1e-14)
    assert np.isnan(f.loc[28, "vwap_deviation"]) and np.isnan(f.loc[3, "sma_5_norm"])
    assert f.loc[30, "volume_sma_ratio"] == 1.0
    assert f.loc[38, "volume_sma_ratio"] == 0.0
    assert math.isclose(f.loc[39, "volume_sma_ratio"], 2 / 1.9, rel_tol=1e-14)  # one zero in the 20


def test_hand_checked_volatility():
    r = np.array([0.01, -0.01] * 10)
    close = 100 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    f = compute_features(frame(close))
    x = r[-5:]  # the last five 1m log returns
    want = float(np.sqrt(np.mean((x - x.mean()) ** 2)))  # 0.0097979... = sqrt(1e-4 - 4e-6)
    assert math.isclose(f["volatility_5m"].iloc[-1], want, rel_tol=1e-9)
    assert np.isnan(f.loc[4, "volatility_5m"]) and np.isfinite(f.loc[5, "volatility_5m"])
    flat = compute_features(frame(np.full(40, 3.0)))
    assert (flat.loc[30:, ["volatility_5m", "volatility_15m", "volatility_30m"]].to_numpy() == 0.0).all()
    assert (flat.loc[29:, ["sma_5_norm", "sma_30_norm", "vwap_deviation"]].to_numpy() == 0.0).all()


def test_hand_checked_rsi_and_ema():
    w = get_feature_set().warmup
    # alternating +1/-1 steps: avg gain after an up step → 1/(1+a), after a down step a/(1+a), a = 13/14
    close = 10.0 + (np.arange(w + 20) % 2)
    rsi = compute_features(frame(close))["rsi_14"].to_numpy()
    fv = core27.first_valid()[CORE27.index("rsi_14")]
    assert np.isnan(rsi[:fv]).all() and np.isfinite(rsi[fv:]).all()
    up, down = rsi[w + 1 :: 2], rsi[w::2]  # close[t] = 11 after an up step (t odd)
    assert (w + 1) % 2 == 1
    assert np.allclose(up, 14 / 27, rtol=1e-12) and np.allclose(down, 13 / 27, rtol=1e-12)
    assert np.allclose(compute_features(frame(np.arange(1.0, w + 10)))["rsi_14"].iloc[w:], 1.0, rtol=1e-15)
    assert (compute_features(frame(np.full(w + 5, 7.0)))["rsi_14"].iloc[w:] == 0.5).all()
    # a step from 1 to 2 at t=200: EMA5 after 4 candles at 2 is 2 - (2/3)^4 → norm (2/3)^4 / 2
    step = np.where(np.arange(300) < 200, 1.0, 2.0)
    f = compute_features(frame(step))
    assert math.isclose(f.loc[203, "ema_5_norm"], (2 / 3) ** 4 / 2, rel_tol=1e-12)
    assert math.isclose(f.loc[199, "ema_5_norm"], 0.0, abs_tol=1e-15) and np.isnan(f.loc[89, "ema_5_norm"])


def test_ewm_matches_recursion_and_pandas():
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 2, size=(3, 1000))  # (K, M)
    alpha = np.array([1 / 3, 1 / 14, 2 / 31])
    e = Ewm(alpha, block=16)
    e.seed(x[:, 0])
    y = e(x)
    by_hand = np.empty_like(x)
    prev = x[:, 0]
    for t in range(x.shape[1]):
        prev = (1 - alpha) * prev + alpha * x[:, t]
        by_hand[:, t] = prev
    np.testing.assert_allclose(y, by_hand, rtol=1e-14)
    ref = np.stack([pd.Series(x[k]).ewm(alpha=alpha[k], adjust=False).mean() for k in range(3)])
    np.testing.assert_allclose(y, ref, rtol=1e-14)


# ------------------------------------------------------------------------- no look-ahead


def test_no_look_ahead_on_real_data(fil, fil_features):
    """Features on candles[:t] equal the full-history features of rows < t (bit for bit)."""
    rng = np.random.default_rng(20240101)
    ts = np.concatenate([[1, 2, 31, 553, 554, 555, 8193, 8192 + 31], rng.integers(2, N_REAL, size=32)])
    for t in ts:
        part = compute_features(fil.iloc[:t]).to_numpy()
        np.testing.assert_array_equal(part[-1], fil_features[t - 1], err_msg=f"row {t - 1}")
        np.testing.assert_array_equal(part, fil_features[:t], err_msg=f"prefix of {t}")


def test_future_candles_do_not_change_the_past(fil):
    a = compute_features(fil.iloc[:3000]).to_numpy()
    spoiled = fil.iloc[:3100].copy()
    spoiled.loc[3000:, ["close", "high", "low", "open"]] *= 3.0
    np.testing.assert_array_equal(compute_features(spoiled).to_numpy()[:3000], a)


# ------------------------------------------------------------------------ streaming == batch


def test_stream_equals_batch_every_step(fil_records, fil_features):
    """12,000 real candles one at a time from the first: every feature at every step, bit for bit."""
    sf = StreamingFeatures("core27", interval_ms=60_000)
    w = sf.feature_set.warmup
    got = np.empty((12000, 27))
    for i in range(12000):
        got[i] = sf.update(fil_records[i])
        assert sf.ready == (i + 1 >= w)
    np.testing.assert_array_equal(got, fil_features[:12000])  # NaN == NaN during warm-up
    assert np.isfinite(got[w - 1 :]).all() and np.isnan(got[: w - 1]).any(axis=1).all()
    assert sf.last_open_time == fil_records[11999]["open_time"] and sf.count == 12000


def test_from_history_window_then_stream(fil, fil_records, fil_features):
    w = get_feature_set().warmup
    for start in (700, 9001):
        window = fil.iloc[start : start + w]
        sf = StreamingFeatures.from_history(window, "core27")
        assert sf.ready and sf.interval_ms == 60_000 and sf.count == w
        last = compute_features(window).to_numpy()[-1]  # the window alone, as serving sees it
        np.testing.assert_allclose(last, fil_features[start + w - 1], rtol=1e-9, atol=1e-12)
        got = np.array([sf.update(r) for r in fil_records[start + w : start + w + 2000]])
        want = fil_features[start + w : start + w + 2000]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        ema_rsi = [CORE27.index(n) for n in ("ema_30_norm", "rsi_14")]
        assert np.abs(got[:, ema_rsi] - want[:, ema_rsi]).max() < 1e-14
    short = StreamingFeatures.from_history(fil.iloc[: w - 1])
    assert not short.ready
    assert np.isfinite(short.update(fil_records[w - 1])).all() and short.ready


def test_from_history_is_the_same_as_feeding(fil, fil_records):
    a = StreamingFeatures.from_history(fil.iloc[:1500])
    b = StreamingFeatures(interval_ms=60_000)
    for r in fil_records[:1500]:
        b.update(r)
    for r in fil_records[1500:1800]:
        np.testing.assert_array_equal(a.update(r), b.update(r))


def test_timestamps_and_ring_wrap(fil, fil_records, fil_features):
    """pd.Timestamp open_time works; > CAPACITY updates wrap the ring buffer without a seam."""
    from pipelines.features.streaming import CAPACITY

    sf = StreamingFeatures.from_history(fil.iloc[:600])
    out = [
        sf.update({**r, "open_time": pd.Timestamp(r["open_time"], unit="ms", tz="UTC")})
        for r in fil_records[600 : 600 + CAPACITY + 100]
    ]
    np.testing.assert_allclose(np.array(out), fil_features[600 : 600 + CAPACITY + 100], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------- errors


@pytest.fixture()
def warm(fil):
    return StreamingFeatures.from_history(fil.iloc[:600])


def test_duplicate_candle(warm, fil_records):
    with pytest.raises(StreamError, match=r"duplicate candle: expected open_time \d+ .*got \d+"):
        warm.update(fil_records[599])


def test_out_of_order_candle(warm, fil_records):
    with pytest.raises(StreamError, match="out-of-order candle"):
        warm.update(fil_records[500])


def test_gap_names_expected_and_got(warm, fil_records, fil_features):
    want, got = fil_records[600]["open_time"], fil_records[602]["open_time"]
    with pytest.raises(StreamError, match=f"gap of 2 candle.*expected open_time {want}.*got {got}"):
        warm.update(fil_records[602])
    # the rejected candle changed nothing: the right one still gives the batch value
    np.testing.assert_allclose(warm.update(fil_records[600]), fil_features[600], rtol=1e-9, atol=1e-12)


def test_order_checked_without_interval(fil_records):
    sf = StreamingFeatures()
    sf.update(fil_records[0])
    sf.update(fil_records[5])  # a gap is allowed when the interval is unknown
    with pytest.raises(StreamError, match="out-of-order"):
        sf.update(fil_records[3])


def test_reset_resyncs(warm, fil_records, fil_features):
    with pytest.raises(StreamError):
        warm.update(fil_records[700])
    warm.reset()
    assert warm.last_open_time is None and not warm.ready
    row = warm.update(fil_records[700])
    assert np.isnan(row[CORE27.index("log_return_1m")]) and row[3] == fil_records[700]["close"]


@pytest.mark.parametrize(
    "field,value",
    [("close", float("nan")), ("volume", float("inf")), ("close", 0.0), ("high", "x"), ("low", None)],
)
def test_bad_field_rejected(warm, fil_records, fil_features, field, value):
    with pytest.raises(StreamError, match=field):
        warm.update({**fil_records[600], field: value})
    np.testing.assert_allclose(warm.update(fil_records[600]), fil_features[600], rtol=1e-9, atol=1e-12)


def test_missing_fields(warm, fil_records):
    rec = dict(fil_records[600])
    del rec["quote_asset_volume"]
    with pytest.raises(StreamError, match="quote_asset_volume"):
        warm.update(rec)
    with pytest.raises(StreamError, match="open_time"):
        warm.update({k: v for k, v in fil_records[600].items() if k != "open_time"})
    rec = {k: v for k, v in fil_records[600].items() if k != "spread_bps"}  # optional: 0.0
    assert warm.update(rec)[CORE27.index("spread_bps")] == 0.0


def test_from_history_rejects_gapped_window(fil):
    gapped = pd.concat([fil.iloc[:300], fil.iloc[301:600]])
    with pytest.raises(StreamError, match="gap"):
        StreamingFeatures.from_history(gapped)


def test_batch_input_errors(fil):
    with pytest.raises(FeatureError, match="strictly increasing"):
        compute_features(fil.iloc[[0, 2, 1]])
    with pytest.raises(FeatureError, match=r"lacks columns \['volume'\]"):
        compute_features(fil.drop(columns=["volume"]).iloc[:50])
    bad = fil.iloc[:50].copy()
    bad.loc[7, "close"] = np.nan
    with pytest.raises(FeatureError, match="close at row 7"):
        compute_features(bad)
    two = pd.concat([fil.iloc[:5], fil.iloc[5:10].assign(symbol="X")])
    with pytest.raises(FeatureError, match="one symbol"):
        compute_features(two)


# --------------------------------------------------------------------------------- shapes


def test_frame_and_matrix_shapes(fil):
    part = fil.iloc[100:1300]  # a non-zero index is kept
    f = compute_features(part)
    assert list(f.columns) == CORE27 and (f.index == part.index).all()
    assert (f.dtypes == np.float64).all()
    m = feature_matrix(part)
    assert m.dtype == np.float32 and m.shape == (1200, 27) and m.flags.c_contiguous
    np.testing.assert_array_equal(m, f.to_numpy(np.float32))
    empty = compute_features(fil.iloc[:0])
    assert empty.shape == (0, 27)
    sf = StreamingFeatures.from_history(fil.iloc[:0])
    assert sf.count == 0 and not sf.ready


def test_mapping_of_arrays_equals_frame(fil, fil_records, fil_features):
    """The pandas-free input (column → numpy array, open_time int64 epoch ms) gives the frame's bits."""
    from pipelines.features import arrays_from_records

    arrays = arrays_from_records(fil_records[:3000])
    assert arrays["open_time"].dtype == np.int64 and arrays["close"].dtype == np.float64
    np.testing.assert_array_equal(feature_matrix(arrays), feature_matrix(fil.iloc[:3000]))
    frame = compute_features(arrays)
    assert list(frame.columns) == CORE27 and list(frame.index) == list(range(3000))
    np.testing.assert_array_equal(frame.to_numpy(), fil_features[:3000])
    a = StreamingFeatures.from_history(arrays, interval_ms=60_000)
    b = StreamingFeatures.from_history(fil.iloc[:3000])
    assert a.count == b.count == 3000 and a.ready and a.last_open_time == b.last_open_time
    for r in fil_records[3000:3100]:
        np.testing.assert_array_equal(a.update(r), b.update(r))
    with_interval = StreamingFeatures.from_history({**arrays, "interval": np.array(["1m"] * 3000)})
    assert with_interval.interval_ms == 60_000
    dt = {**arrays, "open_time": arrays["open_time"].astype("datetime64[ms]")}  # naive datetime64 = UTC
    np.testing.assert_array_equal(feature_matrix(dt), feature_matrix(arrays))
    spread = arrays_from_records([{**r, "spread_bps": None} for r in fil_records[:40]])["spread_bps"]
    assert np.isnan(spread).all()


def test_mapping_input_errors(fil_records):
    from pipelines.features import arrays_from_records

    arrays = arrays_from_records(fil_records[:50])
    with pytest.raises(FeatureError, match=r"lacks columns \['volume'\]"):
        feature_matrix({k: v for k, v in arrays.items() if k != "volume"})
    with pytest.raises(FeatureError, match="strictly increasing"):
        feature_matrix({**arrays, "open_time": arrays["open_time"][::-1].copy()})
    bad = arrays["close"].copy()
    bad[7] = np.nan
    with pytest.raises(FeatureError, match="close at row 7"):
        feature_matrix({**arrays, "close": bad})
    with pytest.raises(FeatureError, match="one symbol"):
        feature_matrix({**arrays, "symbol": np.array(["A"] * 25 + ["B"] * 25)})
    with pytest.raises(FeatureError, match="open_time array has dtype float64"):
        feature_matrix({**arrays, "open_time": arrays["open_time"].astype(float)})
    with pytest.raises(StreamError, match="gap"):
        StreamingFeatures.from_history({k: np.delete(v, 20) for k, v in arrays.items()}, interval_ms=60_000)


def test_serving_import_stays_small():
    code = (
        "import sys, pipelines.features, pipelines.contracts.bundle; "
        "import pipelines.contracts.schema, pipelines.features.streaming; "
        "heavy = ('mlflow', 'torch', 'great_expectations', 'scipy', 'lightgbm', 'sklearn', 'pandas', 'pyarrow'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
