"""pipelines.features.ta: TA-Lib oracle, streaming == batch, no look-ahead, from_history, flat candles.

Real data: FILUSDT 1m 2023-08 from ../shared/data (read in place), the first 20,000 candles.

Oracle (TA-Lib, a test dependency): each indicator is compared from its `first_valid` row on, where
our recursions' seeds weigh < 1e-16; TA-Lib seeds its EMAs / Wilder averages differently (SMA of the
first n values, at its own lookback index <= 33), and by our first valid row that seed has decayed
too: by (13/14)^485 ~ 2e-16 at the earliest (ATR: seeded at 14, compared from 499); every other
recursion is compared later still, relative to its seed. Tolerance rtol=1e-6 (required); the atol
of each comparison is the absolute rounding level where a value crosses or sits at zero (MACD lines,
%B near the lower band, %D / MFI at 0, CCI where tp == SMA): TA-Lib's running sums (its SMA, BBANDS
variance, MFI and OBV sums add and subtract as the window slides) leave residues of 1e-16..1e-11
where an exact computation gives 0, and a relative error against 0 means nothing. Rows where TA-Lib
and we define a 0/0 differently are excluded (at most 10% of rows; none in this data): STOCHF gives
0 when HH == LL (ours 0.5).

Streaming vs batch from the same history start is bit-identical (asserted as such); from_history on a
`warmup` window agrees to rtol=1e-9 plus atol=1e-12 (values normalised by close are absolute
rounding ~1e-16 where they cross zero, as in tests/unit/test_features.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import talib

from pipelines.features import StreamingFeatures, compute_features, core27, get_feature_set, ta
from tests.conftest import FIL_FILES

TA = [
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_position_20",
    "bb_width_20",
    "stoch_k_14",
    "stoch_d_3",
    "atr_14_norm",
    "mfi_14",
    "adx_14",
    "cci_20",
    "obv_slope_20",
    "wt1",
    "wt2",
    "wt_cross",
    "cipher_mf",
]
N_REAL = 20000
FV = dict(zip(TA, ta.first_valid().tolist(), strict=True))
RTOL = 1e-6  # TA-Lib agreement required; observed <= 1e-7 (near zero crossings), mostly <= 1e-12


@pytest.fixture(scope="module")
def fil(shared_data) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:N_REAL].reset_index(drop=True)


@pytest.fixture(scope="module")
def ohlcv(fil) -> dict[str, np.ndarray]:
    return {k: fil[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")}


@pytest.fixture(scope="module")
def ours(fil) -> pd.DataFrame:
    return compute_features(fil, "ta")


@pytest.fixture(scope="module")
def records(fil) -> list[dict]:
    df = fil.copy()
    df["open_time"] = df["open_time"].astype("datetime64[ms, UTC]").astype("int64")
    return df.to_dict("records")


def assert_oracle(name: str, got: np.ndarray, want: np.ndarray, start: int, atol: float, keep=None) -> float:
    """got == want from row `start` on (rtol=RTOL, atol), rows where `keep` is False excluded; returns the
    largest relative error over rows with |want| > 1e3 * atol (where a relative error means something)."""
    rows = np.arange(start, got.size)
    if keep is not None:
        rows = rows[keep[start:]]
    assert rows.size > 0.9 * (got.size - start), f"{name}: too many rows excluded"
    assert np.isfinite(want[rows]).all(), f"{name}: TA-Lib undefined in a compared row"
    np.testing.assert_allclose(got[rows], want[rows], rtol=RTOL, atol=atol, err_msg=name)
    big = rows[np.abs(want[rows]) > 1e3 * atol]
    return float(np.max(np.abs(got[big] - want[big]) / np.abs(want[big])))


# ----------------------------------------------------------------------------------- the spec


def test_feature_set_spec():
    fs = get_feature_set("ta")
    assert fs.name == "ta" and fs.version == 1 and list(fs.names) == TA
    assert FV == {
        "macd": 479, "macd_signal": 645, "macd_hist": 645, "bb_position_20": 19, "bb_width_20": 19,
        "stoch_k_14": 13, "stoch_d_3": 15, "atr_14_norm": 499, "mfi_14": 14, "adx_14": 997, "cci_20": 19,
        "obv_slope_20": 20, "wt1": 553, "wt2": 555, "wt_cross": 555, "cipher_mf": 59,
    }  # fmt: skip
    assert fs.warmup == 998
    # each recursion's seed weighs < 1e-16 at its first valid row (chained stages add up)
    assert (
        (25 / 27) ** 479 < 1e-16
        and 0.8**166 < 1e-16
        and (11 / 13) ** 221 < 1e-16
        and (13 / 14) ** 498 < 1e-16
    )
    both = get_feature_set("core27+ta")
    assert both.names == get_feature_set("core27").names + fs.names and both.warmup == 998


def test_nan_exactly_before_first_valid(ours):
    for name in TA:
        col = ours[name].to_numpy()
        assert np.isnan(col[: FV[name]]).all(), f"{name}: values before its first valid row"
        assert np.isfinite(col[FV[name] :]).all(), f"{name}: NaN after its first valid row"


# ------------------------------------------------------------------------------ TA-Lib oracle


def test_macd_matches_talib(ours, ohlcv):
    c = ohlcv["close"]
    line, signal, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    # MACD / close is ~1e-4; EMA rounding is ~1e-16 of the price, so ~1e-15 absolute near a crossing
    for name, ref in (("macd", line), ("macd_signal", signal), ("macd_hist", hist)):
        assert_oracle(name, ours[name].to_numpy(), ref / c, FV[name], atol=1e-13)


def test_bollinger_matches_talib(ours, ohlcv):
    c = ohlcv["close"]
    upper, middle, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    pct = (c - lower) / np.where(upper > lower, upper - lower, np.nan)
    # TA-Lib's variance is E[x^2] - E[x]^2 over running sums: its %B carries ~1e-11 absolute error
    assert_oracle(
        "bb_position_20", ours["bb_position_20"].to_numpy(), pct, 19, atol=1e-10, keep=upper > lower
    )
    assert_oracle("bb_width_20", ours["bb_width_20"].to_numpy(), (upper - lower) / middle, 19, atol=1e-13)


def test_stochastic_matches_talib(ours, ohlcv):
    h, low, c = ohlcv["high"], ohlcv["low"], ohlcv["close"]
    k, d = talib.STOCHF(h, low, c, fastk_period=14, fastd_period=3, fastd_matype=0)
    flat = talib.MAX(h, 14) == talib.MIN(low, 14)  # TA-Lib's %K is 0 there, ours 0.5 (documented default)
    flat_d = flat | np.roll(flat, 1) | np.roll(flat, 2)
    # (STOCHF reports %K from 15 on, with its %D; ours from 13: test_nan_exactly_before_first_valid)
    assert_oracle("stoch_k_14", ours["stoch_k_14"].to_numpy(), k / 100, 15, atol=1e-14, keep=~flat)
    # TA-Lib's %D is a running-sum SMA: ~1e-15 residues where %K has been 0 three times
    assert_oracle("stoch_d_3", ours["stoch_d_3"].to_numpy(), d / 100, 15, atol=1e-13, keep=~flat_d)


def test_atr_adx_match_talib(ours, ohlcv):
    h, low, c = ohlcv["high"], ohlcv["low"], ohlcv["close"]
    # Wilder recursions over non-negative inputs: a few ulps apart, no cancellation (atol 0)
    atr = talib.ATR(h, low, c, 14) / c
    assert_oracle("atr_14_norm", ours["atr_14_norm"].to_numpy(), atr, FV["atr_14_norm"], atol=0.0)
    assert_oracle("adx_14", ours["adx_14"].to_numpy(), talib.ADX(h, low, c, 14) / 100, FV["adx_14"], atol=0.0)


def test_mfi_cci_obv_match_talib(ours, ohlcv):
    h, low, c, v = ohlcv["high"], ohlcv["low"], ohlcv["close"], ohlcv["volume"]
    # MFI: TA-Lib's sliding sums leave ~1e-16 where every tp change in the window is of one sign
    assert_oracle("mfi_14", ours["mfi_14"].to_numpy(), talib.MFI(h, low, c, v, 14) / 100, 14, atol=1e-12)
    # CCI / 100: where tp equals its SMA TA-Lib returns exactly 0 and we a rounding residue ~1e-11
    assert_oracle("cci_20", ours["cci_20"].to_numpy(), talib.CCI(h, low, c, 20) / 100, 19, atol=1e-10)
    obv = talib.OBV(c, v)
    slope = (obv - np.roll(obv, 20)) / talib.SUM(v, 20)
    assert_oracle("obv_slope_20", ours["obv_slope_20"].to_numpy(), slope, 20, atol=1e-12)


def test_core27_rsi_sma_ema_match_talib(fil, ohlcv):
    c = ohlcv["close"]
    f = compute_features(fil, "core27")
    fv = dict(zip(core27.NAMES, core27.first_valid().tolist(), strict=True))
    assert_oracle("rsi_14", f["rsi_14"].to_numpy(), talib.RSI(c, 14) / 100, fv["rsi_14"], atol=0.0)
    for n in (5, 15, 30):
        # (c - MA) / c crosses zero: ~1e-16 absolute rounding of MA / c (TA-Lib's SMA: running sums)
        sma = (c - talib.SMA(c, n)) / c
        assert_oracle(f"sma_{n}_norm", f[f"sma_{n}_norm"].to_numpy(), sma, fv[f"sma_{n}_norm"], atol=1e-13)
        ema = (c - talib.EMA(c, n)) / c
        assert_oracle(f"ema_{n}_norm", f[f"ema_{n}_norm"].to_numpy(), ema, fv[f"ema_{n}_norm"], atol=1e-13)


def test_wavetrend_and_cipher_mf_match_pandas_reference(ours, fil):
    """No TA-Lib oracle: VuManChu Cipher B's formulas written independently with pandas ewm/rolling."""
    h, low, c, o = fil["high"], fil["low"], fil["close"], fil["open"]
    ap = (h + low + c) / 3
    esa = ap.ewm(span=9, adjust=False).mean()
    d = (ap - esa).abs().ewm(span=9, adjust=False).mean()
    ci = ((ap - esa) / (0.015 * d)).where(d > 1e-12 * ap, 0.0)
    wt1 = ci.ewm(span=12, adjust=False).mean()
    wt2 = wt1.rolling(3).mean()
    body = ((c - o) / (h - low)).where(h > low, 0.0)
    mf = (body * 150).rolling(60).mean() - 2.5
    # ci is a ratio of a deviation (~1e-3 of price) to its mean: ~1e-13 relative; values cross zero
    for name, ref in (
        ("wt1", wt1 / 100),
        ("wt2", wt2 / 100),
        ("wt_cross", (wt1 - wt2) / 100),
        ("cipher_mf", mf),
    ):
        assert_oracle(name, ours[name].to_numpy(), ref.to_numpy(), FV[name], atol=1e-10)


def test_bounded_ranges(ours):
    w = get_feature_set("ta").warmup
    f = ours.iloc[w:]
    for name in ("stoch_k_14", "stoch_d_3", "mfi_14", "adx_14"):
        assert f[name].between(0, 1).all(), name
    assert f["obv_slope_20"].between(-1, 1).all() and f["cipher_mf"].between(-152.5, 147.5).all()
    assert f["wt1"].abs().max() <= 1 / (0.015 * 0.2) / 100 and f["cci_20"].abs().max() <= 20 / 3
    assert (f["bb_width_20"] >= 0).all() and (f["atr_14_norm"] > 0).all()


# ------------------------------------------------------------------------ streaming == batch


@pytest.mark.parametrize("feature_set,n", [("ta", 12000), ("core27+ta", 10500)])
def test_stream_equals_batch_every_step(fil, records, feature_set, n):
    """Real candles one at a time from the first: every feature at every step, bit for bit (the ring
    wraps twice, the batch crosses a chunk boundary at 8192)."""
    want = compute_features(fil.iloc[:n], feature_set).to_numpy()
    sf = StreamingFeatures(feature_set, interval_ms=60_000)
    got = np.empty_like(want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings on the serving path
        for i in range(n):
            got[i] = sf.update(records[i])
    np.testing.assert_array_equal(got, want)  # NaN == NaN during warm-up
    assert np.isfinite(got[sf.feature_set.warmup - 1 :]).all()


# ------------------------------------------------------------------------- no look-ahead


def test_no_look_ahead(fil, ours):
    """Features of candles[:cut] equal the first `cut` rows of the full history's, NaN included."""
    full = ours.to_numpy()
    rng = np.random.default_rng(7)
    cuts = np.concatenate([[1, 2, 20, 998, 8193], rng.integers(2, N_REAL, size=5)])
    for cut in cuts:
        part = compute_features(fil.iloc[:cut], "ta").to_numpy()
        np.testing.assert_array_equal(part, full[:cut], err_msg=f"prefix of {cut}")


def test_future_candles_do_not_change_the_past(fil, ours):
    spoiled = fil.copy()
    spoiled.loc[3000:, ["open", "high", "low", "close"]] *= 3.0
    spoiled.loc[3000:, "volume"] = 0.0
    np.testing.assert_array_equal(compute_features(spoiled, "ta").to_numpy()[:3000], ours.to_numpy()[:3000])


# --------------------------------------------------------------------------- from_history


@pytest.mark.parametrize("feature_set", ["ta", "core27+ta"])
def test_from_history_window_gives_the_full_history_row(fil, records, feature_set):
    w = get_feature_set(feature_set).warmup
    full = compute_features(fil.iloc[: 9000 + w + 500], feature_set).to_numpy()
    for start in (1500, 9000):
        window = fil.iloc[start : start + w]
        sf = StreamingFeatures.from_history(window, feature_set)
        assert sf.ready and sf.count == w
        last = compute_features(window, feature_set).to_numpy()[-1]
        assert np.isfinite(last).all()
        np.testing.assert_allclose(last, full[start + w - 1], rtol=1e-9, atol=1e-12)
        got = np.array([sf.update(r) for r in records[start + w : start + w + 300]])
        np.testing.assert_allclose(got, full[start + w : start + w + 300], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- flat candles


def flat_stretch(fil: pd.DataFrame, a: int, b: int) -> pd.DataFrame:
    """Candles [a, b) made flat: o = h = l = c = the close before, volume (and its splits) 0."""
    df = fil.copy()
    price = df.loc[a - 1, "close"]
    df.loc[a : b - 1, ["open", "high", "low", "close"]] = price
    zero = ["volume", "quote_asset_volume", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"]
    df.loc[a : b - 1, zero] = 0.0
    df.loc[a : b - 1, "number_of_trades"] = 0
    return df


def test_flat_candles_give_finite_values(fil):
    a, b = 1500, 3000  # 1,500 flat candles, then real ones again
    df = flat_stretch(fil.iloc[:4000].reset_index(drop=True), a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = compute_features(df, "ta")
        sf = StreamingFeatures.from_history(df.iloc[:1200], "ta")
        streamed = np.array([sf.update(r) for r in df.iloc[1200:3200].to_dict("records")])
    w = get_feature_set("ta").warmup
    assert np.isfinite(f.iloc[w - 1 :].to_numpy()).all()
    np.testing.assert_allclose(streamed, f.iloc[1200:3200].to_numpy(), rtol=1e-9, atol=1e-12)
    late = f.iloc[a + 60 : b]  # every window (<= 60) inside the flat stretch: the documented defaults
    for name, value in (
        ("bb_position_20", 0.5), ("bb_width_20", 0.0), ("stoch_k_14", 0.5), ("stoch_d_3", 0.5),
        ("mfi_14", 0.5), ("cci_20", 0.0), ("obv_slope_20", 0.0), ("cipher_mf", -2.5),
    ):  # fmt: skip
        assert (late[name] == value).all(), name
    # recursions decay towards their flat limits: no trend, no range, ci 0 once d is at rounding level
    end = f.iloc[b - 1]
    assert abs(end["macd"]) < 1e-15 and abs(end["macd_hist"]) < 1e-15 and end["atr_14_norm"] < 1e-30
    assert abs(end["wt1"]) < 1e-30 and abs(end["wt_cross"]) < 1e-30 and 0 <= end["adx_14"] <= 1


def test_all_flat_history(fil):
    """A history that is flat from its first candle: finite from the warm-up on, with the defaults."""
    df = flat_stretch(fil.iloc[:1200].reset_index(drop=True), 1, 1200).iloc[1:].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = compute_features(df, "ta")
        sf = StreamingFeatures("ta")
        streamed = np.array([sf.update(r) for r in df.to_dict("records")])
    np.testing.assert_array_equal(streamed, f.to_numpy())
    w = get_feature_set("ta").warmup
    last = f.iloc[w - 1 :]
    assert np.isfinite(last.to_numpy()).all()
    for name in ("macd", "macd_signal", "macd_hist", "atr_14_norm", "adx_14", "wt1", "wt2", "wt_cross"):
        assert (last[name].abs() < 1e-15).all(), name
