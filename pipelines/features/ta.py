"""ta: classic technical indicators and the VuManChu Cipher B core, as one kernel.

Same engine as core27 (see its docstring): the kernel computes new columns [lo, hi) of a work matrix
X from those columns and the LAGS before them, plus carried recursions (`Ewm`); batch and streaming
run the same code and agree bit for bit. Window sums add lags newest first, one lag at a time
(core27.sum_lags / cumsum_lags), so they never depend on where a history started or how it was chunked.
One new candle of a running history (streaming) takes `_kernel_one`: the kernel's formulas written out
on Python floats (and `Ewm.step`), the same IEEE operations in the same order, so the same bits, at
~15 us instead of ~60 us for ~80 numpy calls on 1-wide arrays.

Definitions (t = candle index, candles <= t only; o/h/l/c/v = open/high/low/close/volume; all EMAs
are `ewm(adjust=False)` recursions y = (1 - alpha) y' + alpha x seeded with their first input, on the
history's first candle; "Wilder" = EMA with alpha 1/n; tp = hlc3 = (h + l + c) / 3):

 name            definition                                                       default (0/0)
 macd            (EMA12(c) - EMA26(c)) / c, alphas 2/13, 2/27 (Appel's MACD 12/26/9)
 macd_signal     EMA9(EMA12(c) - EMA26(c)) / c, alpha 2/10 (EMA of the unnormalised line)
 macd_hist       (line - signal) / c
 bb_position_20  %B = (c - lower) / (upper - lower), bands SMA20(c) -+ 2 population std   0.5
                 (ddof=0); = (2 sd - (SMA20 - c)) / (4 sd)
 bb_width_20     (upper - lower) / middle = 4 sd / SMA20(c)                                0 (flat)
 stoch_k_14      fast %K in [0, 1]: (c - LL14) / (HH14 - LL14), HH/LL = highest high /     0.5
                 lowest low of the last 14 candles
 stoch_d_3       SMA3(stoch_k_14)
 atr_14_norm     Wilder ATR 14 / c; TR = max(h - l, |h - c'|, |l - c'|) (c' = previous close)
 mfi_14          money flow index / 100 in [0, 1]: mf = tp * v, positive when tp > tp',    0.5
                 negative when tp < tp' (neither when equal: see TP_TOL);
                 sum14(pos) / (sum14(pos) + sum14(neg))
 adx_14          Wilder ADX 14 / 100 in [0, 1]: +DM = up if up > down and up > 0 (else 0),  DX: 0
                 -DM = down if down > up and down > 0, up = h - h', down = l' - l;
                 +DI/-DI = Wilder(+DM)/Wilder(TR), -DM likewise; DX = |+DI - -DI| / (+DI + -DI)
                 (= |W(+DM) - W(-DM)| / (W(+DM) + W(-DM)), the TR cancels); ADX = Wilder(DX)
 cci_20          CCI / 100 (chosen scale: mostly within -+2, bounded by -+20/3):           0
                 (tp - SMA20(tp)) / (0.015 * MD20), MD20 = mean |tp - SMA20(tp)| over the last 20
 obv_slope_20    (OBV_t - OBV_{t-20}) / sum20(v) = sum20(sign(c - c') * v) / sum20(v)      0
                 in [-1, 1] (OBV as TA-Lib: + v on an up close, - v on a down close, 0 unchanged)
 wt1             WaveTrend (LazyBear; VuManChu Cipher B `f_wavetrend`, chlen 9, avg 12) / 100:
                 esa = EMA9(tp), d = EMA9(|tp - esa|), ci = (tp - esa) / (0.015 d),
                 wt1 = EMA12(ci) / 100. |ci| <= 1/(0.015 * 0.2) = 333 since d >= 0.2 |tp - esa|,  ci: 0
                 so |wt1| <= 3.33 (Cipher B's overbought/oversold levels 53/60 read 0.53/0.60)
 wt2             SMA3(wt1) (Cipher B's wtMALen 3)
 wt_cross        wt1 - wt2 (Cipher B's `wtVwap`; its wt1/wt2 cross is a sign change of this)
 cipher_mf       Cipher B's RSI+MFI area `f_rsimfi(60, 150)` - posY:                        body: 0
                 SMA60((c - o) / (h - l)) * 150 - 2.5, on Cipher B's own scale ([-152.5, 147.5])

Guards (every division; chosen defaults in the right column): flat windows (all closes equal: sd = 0;
HH == LL; no tp change; zero volume; h == l; zero directional movement) give the defaults above.
Deviations for the SMA20 std and the CCI mean deviation are taken from the current close/tp (exact
zeros for equal values), so flat windows give exactly sd = 0 and MD = 0, never a ratio of rounding noise.
tp is itself rounded: candles whose hlc3 are equal in decimal can differ by an ulp, so tp changes and
deviations at or below TP_TOL * tp (1e-12 relative) count as none: a tp change sets the money-flow
direction only above it (TA-Lib's MFI, the tests' oracle, agrees with this rule; with a strict
tp > tp' a quarter of FILUSDT 1m rows differed from it), CCI is 0 when
MD20 <= TP_TOL * tp, and ci is 0 when d <= TP_TOL * tp (a long flat stretch, where esa has converged
to tp up to rounding and the ratio would be noise; wt1 then decays to 0).

Numerics: a price minus its EMA (MACD line, tp - esa) is computed by its own recursion over price
changes (see _DEV_GAIN), not as a difference of two price-size EMAs, so MACD and WaveTrend carry
rounding of their own size (~1e-15 relative), not ~1e-13 from cancellation; the Ewm block sums of
these signed inputs stay within ~25 ulps of the inputs' size.

First candle: the column before a history's first candle is set to a copy of it, so its changes (TR,
DM, signed volume, money flow direction) are those of an unchanged candle (TR = h - l, DM = 0). Windows
that reach before the first candle are masked NaN (first_valid).

Warm-up (NaN before; first valid index t): windows bb/cci 19, stoch_k 13, stoch_d 15, mfi 14, obv 20,
cipher_mf 59. Recursions: reported once the seed's weight (1-alpha)^k is below 1e-16 (as core27;
`_seed_rows`: 166 for alpha 2/10, 221 for 2/13, 479 for 2/27, 498 for 1/14); a recursion over another
recursion's output waits for its input to be exact first: macd 479, macd_signal/hist 479 + 166 = 645,
atr 1 + 498 = 499 (true ranges from the first change), adx 499 + 498 = 997, wt1 166 + 166 + 221 = 553
(esa, then d, then wt1), wt2/wt_cross 555. `warmup` = 998 candles.

Sources: MACD (G. Appel), Bollinger %B/bandwidth (J. Bollinger), Stochastic (G. Lane), ATR/ADX/DMI
(J. W. Wilder, "New Concepts in Technical Trading Systems", 1978), MFI (Quong & Soudack), CCI
(D. Lambert, constant 0.015), OBV (J. Granville); the formulas follow TA-Lib (MACD, BBANDS, STOCHF, ATR,
MFI, ADX, CCI, OBV), which tests/unit/test_features_ta.py uses as the oracle. WaveTrend: LazyBear's
"WaveTrend Oscillator [WT]" (TradingView), as embedded in "VuManChu Cipher B + Divergences"
(`f_wavetrend`: esa = ema(src, chlen), de = ema(abs(src - esa), chlen), ci = (src - esa) / (0.015 * de),
wt1 = ema(ci, avg), wt2 = sma(wt1, malen), src = hlc3, chlen 9, avg 12, malen 3) and its `f_rsimfi`
(sma(((close - open) / (high - low)) * multiplier, period) - posY, period 60, multiplier 150, posY 2.5).
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.features._ewm import Ewm
from pipelines.features.core27 import cumsum_lags, lag_view, sum_lags

NAME = "ta"
VERSION = 1

NAMES: tuple[str, ...] = (
    "macd", "macd_signal", "macd_hist", "bb_position_20", "bb_width_20", "stoch_k_14", "stoch_d_3",
    "atr_14_norm", "mfi_14", "adx_14", "cci_20", "obv_slope_20", "wt1", "wt2", "wt_cross", "cipher_mf",
)  # fmt: skip
_F = {n: i for i, n in enumerate(NAMES)}

# Rows of X: the candle fields, then scratch rows (None) the kernel writes for later columns to read at
# a lag. high, low, close, tp adjacent (one 2-lag view gives every one-candle change); close, tp (20-window
# deviations); volume, signed volume, +/- money flow (window sums); body; stoch_k, wt1 (3-candle SMAs).
INPUTS: tuple[str | None, ...] = (
    "open", "high", "low", "close", None, "volume", None, None, None, None, None, None,
)  # fmt: skip
X_OPEN, X_HIGH, X_LOW, X_CLOSE, X_TP, X_VOLUME, X_SV, X_PMF, X_NMF, X_BODY, X_STOCHK, X_WT1 = range(12)
# Pad columns (before a history's first candle): finite, so masked window terms stay finite.
PAD_VALUES = np.array([0.0 if n is None else 1.0 for n in INPUTS])

BODY_WINDOW = 60  # Cipher B f_rsimfi period
LAGS = BODY_WINDOW  # longest window
SEED_RESIDUAL = 1e-16  # as core27: a recursion is reported once its seed weighs less than this
# tp = (h + l + c) / 3 is rounded: candles whose hlc3 are equal in decimal can differ by an ulp. Changes
# and deviations of tp at or below TP_TOL * tp are rounding, not signal: a tp change counts for the money
# flow direction only above it; CCI is 0 when MD20 <= TP_TOL * tp, ci is 0 when d <= TP_TOL * tp.
TP_TOL = 1e-12

# Recursions, in three stages (each stage's inputs are the previous stage's outputs):
#   A: c - EMA12(c), c - EMA26(c), tp - esa (esa = EMA9(tp)), ATR = W(TR), W(+DM), W(-DM)
#   B: signal = EMA9(MACD line), d = EMA9(|tp - esa|), ADX = W(DX)
#   C: wt1 = EMA12(ci)
# MACD and WaveTrend need a price minus its EMA, a difference of two price-size numbers that cancels
# to ~1e-3 of them. That difference has its own recursion: e = x - EMA(x) follows e_t = a (e_{t-1} +
# (x_t - x_{t-1})) (a = 1 - alpha), an EMA of (a / alpha) (x_t - x_{t-1}) seeded at 0 (EMA seeded with
# x_0). Run on changes, it carries rounding of the deviation's size, not of the price's: MACD and ci
# come out ~1e-15 relative (not ~1e-13), and ci (a ratio of deviations) does not amplify price rounding.
_ALPHA_A = np.array([2 / 13, 2 / 27, 2 / 10, 1 / 14, 1 / 14, 1 / 14])
_ALPHA_B = np.array([2 / 10, 2 / 10, 1 / 14])
_ALPHA_C = np.array([2 / 13])
_DEV_ROWS = np.array([2, 2, 3])  # rows of the one-candle changes: close, close, tp
_DEV_GAIN = np.array([[5.5], [12.5], [4.0]])  # a / alpha for alpha 2/13, 2/27, 2/10: exact in binary
_UP_DOWN = np.array([[1.0], [-1.0]])  # (change of high, change of low) → (up, down); sign → (pos, neg)
# Guarded ratios num / den (default where den == 0), all in one divide:
#   0 bb_position_20  2 sd - (SMA - c)        4 sd                    0.5
#   1 bb_width_20     4 sd                    SMA20(c)                0
#   2 stoch_k_14      c - LL14                HH14 - LL14             0.5
#   3 mfi_14          sum14(pos mf)           sum14(pos + neg mf)     0.5
#   4 cci_20 / 100    tp - SMA20(tp)          1.5 MD20 (0 if tiny)    0
#   5 obv_slope_20    sum20(signed v)         sum20(v)                0
#   6 body (X row)    c - o                   h - l                   0
_RATIO_DEFAULT = np.array([[0.5], [0.0], [0.5], [0.5], [0.0], [0.0], [0.0]])
_RATIO_OUT = np.array([_F[n] for n in ("bb_position_20", "bb_width_20", "stoch_k_14", "mfi_14", "cci_20")])
_PER_CLOSE_OUT = np.array([_F[n] for n in ("macd", "macd_signal", "macd_hist", "atr_14_norm")])
_SMA3_OUT = np.array([_F["stoch_d_3"], _F["wt2"]])


def _seed_rows(alpha: float) -> int:
    """Rows after which the seed's weight (1-alpha)^k is below SEED_RESIDUAL."""
    return math.ceil(math.log(SEED_RESIDUAL) / math.log(1.0 - alpha))


def first_valid() -> np.ndarray:
    """(16,) int: the first candle index t at which each feature is defined (NaN before)."""
    ema9, ema12, ema26, wilder = (_seed_rows(a) for a in (2 / 10, 2 / 13, 2 / 27, 1 / 14))
    macd = max(ema12, ema26)
    atr = 1 + wilder  # the first true range needs a previous close
    wt1 = ema9 + ema9 + ema12  # esa, then d = EMA9(|tp - esa|), then wt1 = EMA12(ci)
    fv = {
        "macd": macd,
        "macd_signal": macd + ema9,
        "macd_hist": macd + ema9,
        "bb_position_20": 19,
        "bb_width_20": 19,
        "stoch_k_14": 13,
        "stoch_d_3": 15,
        "atr_14_norm": atr,
        "mfi_14": 14,  # 14 tp changes, the first at t=1
        "adx_14": atr + wilder,  # DX is exact once the DM/TR averages are; then the ADX seed decays
        "cci_20": 19,
        "obv_slope_20": 20,  # 20 close changes, the first at t=1
        "wt1": wt1,
        "wt2": wt1 + 2,
        "wt_cross": wt1 + 2,
        "cipher_mf": BODY_WINDOW - 1,
    }
    return np.array([fv[n] for n in NAMES], dtype=np.int64)


def new_state() -> tuple[Ewm, Ewm, Ewm]:
    """Carried state: the three stages of recursions (the windows' state is the context columns of X)."""
    return Ewm(_ALPHA_A), Ewm(_ALPHA_B), Ewm(_ALPHA_C)


def _ewm(e: Ewm, x: np.ndarray) -> np.ndarray:
    """Advance `e` over x (K, M); a fresh recursion is seeded with its first input (history start)."""
    if e.Y is None:
        e.seed(x[:, 0])
    return e(x)


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, state: tuple[Ewm, Ewm, Ewm], out: np.ndarray) -> None:
    """Write ta of columns [lo, hi) of X into out (16, hi-lo); advances `state`.

    Args:
        X: (12, W) float64 C-contiguous work matrix; columns [lo-LAGS, lo) hold the context. Writes
            the scratch rows of the new columns (and, at a history's first candle, column lo-1).
        lo, hi: the new columns.
        t0: candle index (from the start of the history) of column lo; rows with t0 + m below a
            feature's `first_valid` get finite garbage here and are masked NaN by the caller.
        state: the (A, B, C) recursions, seeded at the history's first candle.
        out: (16, hi-lo) float64, fully overwritten.
    """
    if hi - lo == 1 and t0 > 0 and state[2].Y is not None:
        _kernel_one(X, lo, state, out)
        return
    M = hi - lo
    o, h, low, c, tp, v = X[0:6, lo:hi]  # (M,) views each
    np.add(h, low, out=tp)
    tp += c
    tp /= 3.0  # (h + l + c) / 3, as TA-Lib's typical price
    if t0 == 0:  # before the first candle: a copy of it, so its changes are those of an unchanged candle
        X[X_OPEN : X_TP + 1, lo - 1] = X[X_OPEN : X_TP + 1, lo]
    P = lag_view(X, X_HIGH, 4, lo, hi, 2)  # (2, 4, M): high, low, close, tp; now and one candle before
    chg = P[0] - P[1]  # (4, M) one-candle changes

    # ---- recursion inputs, stage A: (a/alpha) * changes of close x2 and tp, TR, +DM, -DM
    xA = np.empty((6, M))
    np.multiply(chg[_DEV_ROWS], _DEV_GAIN, out=xA[0:3])
    pc = P[1, 2]
    np.subtract(np.maximum(h, pc), np.minimum(low, pc), out=xA[3])  # TR = max(h - l, |h - c'|, |l - c'|)
    U = chg[0:2] * _UP_DOWN  # (2, M): up = h - h', down = l' - l
    np.multiply(U, U > np.maximum(U[::-1], 0.0), out=xA[4:6])  # +DM, -DM (products by 0/1: exact)

    # ---- per-candle scratch rows: signed volume, +/- money flow
    np.multiply(np.sign(chg[2]), v, out=X[X_SV, lo:hi])
    tol = TP_TOL * tp  # (M,) the rounding level of tp
    up_down = chg[3] * _UP_DOWN > tol  # (2, M): tp up, tp down (beyond rounding)
    np.multiply(tp * v, up_down, out=X[X_PMF : X_NMF + 1, lo:hi])

    # ---- windows
    Y = lag_view(X, X_CLOSE, 2, lo, hi, 20) - P[0, 2:4]  # (20, 2, M): close, tp minus the current ones
    my = sum_lags(Y) / 20.0  # (2, M): SMA20 - current value (close, tp)
    D = Y - my  # deviations from the means
    D[:, 0] *= D[:, 0]
    np.abs(D[:, 1], out=D[:, 1])
    dev = sum_lags(D)  # (2, M): sum of squared close deviations, sum of absolute tp deviations
    sd = np.sqrt(dev[0] / 20.0)  # population std of close
    S = cumsum_lags(lag_view(X, X_VOLUME, 4, lo, hi, 20))  # volume, signed volume, +mf, -mf
    HL = lag_view(X, X_HIGH, 2, lo, hi, 14)
    hh, ll = HL[:, 0].max(axis=0), HL[:, 1].min(axis=0)

    nd = np.empty((2, 7, M))  # numerators, denominators (see _RATIO_DEFAULT)
    np.multiply(sd, 4.0, out=nd[1, 0])
    np.subtract(sd + sd, my[0], out=nd[0, 0])
    nd[0, 1] = nd[1, 0]
    np.add(c, my[0], out=nd[1, 1])
    np.subtract(c, ll, out=nd[0, 2])
    np.subtract(hh, ll, out=nd[1, 2])
    nd[0, 3] = S[13, 2]
    np.add(S[13, 2], S[13, 3], out=nd[1, 3])
    np.negative(my[1], out=nd[0, 4])
    np.multiply(dev[1], 1.5 / 20.0, out=nd[1, 4])  # 0.015 * 100 * MD20
    nd[1, 4] *= dev[1] > 20.0 * tol  # MD20 at tp's rounding level: 0 (→ cci 0)
    nd[:, 5] = S[19, 1::-1]
    np.subtract(c, o, out=nd[0, 6])
    np.subtract(h, low, out=nd[1, 6])
    r = np.empty((7, M))
    r[:] = _RATIO_DEFAULT
    np.divide(nd[0], nd[1], out=r, where=nd[1] != 0.0)
    out[_RATIO_OUT] = r[0:5]
    out[_F["obv_slope_20"]] = r[5]
    X[X_BODY, lo:hi] = r[6]
    X[X_STOCHK, lo:hi] = r[2]
    body = sum_lags(lag_view(X, X_BODY, 1, lo, hi, BODY_WINDOW))[0]
    np.multiply(body, 150.0 / BODY_WINDOW, out=out[_F["cipher_mf"]])  # SMA60 * 150 (150/60 = 2.5 exactly)
    out[_F["cipher_mf"]] -= 2.5

    # ---- recursions
    yA = _ewm(state[0], xA)  # c - EMA12(c), c - EMA26(c), tp - esa, ATR, W(+DM), W(-DM)
    xB = np.empty((3, M))
    np.subtract(yA[1], yA[0], out=xB[0])  # MACD line EMA12 - EMA26
    dv = yA[2]  # tp - esa
    np.abs(dv, out=xB[1])
    dm = yA[4:6]
    den = dm[0] + dm[1]
    xB[2] = 0.0
    np.divide(np.abs(dm[0] - dm[1]), den, out=xB[2], where=den != 0.0)  # DX / 100
    yB = _ewm(state[1], xB)  # signal, d, ADX
    ci = np.zeros((1, M))
    np.divide(dv, 0.015 * yB[1], out=ci[0], where=yB[1] > tol)  # d at tp's rounding level: ci 0
    wt1 = _ewm(state[2], ci)[0]
    np.divide(wt1, 100.0, out=X[X_WT1, lo:hi])

    G = np.empty((4, M))  # MACD line, signal, histogram, ATR: divided by close
    G[0:2] = xB[0], yB[0]
    np.subtract(G[0], G[1], out=G[2])
    G[3] = yA[3]
    out[_PER_CLOSE_OUT] = G / c
    out[_F["adx_14"]] = yB[2]
    sma3 = sum_lags(lag_view(X, X_STOCHK, 2, lo, hi, 3)) / 3.0  # stoch_d_3, wt2
    out[_SMA3_OUT] = sma3
    out[_F["wt1"]] = X[X_WT1, lo:hi]
    np.subtract(X[X_WT1, lo:hi], sma3[1], out=out[_F["wt_cross"]])


# the window sums the one-candle path takes from the accumulated (volume, signed volume, +mf, -mf) rows:
# volume and signed volume over 20 candles, the money flows over 14 (S[19, 0:2], S[13, 2:4] in `kernel`)
_S_AT = (np.arange(4), np.array([19, 19, 13, 13]))


def _div(a: float, b: float) -> float:
    """a / b with numpy's result where b is 0 (±inf, NaN for 0/0) instead of ZeroDivisionError: only
    for a divisor no guard excludes (d above tol where tol <= 0, i.e. bad candles with h + l + c <= 0)."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0.0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _kernel_one(X: np.ndarray, p: int, state: tuple[Ewm, Ewm, Ewm], out: np.ndarray) -> None:
    """`kernel` for the one column p of a running history (streaming, t0 > 0): every value is formed
    by the same IEEE operations as in `kernel`, in the same order (sums over lags newest first, one
    add per lag; max/min exact), on Python floats instead of 1-element arrays, so the same bits
    (tests/unit/test_features_ta.py, every step). Divisions keep `kernel`'s guards (no warning, no
    ZeroDivisionError)."""
    o, h, low, c, _, v = X[0:6, p].tolist()
    hp, lp, cp, tpp = X[X_HIGH : X_TP + 1, p - 1].tolist()
    tp = (h + low + c) / 3.0
    dc, dtp = c - cp, tp - tpp
    up, down = h - hp, -(low - lp)  # chg * (1, -1): the sign flip is exact
    # recursion inputs, stage A
    xA = [
        dc * 5.5,
        dc * 12.5,
        dtp * 4.0,
        (h if h > cp else cp) - (low if low < cp else cp),  # np.maximum/minimum: the 2nd when equal
        up * (up > max(down, 0.0)),
        down * (down > max(up, 0.0)),
    ]
    # per-candle scratch rows
    sgn = 1.0 if dc > 0.0 else (-1.0 if dc < 0.0 else 0.0)  # np.sign (0.0 for either zero)
    tol = TP_TOL * tp
    tv = tp * v
    X[X_TP : X_NMF + 1, p] = [tp, v, sgn * v, tv * (dtp > tol), tv * (-dtp > tol)]
    # windows, newest first: deviations of the last 20 closes / tp from the current ones, their means,
    # then the squared / absolute deviations from the means (sum_lags: one add per lag, in order)
    cw, tw = X[X_CLOSE : X_TP + 1, p - 19 : p + 1].tolist()  # oldest first
    yc = [x - c for x in cw[::-1]]
    yt = [x - tp for x in tw[::-1]]
    s0, s1 = yc[0], yt[0]
    for a, b in zip(yc[1:], yt[1:]):
        s0 += a
        s1 += b
    my0, my1 = s0 / 20.0, s1 / 20.0
    d = yc[0] - my0
    dev0, dev1 = d * d, abs(yt[0] - my1)
    for a, b in zip(yc[1:], yt[1:]):
        d = a - my0
        dev0 += d * d
        dev1 += abs(b - my1)
    sd = math.sqrt(dev0 / 20.0)
    # volume, signed volume over 20 and +/- money flow over 14: one accumulate (cumsum_lags)
    S = np.add.accumulate(X[X_VOLUME : X_NMF + 1, p - 19 : p + 1][:, ::-1], axis=1)
    vol, sv, pmf, nmf = S[_S_AT].tolist()
    hh = max(X[X_HIGH, p - 13 : p + 1].tolist())
    ll = min(X[X_LOW, p - 13 : p + 1].tolist())
    # guarded ratios (see _RATIO_DEFAULT)
    sd4 = sd * 4.0
    bb_pos = ((sd + sd) - my0) / sd4 if sd4 != 0.0 else 0.5
    den = c + my0
    bb_w = sd4 / den if den != 0.0 else 0.0
    den = hh - ll
    stoch = (c - ll) / den if den != 0.0 else 0.5
    den = pmf + nmf
    mfi = pmf / den if den != 0.0 else 0.5
    den = dev1 * (1.5 / 20.0)
    den = den * (dev1 > 20.0 * tol)
    cci = -my1 / den if den != 0.0 else 0.0
    obv = sv / vol if vol != 0.0 else 0.0
    den = h - low
    X[X_BODY, p] = (c - o) / den if den != 0.0 else 0.0
    X[X_STOCHK, p] = stoch
    body = np.add.accumulate(X[X_BODY, p - BODY_WINDOW + 1 : p + 1][::-1])[-1].item()
    cipher = body * (150.0 / BODY_WINDOW) - 2.5
    # recursions
    yA = state[0].step(xA)
    macd = yA[1] - yA[0]
    dv = yA[2]
    dm0, dm1 = yA[4], yA[5]
    den = dm0 + dm1
    yB = state[1].step([macd, abs(dv), abs(dm0 - dm1) / den if den != 0.0 else 0.0])
    ci = _div(dv, 0.015 * yB[1]) if yB[1] > tol else 0.0
    wt1 = state[2].step([ci])[0] / 100.0
    X[X_WT1, p] = wt1
    sk2, sk1, sk0 = X[X_STOCHK, p - 2 : p + 1].tolist()
    w2, w1, _ = X[X_WT1, p - 2 : p + 1].tolist()
    wt2 = ((wt1 + w1) + w2) / 3.0
    sig = yB[0]
    out[:, 0] = [
        macd / c, sig / c, (macd - sig) / c, bb_pos, bb_w, stoch, ((sk0 + sk1) + sk2) / 3.0, yA[3] / c,
        mfi, yB[2], cci, obv, wt1, wt2, wt1 - wt2, cipher,
    ]  # fmt: skip
