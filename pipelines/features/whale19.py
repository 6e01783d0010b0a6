"""whale19: the 19-input feature vector of the `000_*` seed (the whale-detection transformer), as one kernel.

Same engine as core27 (see its docstring): the kernel computes new columns [lo, hi) of a work matrix
X from those columns and the LAGS before them, plus the carried EMA/RSI recursions (`Ewm`); batch
and streaming run the same code and agree bit for bit.

From the seed (its README): the feature list in this order ("Feature Vector (19 dimensions)") and
the periods in the names: SMA(20), EMA(20), RSI(14), Volume SMA(20); nothing else (no window for
volatility/skewness/kurtosis, no MACD periods, no Bollinger definition). Everything else below is our
choice (marked "chosen"). "Upstream" is the public features.rs that README documents (read for
reference only): where it has a definition we say whether ours follows it or why not.

Definitions (t = candle index, candles <= t only, c = close):

 #  name             definition
 1  price            c (raw level: the seed keeps raw price levels)
 2  base_volume      volume (base asset); not "volume", which core27 already has ("core27+whale19")
 3  sma_20           mean of c over the last 20
 4  ema_20           EMA of c, alpha 2/21, adjust=False, seeded with the first close
 5  rsi_14w          Wilder RSI in [0, 100] (chosen: Wilder smoothing, where upstream averages the
                     last 14 changes; the 0-100 scale as upstream and talib, core27's rsi_14 is 0-1):
                     avg gain/loss recursive with alpha 1/14 over close diffs, seeded at the first
                     diff; 100 * gain / (gain + loss), 50 when both are 0
 6  bollinger_position_20   (c - lower) / (upper - lower), bands SMA20 -+ 2 population std (ddof=0) of c over
                     the last 20 (chosen k = 2, as upstream); = 0.5 + (c - SMA20) / (4 std), computed from
                     differences to the current close (exact), so all-equal closes give exactly 0.5
 7  macd_12_26       EMA12(c) - EMA26(c) (alphas 2/13, 2/27, seeded like ema_20); the MACD line only,
                     no signal line (chosen, as upstream)
 8  vwap_20          sum20(quote volume) / sum20(volume), c when the volume sum is 0 (chosen: the
                     candle's exact traded value; upstream's VWAP is cumulative since start, which would
                     make the value depend on where a history begins)
 9  volume_sma_20    mean of volume over the last 20
10  volume_ratio_20  volume / volume_sma_20, 1.0 when the SMA is 0 (upstream's definition; the same value
                     as core27's volume_sma_ratio)
11  spread           ask - bid (see "Book fields")
12  relative_spread  spread / mid, mid = (bid + ask) / 2
13  price_change_1m  (c[t] - c[t-1]) / c[t-1] (chosen: simple return, as upstream)
14  price_change_5m  (c[t] - c[t-5]) / c[t-5]
15  volatility_20    population std (ddof=0) of the last 20 one-candle log returns ln(c[t]/c[t-1])
                     (chosen window and returns: upstream uses simple returns over a 40-price buffer)
16  skewness_20      m3 / m2^1.5 of those 20 log returns (population central moments m_k)
17  kurtosis_20      m4 / m2^2 - 3 (excess kurtosis) of those 20 log returns
                     (chosen: moments of returns; upstream takes moments of price levels)
18  bid_price        best bid
19  ask_price        best ask

Zero variance (chosen): when all 20 values of a window are equal (m2 == 0 exactly: deviations are
formed from differences to the window's newest value, which are exact zeros then), bollinger_position_20 is
0.5, volatility_20 is 0, skewness_20 is 0 and kurtosis_20 is 0 ("no evidence of asymmetry or tails"; a
point mass has no defined moments ratio; upstream returns 0 there too).

Book fields (bid, ask, spread, relative spread), row by row from optional candle fields (OPTIONAL):
- `best_bid` and `best_ask` both finite and > 0: used as they are (spread = ask - bid, relative
  spread = spread / mid).
- else `spread_bps` (the quoted spread in basis points of the close) finite: an *approximation*
  centred on the close: spread = spread_bps / 1e4 * c, bid/ask = c -+ spread / 2, relative spread =
  spread_bps / 1e4 (the mid is the close by construction).
- else (kline-only sources, the common case): all four are NaN. Unknown is never a silent 0, which
  would mean "zero spread" (upstream's unwrap_or(0) / unwrap_or(price) does exactly that).
How models see unknown: trees (LightGBM and its ONNX export) take NaN as missing and learn a branch
for it. A sequence network cannot take NaN: it needs a "book known" flag plus a fill (e.g. 0 for
spread, close for bid/ask), which is the model's input adapter's job; a `book_known` indicator
column is not in this set because the seed fixes the vector at 19.

Scale: price, SMA, EMA, MACD, VWAP, bid, ask and volumes are raw levels, as in the seed; the network
that uses this set normalises its inputs (per feature, fitted on training data) itself.

Warm-up: NaN until each window is full (sma/bb/vwap/volume_*: t >= 19; price_change_k: t >= k;
volatility/skewness/kurtosis: t >= 20, 20 log returns) and, for EMA/MACD/RSI, until the seed's
weight (1-alpha)^k is below 1e-16 (ema_20: 369, macd: 479, rsi: 1 + 498); `warmup` = 500.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.features._ewm import Ewm
from pipelines.features.core27 import cumsum_lags, lag_view

NAME = "whale19"
VERSION = 1

NAMES: tuple[str, ...] = (
    "price", "base_volume", "sma_20", "ema_20", "rsi_14w", "bollinger_position_20", "macd_12_26", "vwap_20",
    "volume_sma_20", "volume_ratio_20", "spread", "relative_spread", "price_change_1m", "price_change_5m",
    "volatility_20", "skewness_20", "kurtosis_20", "bid_price", "ask_price",
)  # fmt: skip
_F = {n: i for i, n in enumerate(NAMES)}
# NaN by design when the feed has no book fields (kline-only sources): models that take NaN as missing
# (trees) train on them; training refuses them for models that cannot (sequence networks).
NULLABLE: tuple[str, ...] = ("spread", "relative_spread", "bid_price", "ask_price")

# Rows of X: close, volume, quote volume and the scratch row of 1-candle log returns are adjacent (one
# lag view covers the windows); then the optional book fields (NaN when a feed lacks them).
INPUTS: tuple[str | None, ...] = (
    "close", "volume", "quote_asset_volume", None, "best_bid", "best_ask", "spread_bps",
)  # fmt: skip
X_CLOSE, X_VOLUME, X_QAV, X_LR1, X_BID, X_ASK, X_SPREAD_BPS = range(7)
OPTIONAL = ("best_bid", "best_ask", "spread_bps")
# Pad columns (before a history's first candle): finite for the windowed rows so that masked window
# terms stay finite; the book rows are never read at a lag.
PAD_VALUES = np.array([1.0, 1.0, 1.0, 0.0, np.nan, np.nan, np.nan])

WINDOW = 20
LAGS = WINDOW  # longest window; price_change_5m reads lag 5
EMA_SPANS = (20, 12, 26)
RSI_PERIOD = 14
SEED_RESIDUAL = 1e-16  # as core27: a recursion is reported once its seed weighs less than this
_ALPHAS = np.array([2.0 / (n + 1) for n in EMA_SPANS] + [1.0 / RSI_PERIOD] * 2)  # EMA20/12/26, gain, loss
# (close, previous close) → EWM inputs (close x3, diff, -diff); max(., 0) gives gain and loss (exact)
_EWM_IN = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, -1.0], [-1.0, 1.0]])
# Guarded ratios num / den, default where den == 0 (one divide for all; the post-step in brackets):
#   0 rsi_14w          avg_gain / (avg_gain + avg_loss)     0.5    [x 100]
#   1 volume_ratio_20  volume / SMA20(volume)               1.0
#   2 vwap_20          sum20(quote volume) / sum20(volume)  close
#   3 bollinger_position_20   (close - SMA20) / (4 std20(close))   0.0    [+ 0.5]
#   4 skewness_20      m3 / m2^1.5                          0.0
#   5 kurtosis_20      m4 / m2^2                            3.0    [- 3]
_RATIO_DEFAULT = np.array([[0.5], [1.0], [0.0], [0.0], [0.0], [3.0]])
_RATIO_OUT = np.array(
    [_F[n] for n in ("rsi_14w", "volume_ratio_20", "vwap_20", "bollinger_position_20", "skewness_20")]
)
_BOOK_OUT = np.array([_F["bid_price"], _F["ask_price"]])[:, None]


def _seed_rows(alpha: float) -> int:
    """Rows after which the seed's weight (1-alpha)^k is below SEED_RESIDUAL."""
    return math.ceil(math.log(SEED_RESIDUAL) / math.log(1.0 - alpha))


def first_valid() -> np.ndarray:
    """(19,) int: the first candle index t at which each feature is defined (NaN before)."""
    fv = np.zeros(len(NAMES), dtype=np.int64)
    for n in ("sma_20", "bollinger_position_20", "vwap_20", "volume_sma_20", "volume_ratio_20"):
        fv[_F[n]] = WINDOW - 1
    fv[_F["ema_20"]] = _seed_rows(2.0 / 21)
    fv[_F["macd_12_26"]] = max(_seed_rows(2.0 / 13), _seed_rows(2.0 / 27))
    fv[_F["rsi_14w"]] = 1 + _seed_rows(1.0 / RSI_PERIOD)  # the RSI recursion starts at the first diff
    fv[_F["price_change_1m"]] = 1
    fv[_F["price_change_5m"]] = 5
    for n in ("volatility_20", "skewness_20", "kurtosis_20"):
        fv[_F[n]] = WINDOW  # 20 log returns, the first at t=1
    return fv


def new_state() -> Ewm:
    """Carried state: the EMA20/EMA12/EMA26/RSI recursions (the windows' state is X's context)."""
    return Ewm(_ALPHAS)


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, ewm: Ewm, out: np.ndarray) -> None:
    """Write whale19 of columns [lo, hi) of X into out (19, hi-lo); advances `ewm`.

    Args:
        X: (7, W) float64 C-contiguous work matrix (rows INPUTS); columns [lo-LAGS, lo) hold the
            context. Writes the X_LR1 row of the new columns.
        lo, hi: the new columns.
        t0: candle index (from the start of the history) of column lo; rows before a feature's
            `first_valid` get finite garbage here and are masked NaN by the caller.
        ewm: the EMA/RSI state, seeded on the history's second candle.
        out: (19, hi-lo) float64, fully overwritten.
    """
    M = hi - lo
    c = X[X_CLOSE, lo:hi]  # (M,)
    V = lag_view(X, X_CLOSE, 4, lo, hi, LAGS)  # (20, 4, M) newest first: close, volume, qav, log return
    out[0:2] = X[X_CLOSE : X_VOLUME + 1, lo:hi]
    prev = V[1:6:4, 0]  # (2, M): close 1 and 5 candles back
    np.subtract(c, prev, out=out[12:14])
    np.divide(out[12:14], prev, out=out[12:14])  # price_change_1m/5m
    np.log(c / prev[0], out=X[X_LR1, lo:hi])  # the view V sees it at lag 0
    # Window sums of close, volume, qav and of U = x[t-j] - x[t] for close and log return: central
    # moments are taken two-pass over U, differences to the newest value (exact for close by Sterbenz;
    # exact zeros when a window is flat, so zero variance is exactly 0)
    W = np.empty((WINDOW, 5, M))
    W[:, 0:3] = V[:, 0:3]
    np.subtract(V[:, 0::3], V[0:1, 0::3], out=W[:, 3:5])
    S = cumsum_lags(W)[WINDOW - 1]  # (5, M)
    mu = S[3:5] / WINDOW  # (2, M) mean of U = mean(x) - x[t]
    U = W[:, 3:5]
    U -= mu  # deviations from the mean
    P = np.empty((WINDOW, 4, M))  # (close dev², lr dev², lr dev³, lr dev⁴)
    np.multiply(U, U, out=P[:, 0:2])
    np.multiply(P[:, 1], U[:, 1], out=P[:, 2])
    np.multiply(P[:, 1], P[:, 1], out=P[:, 3])
    m = cumsum_lags(P, inplace=True)[WINDOW - 1] / WINDOW  # (4, M) var(close), m2, m3, m4
    np.divide(S[0:2], WINDOW, out=out[2:10:6])  # sma_20, volume_sma_20
    sd = np.sqrt(m[0:2])  # (2, M): std of close, std of log returns
    out[14] = sd[1]  # volatility_20
    nd = np.empty((2, 6, M))  # numerators, denominators of the guarded ratios (table above)
    # EMA and RSI rows start at the second candle (the first diff); the first close seeds the EMAs
    a = 1 if t0 == 0 else 0  # column lo is the first candle of the history: no diff yet
    if a:
        out[3, 0] = c[0]
        out[6, 0] = 0.0
        nd[:, 0, 0] = 0.0  # no diff yet: rsi 50, masked anyway
    if a < M:
        xin = np.maximum(_EWM_IN @ V[0:2, 0, a:], 0.0)  # (5, M'): close x3, gain, loss
        if ewm.Y is None:
            ewm.seed(np.array([X[X_CLOSE, lo + a - 1]] * 3 + [xin[3, 0], xin[4, 0]]))
        y = ewm(xin)  # (5, M')
        out[3, a:] = y[0]
        np.subtract(y[1], y[2], out=out[6, a:])  # macd
        nd[0, 0, a:] = y[3]
        np.add(y[3], y[4], out=nd[1, 0, a:])
    nd[0, 1] = out[1]
    nd[1, 1] = out[8]
    nd[:, 2] = S[2:0:-1]  # sum20(qav), sum20(volume)
    np.negative(mu[0], out=nd[0, 3])
    np.multiply(sd[0], 4.0, out=nd[1, 3])
    nd[0, 4:6] = m[2:4]
    np.multiply(m[1], sd[1], out=nd[1, 4])
    np.multiply(m[1], m[1], out=nd[1, 5])
    r = np.empty((6, M))
    r[:] = _RATIO_DEFAULT
    r[2] = c
    np.divide(nd[0], nd[1], out=r, where=nd[1] != 0)
    r[0] *= 100.0  # rsi in [0, 100]
    r[3] += 0.5  # bb position
    out[_RATIO_OUT] = r[0:5]
    np.subtract(r[5], 3.0, out=out[16])  # excess kurtosis
    # Book: quoted spread_bps approximation (NaN when absent), replaced where a best bid/ask is known
    q = X[X_SPREAD_BPS, lo:hi] / 1e4
    np.multiply(q, c, out=out[10])  # spread
    out[11] = q  # relative spread
    half = out[10] * 0.5
    np.subtract(c, half, out=out[17])
    np.add(c, half, out=out[18])
    B = X[X_BID : X_ASK + 1, lo:hi]  # (2, M)
    s = B[1] - B[0]  # finite only when both are (NaN compares False below, without a warning)
    known = np.isfinite(s) & (np.minimum(B[0], B[1]) > 0)
    if known.any():
        Bk = B[:, known]
        out[_BOOK_OUT, known] = Bk
        out[10, known] = s[known]
        out[11, known] = s[known] / ((Bk[0] + Bk[1]) * 0.5)
