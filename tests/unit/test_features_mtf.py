"""pipelines.features.mtf: pandas-resample reference, no look-ahead, streaming == batch, from_history.

Real data: FILUSDT 1m 2023-08 from ../shared/data (read in place), the first N_REAL candles.
Stream vs batch and prefix vs full history are asserted bit for bit (NaN in the same places).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.features import StreamingFeatures, compute_features, get_feature_set, mtf
from tests.conftest import FIL_FILES

N_REAL = 20000
TFS = (("5m", 5), ("15m", 15), ("1h", 60))
KINDS = ("log_return", "volatility", "rsi", "volume_ratio", "partial_return")
NAMES = [f"mtf_{tf}_{kind}" for tf, _ in TFS for kind in KINDS]
MTF_ONLY = np.array([i for i, n in enumerate(NAMES) if not n.endswith("partial_return")])


@pytest.fixture(scope="module")
def fil(shared_data) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:N_REAL].reset_index(drop=True)


@pytest.fixture(scope="module")
def fil_mtf(fil) -> np.ndarray:
    return compute_features(fil, "mtf").to_numpy()


@pytest.fixture(scope="module")
def fil_records(fil) -> list[dict]:
    df = fil.copy()
    df["open_time"] = df["open_time"].astype("datetime64[ms, UTC]").astype("int64")
    return df.to_dict("records")


def reference(df: pd.DataFrame) -> pd.DataFrame:
    """mtf written independently: pandas resample to bars, pandas rolling windows, merge_asof back."""
    m = pd.DataFrame({"close_time": df["open_time"] + pd.Timedelta(minutes=1), "close": df["close"]})
    out = pd.DataFrame(index=df.index)
    for tf, k in TFS:
        src = df.set_index("open_time")[["close", "volume"]]
        bars = src.resample(f"{k}min", label="left", closed="left").agg({"close": "last", "volume": "sum"})
        c, v = bars["close"], bars["volume"]
        lr = np.log(c / c.shift(1))
        diff = c.diff()
        gain = diff.clip(lower=0).rolling(14).mean()
        loss = (-diff).clip(lower=0).rolling(14).mean()
        vmean = v.rolling(20).mean()
        b = pd.DataFrame(
            {
                "bar_end": bars.index + pd.Timedelta(minutes=k),
                "bar_close": c.to_numpy(),
                "log_return": lr.to_numpy(),
                "volatility": lr.rolling(12).std(ddof=0).to_numpy(),
                "rsi": (gain / (gain + loss)).where(gain + loss > 0, 0.5).to_numpy(),
                "volume_ratio": (v / vmean).where(vmean != 0, 1.0).to_numpy(),
            }
        )
        j = pd.merge_asof(m, b, left_on="close_time", right_on="bar_end", direction="backward")
        for kind in KINDS[:4]:
            out[f"mtf_{tf}_{kind}"] = j[kind].to_numpy()
        out[f"mtf_{tf}_partial_return"] = np.log(j["close"] / j["bar_close"]).to_numpy()
    return out[NAMES]


# ----------------------------------------------------------------------------------- the spec


def test_spec_and_warmup():
    fs = get_feature_set("mtf")
    assert fs.name == "mtf" and fs.version == 1 and list(fs.names) == NAMES
    fv = dict(zip(NAMES, mtf.first_valid()))
    # n bars read → (n + 1) k - 2: the n-th complete bar when the history starts 1 min after a bar start
    assert fv["mtf_5m_log_return"] == 3 * 5 - 2 and fv["mtf_15m_volatility"] == 14 * 15 - 2
    assert fv["mtf_1h_rsi"] == 16 * 60 - 2 and fv["mtf_1h_volume_ratio"] == 21 * 60 - 2
    assert fv["mtf_5m_partial_return"] == 2 * 5 - 2
    assert fs.warmup == 21 * 60 - 1 == 1259
    assert mtf.LAGS >= 21 * 60 - 2  # deepest read: bar end t-59, 19 bars back, then that bar's 60 candles
    both = get_feature_set("core27+mtf")
    assert both.warmup == 1259 and len(both.names) == 27 + 15


# ------------------------------------------------------------------------ pandas reference


@pytest.mark.parametrize("drop", [0, 7])
def test_matches_pandas_resample_reference(fil, fil_mtf, drop):
    """Equal to pandas resample + rolling + merge_asof (rtol 1e-9) from first_valid on; NaN before."""
    df = fil.iloc[drop:].reset_index(drop=True)
    ours = fil_mtf[drop:] if drop == 0 else compute_features(df, "mtf").to_numpy()
    ref = reference(df).to_numpy()
    fv = mtf.first_valid()
    for j, name in enumerate(NAMES):
        col = ours[:, j]
        assert np.isnan(col[: fv[j]]).all(), f"{name}: values before first_valid"
        assert np.isfinite(col[fv[j] :]).all(), f"{name}: NaN after first_valid"
        np.testing.assert_allclose(col[fv[j] :], ref[fv[j] :, j], rtol=1e-9, atol=0, err_msg=name)


def test_hand_checked_bars():
    """Closes 1, 2, 3, ... one per minute from 00:00, volume 1 except 3 in the 2nd minute of each 5m bar."""
    n = 1300
    close = np.arange(1.0, n + 1)
    vol = np.where(np.arange(n) % 5 == 1, 3.0, 1.0)
    df = pd.DataFrame(
        {
            "open_time": pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC"),
            "close": close,
            "volume": vol,
        }
    )
    f = compute_features(df, "mtf")
    # t = 1000 (minute 1000 → its end 1001 ≡ 1 mod 5): the last 5m bar closed at candle 999, close 1000
    assert f.loc[1000, "mtf_5m_log_return"] == np.log(1000.0 / 995.0)
    assert f.loc[1000, "mtf_5m_partial_return"] == np.log(1001.0 / 1000.0)
    assert f.loc[999, "mtf_5m_partial_return"] == 0.0 and f.loc[1003, "mtf_5m_rsi"] == 1.0  # only gains
    assert f.loc[1000, "mtf_5m_volume_ratio"] == 1.0  # every 5m bar has volume 7
    # 1h: at t = 1259 (end of hour 20) the last bar closed here: close 1260 over 1200
    assert f.loc[1259, "mtf_1h_log_return"] == np.log(1260.0 / 1200.0)
    assert f.loc[1258, "mtf_1h_log_return"] == np.log(1200.0 / 1140.0)  # hour 21 still in progress
    assert np.isnan(f.loc[1257, "mtf_1h_volume_ratio"]) and f.loc[1258, "mtf_1h_volume_ratio"] == 1.0
    r = np.log(np.arange(1260.0, 1260 - 12 * 60, -60) / np.arange(1200.0, 1200 - 12 * 60, -60))
    assert np.isclose(f.loc[1259, "mtf_1h_volatility"], r.std(), rtol=1e-12)
    flat = compute_features(df.assign(close=5.0), "mtf")
    assert (flat.loc[1258:, ["mtf_1h_rsi", "mtf_5m_rsi"]].to_numpy() == 0.5).all()
    assert (flat.loc[1258:, ["mtf_1h_volatility", "mtf_15m_log_return"]].to_numpy() == 0.0).all()


# ------------------------------------------------------------------------- no look-ahead


def test_no_look_ahead_prefixes(fil, fil_mtf):
    """Features on candles[:t] equal the full history's rows < t, bit for bit (NaN in the same places)."""
    rng = np.random.default_rng(7)
    ts = np.concatenate([[1, 13, 1258, 1259, 1260, 8192, 8193, 8192 + 59], rng.integers(2, N_REAL, size=12)])
    for t in ts:
        part = compute_features(fil.iloc[:t], "mtf").to_numpy()
        np.testing.assert_array_equal(part, fil_mtf[:t], err_msg=f"prefix of {t}")


def test_future_candles_do_not_change_the_past(fil, fil_mtf):
    rng = np.random.default_rng(11)
    n = 6000
    for t in rng.integers(1300, n - 100, size=6):
        spoiled = fil.iloc[:n].copy()
        after = np.arange(n) > t
        for col in ("close", "volume", "open", "high", "low"):
            factor = rng.uniform(0.5, 2.0, size=after.sum())
            spoiled.loc[after, col] = spoiled.loc[after, col].to_numpy() * factor
        got = compute_features(spoiled, "mtf").to_numpy()
        np.testing.assert_array_equal(got[: t + 1], fil_mtf[: t + 1], err_msg=f"cut at {t}")
        assert not np.array_equal(got[t + 1 :], fil_mtf[t + 1 : n])  # the spoiling did change the future


def test_bar_in_progress_never_enters_closed_bar_features(fil, fil_mtf):
    """At t inside a bar, changing the in-progress bar's candles (e, t] changes only partial_return."""
    rng = np.random.default_rng(5)
    for tf_i, (_, k) in enumerate(TFS):
        for t in rng.integers(1300, 5000, size=4):
            d = (fil.loc[t, "open_time"].value // 60_000_000_000 + 1) % k
            if d == 0:
                t += 1
                d = 1
            spoiled = fil.iloc[: t + 1].copy()
            spoiled.loc[t - d + 1 :, ["close", "volume"]] *= 1.5
            got = compute_features(spoiled, "mtf").to_numpy()[t]
            closed = slice(5 * tf_i, 5 * tf_i + 4)
            np.testing.assert_array_equal(got[closed], fil_mtf[t, closed])
            assert got[5 * tf_i + 4] != fil_mtf[t, 5 * tf_i + 4]


# ------------------------------------------------------------------------ streaming == batch


@pytest.mark.parametrize(
    "feature_set,drop,n", [("mtf", 0, 12000), ("mtf", 7, 10000), ("core27+mtf", 0, 10000)]
)
def test_stream_equals_batch_every_step(fil, fil_records, feature_set, drop, n):
    """n real candles one at a time (from a bar start, or mid-bar): every feature, every step, bit for bit."""
    batch = compute_features(fil.iloc[drop : drop + n], feature_set).to_numpy()
    sf = StreamingFeatures(feature_set, interval_ms=60_000)
    got = np.array([sf.update(r) for r in fil_records[drop : drop + n]])
    np.testing.assert_array_equal(got, batch)
    w = sf.feature_set.warmup
    assert np.isfinite(got[w - 1 :]).all() and np.isnan(got[: w - 1]).any(axis=1).all()


@pytest.mark.parametrize("start", [0, 1, 7, 59, 2000, 9001])
def test_from_history_warmup_window(fil, fil_records, fil_mtf, start):
    """A window of `warmup` candles (any alignment) gives the full history's last row, then streams on."""
    w = get_feature_set("mtf").warmup
    window = fil.iloc[start : start + w]
    last = compute_features(window, "mtf").to_numpy()[-1]
    np.testing.assert_array_equal(last, fil_mtf[start + w - 1])
    sf = StreamingFeatures.from_history(window, "mtf")
    assert sf.ready and sf.count == w
    got = np.array([sf.update(r) for r in fil_records[start + w : start + w + 300]])
    np.testing.assert_array_equal(got, fil_mtf[start + w : start + w + 300])
