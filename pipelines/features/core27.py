"""core27: the 27 features of the `002_*` seed (11 raw + 16 derived), as one kernel.

The kernel computes the features of new rows [lo, hi) of a work matrix X (series x time) whose
columns before `lo` hold the context: at least `LAGS` earlier candles (or pad values at the start
of a history). Batch calls it over the whole history in chunks; streaming calls it for one column
of a ring buffer. Same code, same float operations, so the two agree bit for bit.

Definitions (t = candle index, candles <= t only):
- raw: the 9 numeric candle fields; spread_bps = 0.0 where the feed has none (NaN in the candle
  frame: only a book feed gives a spread, and a model input cannot be NaN); taker_buy_ratio =
  taker_buy_base / volume (0 when volume is 0, as in `pipelines.contracts.schema`).
- log_return_k = ln(close[t] / close[t-k]), k = 1, 5, 15.
- volatility_n = population std (ddof=0) of log_return_1 over the last n, two-pass (mean, then
  mean squared deviation) so flat windows give exactly 0.
- sma_n_norm = (close - SMA_n) / close; ema_n_norm = (close - EMA_n) / close with EMA alpha
  2/(n+1), adjust=False, seeded with the first close.
- rsi_14 = Wilder RSI / 100: average gain/loss recursive with alpha 1/14 over close diffs, seeded
  at the first diff; avg_gain / (avg_gain + avg_loss), 0.5 when both are 0.
- volume_sma_ratio = volume / SMA20(volume), 1.0 when the SMA is 0.
- vwap_deviation = (close - VWAP30) / close, VWAP30 = sum(quote volume) / sum(volume) over the
  last 30 (close when the volume sum is 0).
- price_position = (close - low) / (high - low), 0.5 when high == low.

Window sums are cumulative sums over lags, newest first (one sequential add per lag), so a window
sum never depends on where a history started or how it was chunked.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.features._ewm import Ewm

NAME = "core27"
VERSION = 1

# fmt: skip on RAW, DERIVED, INPUTS, _SUMS: packed, the 27 names read in the seed's table order and
# the X rows / window sums line up by position; one item per line (the formatter's choice) hides both.
RAW = (
    "open", "high", "low", "close", "volume", "quote_asset_volume", "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume", "number_of_trades", "spread_bps", "taker_buy_ratio",
)  # fmt: skip
DERIVED = (
    "log_return_1m", "log_return_5m", "log_return_15m", "volatility_5m", "volatility_15m", "volatility_30m",
    "sma_5_norm", "sma_15_norm", "sma_30_norm", "ema_5_norm", "ema_15_norm", "ema_30_norm", "rsi_14",
    "volume_sma_ratio", "vwap_deviation", "price_position",
)  # fmt: skip
NAMES: tuple[str, ...] = RAW + DERIVED
_F = {n: i for i, n in enumerate(NAMES)}

# Rows of the work matrix X: the raw fields in feature order, with the kernel's scratch row
# log_return_1m after quote volume, so close/volume/quote volume/log_return_1m are equally spaced
# (one strided lag view covers them) and the raw features copy out as two slices.
INPUTS: tuple[str | None, ...] = (  # candle field of each X row; None = written by the kernel
    "open", "high", "low", "close", "volume", "quote_asset_volume", None, "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume", "number_of_trades", "spread_bps",
)  # fmt: skip
X_HIGH, X_LOW, X_CLOSE, X_VOLUME, X_QAV, X_LR1, X_TBB = 1, 2, 3, 4, 5, 6, 7
N_ROWS = len(INPUTS)
# Value of X in the pad columns before a history's first candle: finite, so that masked-out window
# terms stay exact zeros; the features of those rows are masked NaN anyway.
PAD_VALUES = np.array([0.0 if n is None else 1.0 for n in INPUTS])

LAGS = 30  # longest window (30 candles); log_return_15m reaches lag 15 < 30
# The 9 window sums: (X row, window length) → S[0..8]
_SUMS = ((X_CLOSE, 5), (X_CLOSE, 15), (X_CLOSE, 30), (X_VOLUME, 20), (X_VOLUME, 30), (X_QAV, 30),
         (X_LR1, 5), (X_LR1, 15), (X_LR1, 30))  # fmt: skip
_SUM_ROW = np.array([r - X_CLOSE for r, _ in _SUMS])  # series index within the lag view
_SUM_LAG = np.array([n - 1 for _, n in _SUMS])
_N3 = np.array([5.0, 15.0, 30.0])[:, None]  # (3, 1) window lengths of sma_* and volatility_*
_VOL_LAG = np.array([4, 14, 29])
_I3 = np.arange(3)
_CLOSE_HIGH = np.array([X_CLOSE, X_HIGH])
_VOLUME_AT = (np.array([1, 0]), np.array([1, 2]))
_RATIO_DEFAULT = np.array([[0.5], [0.0], [1.0], [0.5]])
_RATIO_OUT = np.array([_F["rsi_14"], _F["taker_buy_ratio"], _F["volume_sma_ratio"], _F["price_position"]])
# (close, previous close) → EWM inputs (close x3, diff, -diff); max(., 0) then gives gain and loss.
# Products by 0/±1 are exact and each row has one real add, so any matmul kernel gives the same bits.
_EWM_IN = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, -1.0], [-1.0, 1.0]])
_LR_LAGS = np.array([1, 5, 15])

EMA_SPANS = (5, 15, 30)
RSI_PERIOD = 14
# EMA/RSI depend on the whole history through the seed; its weight after k rows is (1-alpha)^k.
# A value is reported (not NaN) once that weight is below SEED_RESIDUAL: the seed's effect is then
# below double rounding, so a value does not depend on where its history started (tests measure it).
SEED_RESIDUAL = 1e-16
_ALPHAS = np.array([2.0 / (n + 1) for n in EMA_SPANS] + [1.0 / RSI_PERIOD] * 2)  # (5,): 3 EMAs, gain, loss


def _seed_rows(alpha: float) -> int:
    """Rows after which the seed's weight (1-alpha)^k is below SEED_RESIDUAL."""
    return math.ceil(math.log(SEED_RESIDUAL) / math.log(1.0 - alpha))


def first_valid() -> np.ndarray:
    """(27,) int: the first candle index t at which each feature is defined (NaN before)."""
    fv = np.zeros(len(NAMES), dtype=np.int64)
    for k in (1, 5, 15):
        fv[_F[f"log_return_{k}m"]] = k
    for n in (5, 15, 30):
        fv[_F[f"volatility_{n}m"]] = n  # n log returns, the first at t=1
        fv[_F[f"sma_{n}_norm"]] = n - 1
        fv[_F[f"ema_{n}_norm"]] = _seed_rows(2.0 / (n + 1))  # EMA rows start at t=0
    fv[_F["rsi_14"]] = 1 + _seed_rows(1.0 / RSI_PERIOD)  # the RSI recursion starts at the first diff
    fv[_F["volume_sma_ratio"]] = 19
    fv[_F["vwap_deviation"]] = 29
    return fv


def new_state() -> Ewm:
    """Carried state: the EMA/RSI recursions (the windows' state is the context columns of X)."""
    return Ewm(_ALPHAS)


def lag_view(X: np.ndarray, row: int, n_series: int, lo: int, hi: int, lags: int) -> np.ndarray:
    """(lags, n_series, hi-lo) view, newest first: [j, r, m] = X[row+r, lo+m-j].

    X must be C-contiguous and lo >= lags-1 (the pad columns guarantee it). A raw ndarray over X's
    buffer: ~3x cheaper per call than as_strided/sliding_window_view, which matters per candle.
    """
    return np.ndarray(
        shape=(lags, n_series, hi - lo),
        dtype=np.float64,
        buffer=X,
        offset=(row * X.shape[1] + lo) * X.itemsize,
        strides=(-X.itemsize, X.strides[0], X.itemsize),
    )


def cumsum_lags(T: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Cumulative sum over axis 0 (lags) of T (lags, R, M): one sequential add per lag and lane.

    np.add.accumulate is one call (the streaming case, M = 1) but walks lane by lane, ~15x slower on wide
    batches than adding whole lag planes; both add in the same order, so the bits are identical.
    """
    if T.shape[2] <= 8:
        return np.add.accumulate(T, axis=0)
    out = T if inplace else np.empty(T.shape)
    if not inplace:
        out[0] = T[0]
    for j in range(1, T.shape[0]):
        np.add(out[j - 1], T[j], out=out[j])
    return out


def sum_lags(T: np.ndarray) -> np.ndarray:
    """Sum over axis 0 (lags) of T (n, R, M), newest first, one sequential add per lag: the last plane of
    `cumsum_lags` without keeping the others (same adds in the same order, so the same bits)."""
    if T.shape[2] <= 8:
        return np.add.accumulate(T, axis=0)[-1]
    s = T[0].copy()
    for j in range(1, T.shape[0]):
        s += T[j]
    return s


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, ewm: Ewm, out: np.ndarray) -> None:
    """Write core27 of columns [lo, hi) of X into out (27, hi-lo); advances `ewm`.

    Args:
        X: (N_ROWS, W) float64 C-contiguous work matrix; columns [lo-LAGS, lo) hold the context.
            Writes the X_LR1 row of the new columns.
        lo, hi: the new columns.
        t0: candle index (from the start of the history) of column lo; rows with t0 + m below a
            feature's `first_valid` get finite garbage here and are masked NaN by the caller.
        ewm: the EMA/RSI state, seeded on the history's second candle.
        out: (27, hi-lo) float64, fully overwritten.
    """
    M = hi - lo
    if M == 1 and t0 > 0 and ewm.Y is not None and ONE_CANDLE:
        return _kernel_one(X, lo, ewm, out)
    c = X[X_CLOSE, lo:hi]  # (M,)
    V = lag_view(X, X_CLOSE, 4, lo, hi, LAGS)  # (LAGS, 4, M): close, volume, quote volume, log_return_1m
    V_LR1 = X_LR1 - X_CLOSE
    np.log(c / V[_LR_LAGS, 0], out=out[11:14])  # (3, M) log returns over 1/5/15 candles
    X[X_LR1, lo:hi] = out[11]
    out[0:6] = X[0:6, lo:hi]
    out[6:10] = X[7:11, lo:hi]
    sp = out[9]
    np.copyto(sp, 0.0, where=np.isnan(sp))
    S = cumsum_lags(V)[_SUM_LAG, _SUM_ROW]  # (9, M) window sums
    D = V[:, V_LR1, None] - S[6:9] / _N3  # (LAGS, 3, M): deviations from the 5/15/30 means
    D *= D
    np.sqrt(cumsum_lags(D, inplace=True)[_VOL_LAG, _I3] / _N3, out=out[14:17])
    ref = out[17:23]  # (6, M): SMA 5/15/30 then EMA 5/15/30, normalised below
    np.divide(S[0:3], _N3, out=ref[0:3])
    # EMA and RSI rows start at the second candle (the first diff); the first close seeds the EMAs
    a = 1 if t0 == 0 else 0  # column lo is the first candle of the history: no diff yet
    if a:
        ref[3:6, 0] = c[0]
    if a < M:
        xin = np.maximum(_EWM_IN @ V[0:2, 0, a:], 0.0)  # (5, M'): close x3, gain, loss
        if ewm.Y is None:
            ewm.seed(np.array([X[X_CLOSE, lo + a - 1]] * 3 + [xin[3, 0], xin[4, 0]]))
        y = ewm(xin)  # (5, M')
        ref[3:6, a:] = y[0:3]
    np.divide(c - ref, c, out=ref)
    # Guarded ratios num/den (default where den == 0), all in one divide (fewer calls per candle):
    #   0 rsi_14            avg_gain / (avg_gain + avg_loss)        0.5
    #   1 taker_buy_ratio   taker_buy_base / volume                 0.0
    #   2 volume_sma_ratio  volume / SMA20(volume)                  1.0
    #   3 price_position    (close - low) / (high - low)            0.5
    #   4 VWAP30            sum30(quote volume) / sum30(volume)     close
    nd = np.empty((2, 5, M))  # numerators, denominators
    if a:
        nd[:, 0, 0] = 0.0  # no diff yet: rsi 0.5, masked anyway
    if a < M:
        nd[0, 0, a:] = y[3]
        np.add(y[3], y[4], out=nd[1, 0, a:])
    nd[0, 1] = X[X_TBB, lo:hi]
    nd[_VOLUME_AT] = X[X_VOLUME, lo:hi]  # den of 1, num of 2
    np.divide(S[3], 20.0, out=nd[1, 2])
    np.subtract(X[_CLOSE_HIGH, lo:hi], X[X_LOW, lo:hi], out=nd[:, 3])
    nd[:, 4] = S[5:3:-1]
    r = np.empty((5, M))
    r[0:4] = _RATIO_DEFAULT
    r[4] = c
    np.divide(nd[0], nd[1], out=r, where=nd[1] != 0)
    out[_RATIO_OUT] = r[0:4]
    np.divide(c - r[4], c, out=out[25])  # vwap_deviation


# The streaming case (one new column, EMA/RSI already seeded) has its own path: the general kernel
# spends ~25 µs there in ~35 numpy calls on 1-wide arrays (~0.7 µs each, whatever the size). This
# path keeps the three vector steps in numpy (the 3 logs, the 9 window sums, the 3 volatilities; same
# calls on the same values in the same order) and does the ~40 scalar ops in Python floats: IEEE
# binary64 like numpy's, one rounding per op, in the same order, so the bits are the same
# (tests/unit/test_serving_fastpath.py checks it on real candles; the EMA/RSI step is `Ewm.step`).
# False = always the general kernel (the benchmark's "before").
ONE_CANDLE = True
_SUM_LAG_ONE = _SUM_LAG.copy()  # (9,) lag of each window sum's last term (window length - 1)
_N3_ONE = _N3[:, 0].copy()  # (3,) 5, 15, 30
_LR_AT = LAGS - 1 - _LR_LAGS  # (3,) columns of close at lags 1, 5, 15 within the last LAGS columns


def _kernel_one(X: np.ndarray, p: int, ewm: Ewm, out: np.ndarray, keep: list[int] | None = None) -> None:
    """`kernel` for the one column p of a seeded history (t0 > 0): the same values, bit for bit.
    `keep`: write only these features, in this order (core18's rows of core27)."""
    w = X[X_CLOSE : X_LR1 + 1, p - LAGS + 1 : p + 1]  # (4, LAGS) close, volume, qav, lr1; oldest first
    col = X[:, p].tolist()  # this candle's raw fields (the X_LR1 entry is not written yet)
    c = col[X_CLOSE]
    lr = np.log(c / w[0, _LR_AT])  # (3,) log returns over 1/5/15 candles
    X[X_LR1, p] = lr[0]
    cs = np.add.accumulate(w[:, ::-1], axis=1)  # (4, LAGS) window sums, newest first, one add per lag
    S = cs[_SUM_ROW, _SUM_LAG_ONE]  # (9,)
    D = w[3, ::-1, None] - S[6:9] / _N3_ONE  # (LAGS, 3) deviations from the 5/15/30 means
    D *= D
    vol = np.sqrt(np.add.accumulate(D, axis=0)[_VOL_LAG, _I3] / _N3_ONE)  # (3,)
    s = S.tolist()
    cp = X[X_CLOSE, p - 1].item()
    # EMA x3, gain, loss: the rows of the general kernel's max(_EWM_IN @ [c, cp], 0)
    y = ewm.step([c, c, c, max(c - cp, 0.0), max(cp - c, 0.0)])
    gain, den_rsi = y[3], y[3] + y[4]
    volume, high, low = col[X_VOLUME], col[X_HIGH], col[X_LOW]
    sma_vol = s[3] / 20.0
    hl = high - low
    spread = col[10]
    vwap = s[5] / s[4] if s[4] != 0 else c
    vals = [
        col[0], high, low, c, volume, col[X_QAV],  # open, high, low, close, volume, quote volume
        col[7], col[8], col[9], 0.0 if spread != spread else spread,  # taker buys, trades, spread
        col[X_TBB] / volume if volume != 0 else 0.0,  # taker_buy_ratio
        *lr.tolist(), *vol.tolist(),
        (c - s[0] / 5.0) / c, (c - s[1] / 15.0) / c, (c - s[2] / 30.0) / c,  # sma_n_norm
        (c - y[0]) / c, (c - y[1]) / c, (c - y[2]) / c,  # ema_n_norm
        gain / den_rsi if den_rsi != 0 else 0.5,  # rsi_14
        volume / sma_vol if sma_vol != 0 else 1.0,  # volume_sma_ratio
        (c - vwap) / c,  # vwap_deviation
        (c - low) / hl if hl != 0 else 0.5,  # price_position
    ]  # fmt: skip
    out[:, 0] = vals if keep is None else [vals[i] for i in keep]
