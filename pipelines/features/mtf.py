"""mtf: multi-timeframe features (5m, 15m, 1h bars built from the 1-minute stream), as one kernel.

Input: 1-MINUTE candles (open_time on whole minutes), gap-free and consecutive, as validation
guarantees (the kernel does not check it: a gap or another interval gives wrong bars). The kernel
reads open_time (epoch ms, exact in float64) to align the bars.

Bars: a timeframe of k minutes (k = 5, 15, 60) has bars aligned to UTC multiples of k minutes since
the epoch: the bar starting at B covers the candles with open_time in [B, B + k min). At the
1-minute candle t with open_time T, a bar is CLOSED when T + 1 min >= its end. With consecutive
candles, the last closed bar ends at candle e = t - d, d = (T / 1 min + 1) mod k (d = 0: candle t
closes a bar); its close is close[e], its volume the sum of volume[e-k+1..e], and the bar before it
ends at e - k. A bar still in progress at t never enters the closed-bar features; nothing after t
is read.

Features per timeframe tf (c_j = close of the j-th last closed bar, j = 0 the last; v_j its volume):
- mtf_{tf}_log_return = ln(c_0 / c_1).
- mtf_{tf}_volatility = population std (ddof=0, two-pass) of the last VOL_BARS = 12 closed-bar log
  returns ln(c_j / c_{j+1}), j = 0..11 (13 bars).
- mtf_{tf}_rsi = Cutler's RSI over RSI_BARS = 14 bar-to-bar changes (15 bars), in [0, 1]:
  G / (G + L) with G, L the sums (equivalently the simple means) of the gains max(c_j - c_{j+1}, 0)
  and losses max(c_{j+1} - c_j, 0), j = 0..13; 0.5 when both are 0. A finite window, unlike
  Wilder's recursion, whose seed would take weeks of hourly bars to forget.
- mtf_{tf}_volume_ratio = v_0 / mean(v_0..v_19) (VOLUME_BARS = 20 bars); 1.0 when the mean is 0.
- mtf_{tf}_partial_return = ln(close[t] / c_0): the move of the bar in progress so far (0 at a bar
  end). The only in-progress feature; the four above use closed bars only.

first_valid (conservative, static): a feature is NaN until every bar it reads is a complete bar of
real candles whatever the alignment of the history's first candle. A feature reading n bars is
defined from t = (n + 1) k - 2 (tight when the history starts one minute after a bar start, the
first complete bar then ends at candle 2k - 2): log_return n = 2, volatility 13, rsi 15,
volume_ratio 20, partial_return 1. Warm-up: 21 * 60 - 1 = 1259 candles (the 1h volume_ratio).

Scratch rows of X, written at each bar end e only (the "events": a column and a timeframe): the bar
volume v_0 and the four closed-bar features, so that a candle inside a bar only gathers them from
column e = t - d. Every window is a strided gather of X (stride k columns) summed with
np.add.accumulate along the window (one sequential add per term, whatever the number of columns),
so batch (chunks) and streaming (one column) give the same bits. Batch evaluates all bar ends of a
chunk, of all three timeframes, in one set of array operations: no Python loop over candles or bars.
Streaming (one column) takes `_kernel_one` / `_close_bars_one`: the same operations in the same order
on Python floats (sums added in the same order, log numpy's), so the same bits, at ~7 us per candle and
~14 / 19 / 24 us when 1 / 2 / 3 timeframes end a bar (the array version: ~9 and ~33-37 us).
"""

from __future__ import annotations

import math

import numpy as np

NAME = "mtf"
VERSION = 1

TIMEFRAMES: tuple[tuple[str, int], ...] = (("5m", 5), ("15m", 15), ("1h", 60))  # (name, minutes)
MINUTE_MS = 60_000  # the input interval: the kernel assumes 1-minute candles
VOL_BARS = 12  # log returns in mtf_*_volatility
RSI_BARS = 14  # bar-to-bar changes in mtf_*_rsi
VOLUME_BARS = 20  # bars in the mean of mtf_*_volume_ratio
_KINDS = ("log_return", "volatility", "rsi", "volume_ratio", "partial_return")
NAMES: tuple[str, ...] = tuple(f"mtf_{tf}_{kind}" for tf, _ in TIMEFRAMES for kind in _KINDS)
OPTIONAL: tuple[str, ...] = ()

_K = np.array([k for _, k in TIMEFRAMES])  # (3,) bar lengths in candles
_KMAX = int(_K.max())
# X rows: the clock, close, volume, then per timeframe i the scratch rows at 3 + 5i:
#   +0 bar volume, +1 log_return, +2 volatility, +3 rsi, +4 volume_ratio (valid at bar-end columns)
X_TIME, X_CLOSE, X_VOLUME = 0, 1, 2
_N_SCRATCH = 5
_BASE = 3 + _N_SCRATCH * np.arange(len(TIMEFRAMES))  # (3,) first scratch row of each timeframe
INPUTS: tuple[str | None, ...] = ("open_time", "close", "volume") + (None,) * (_N_SCRATCH * len(TIMEFRAMES))
# Pad columns: close/volume 1.0 (finite, log(1/1) = 0), scratch 0.0; their features are masked NaN.
PAD_VALUES = np.array([0.0, 1.0, 1.0] + [0.0] * (_N_SCRATCH * len(TIMEFRAMES)))

# Deepest read from candle t: the bar end e >= t-(k-1), then VOLUME_BARS-1 bars back, then that bar's
# k candles: t - (21k - 2). 21 * 60 columns cover it.
LAGS = (VOLUME_BARS + 1) * _KMAX
_NC = RSI_BARS + 1  # closes read per bar end (15: covers the 13 of volatility and the 2 of log_return)
_JC = np.arange(_NC)[:, None]  # (15, 1) bars back
_JV = np.arange(VOLUME_BARS)[:, None]  # (20, 1)
_AR = np.arange(_KMAX)[:, None]  # (60, 1) candles back within a bar
# Output gather: feature f of timeframe i comes from X row _G_ROWS[f] at column t - d_i
_G_ROWS = np.array([r for b in _BASE for r in (b + 1, b + 2, b + 3, b + 4, X_CLOSE)])
_G_TF = np.repeat(np.arange(len(TIMEFRAMES)), len(_KINDS))
_PARTIAL = np.arange(len(TIMEFRAMES)) * len(_KINDS) + 4  # out rows of the partial returns
_SCR_OFF = np.arange(1, 5)[:, None]  # (4, 1) scratch rows of the four closed-bar features
_SIGN = np.array([1.0, -1.0])[:, None, None]  # gains, losses
# Streaming: which timeframes end at a candle with minute u+1 ≡ 0 mod k. 60 is a multiple of 15 and of 5,
# 15 of 5: the set that ends is always a prefix of TIMEFRAMES (0, 1, 2 or 3 of them).
assert all(b % a == 0 for a, b in zip(_K, _K[1:]))  # each length divides the next: prefixes
_KL = [int(k) for k in _K]  # bar lengths and first scratch rows as Python ints (streaming)
_BL = [int(b) for b in _BASE]


def first_valid() -> np.ndarray:
    """(15,) int: the first candle index at which each feature is defined (see the module docstring)."""
    bars = {"log_return": 2, "volatility": VOL_BARS + 1, "rsi": RSI_BARS + 1, "volume_ratio": VOLUME_BARS}
    bars["partial_return"] = 1
    return np.array([(bars[kind] + 1) * k - 2 for _, k in TIMEFRAMES for kind in _KINDS], dtype=np.int64)


def new_state() -> None:
    """No carried state: every window is finite and lives in the context columns of X."""
    return None


def _close_bars(X: np.ndarray, E: np.ndarray, K: np.ndarray, B: np.ndarray) -> None:
    """Write the scratch rows of the bars that end at columns E (n,), of lengths K (n,), rows B (n,).

    Reads only columns <= E. Bars earlier in E may be read by later ones (same timeframe): every
    bar volume is written before any volume_ratio reads it.
    """
    n = E.size
    lanes = np.arange(n)
    # bar volume: the k one-minute volumes, newest first, one sequential add each (60 gathered, the
    # partial sum after k terms taken)
    acc = np.add.accumulate(X[X_VOLUME][E - _AR], axis=0)  # (60, n)
    X[B, E] = acc[K - 1, lanes]
    C = X[X_CLOSE][E - _JC * K]  # (15, n): closes of the last 15 bars ending at E, newest first
    lr = np.log(C[:-1] / C[1:])  # (14, n) bar log returns, newest first
    w = lr[:VOL_BARS]
    mean = np.add.accumulate(w, axis=0)[-1] / VOL_BARS
    dev = w - mean
    dev *= dev
    vol = np.sqrt(np.add.accumulate(dev, axis=0)[-1] / VOL_BARS)
    gl = np.maximum(_SIGN * (C[:RSI_BARS] - C[1:]), 0.0)  # (2, 14, n) gains, losses
    s = np.add.accumulate(gl, axis=1)[:, -1]  # (2, n) G, L
    vb = X[B, E - _JV * K]  # (20, n) bar volumes, newest first
    # guarded ratios num/den (default where den == 0): rsi G/(G+L) 0.5; volume_ratio v_0/mean 1.0
    nd = np.empty((2, 2, n))
    nd[0, 0] = s[0]
    np.add(s[0], s[1], out=nd[1, 0])
    nd[0, 1] = vb[0]
    np.divide(np.add.accumulate(vb, axis=0)[-1], VOLUME_BARS, out=nd[1, 1])
    r = np.empty((2, n))
    r[0], r[1] = 0.5, 1.0
    np.divide(nd[0], nd[1], out=r, where=nd[1] != 0)
    X[B + _SCR_OFF, E] = np.stack([lr[0], vol, r[0], r[1]])


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, state: None, out: np.ndarray) -> None:
    """Write the mtf features of columns [lo, hi) of X into out (15, hi-lo).

    Args:
        X: (len(INPUTS), W) float64 work matrix; columns [lo-LAGS, lo) hold the context. Writes the
            scratch rows of the new columns that end a bar.
        lo, hi: the new columns.
        t0: candle index of column lo (unused: the static first_valid masks the warm-up).
        state: None (no recursion).
        out: (15, hi-lo) float64, fully overwritten.
    """
    M = hi - lo
    if M == 1:  # streaming
        _kernel_one(X, lo, out)
        return
    u = X[X_TIME, lo:hi].astype(np.int64) // MINUTE_MS + 1  # (M,)
    D = u % _K[:, None]  # (3, M)
    tf, m = np.nonzero(D == 0)  # every bar end in the chunk, all timeframes
    if tf.size:
        _close_bars(X, lo + m, _K[tf], _BASE[tf])
    cols = np.arange(lo, hi) - D[_G_TF]  # (15, M)
    out[:] = X[_G_ROWS[:, None], cols]
    c = X[X_CLOSE, lo:hi]
    out[_PARTIAL] = np.log(c / out[_PARTIAL])


def _close_bars_one(X: np.ndarray, e: int, n: int) -> None:
    """`_close_bars` for the one column e where the first n timeframes end a bar (streaming): the same
    IEEE operations in the same order (sums sequential, newest first; log numpy's) on Python floats
    and one gathered row per series, so the same bits (tests/unit/test_features_mtf.py, every step)."""
    acc = np.add.accumulate(X[X_VOLUME, e - _KMAX + 1 : e + 1][::-1]).tolist()  # as (60,) in `_close_bars`
    cols = []
    for i in range(n):
        k, b = _KL[i], _BL[i]
        X[b, e] = acc[k - 1]
        cols.append(X[X_CLOSE, e - RSI_BARS * k : e + 1 : k].tolist()[::-1])  # 15 closes, newest first
    ratios = [c[j] / c[j + 1] for c in cols for j in range(RSI_BARS)]
    logs = np.log(np.array(ratios)).tolist()  # (n * 14) bar log returns
    for i in range(n):
        k, b, C = _KL[i], _BL[i], cols[i]
        lr = logs[i * RSI_BARS : (i + 1) * RSI_BARS]
        s = lr[0]
        for x in lr[1:VOL_BARS]:
            s += x
        mean = s / VOL_BARS
        s = (lr[0] - mean) * (lr[0] - mean)
        for x in lr[1:VOL_BARS]:
            s += (x - mean) * (x - mean)
        vol = math.sqrt(s / VOL_BARS)
        gain = loss = 0.0
        for j in range(RSI_BARS):
            d = C[j] - C[j + 1]
            g, l_ = (d if d > 0.0 else 0.0), (-d if -d > 0.0 else 0.0)  # np.maximum(+-d, 0.0)
            if j:
                gain += g
                loss += l_
            else:
                gain, loss = g, l_
        vb = X[b, e - (VOLUME_BARS - 1) * k : e + 1 : k].tolist()  # bar volumes, oldest first
        s = vb[-1]
        for x in vb[-2::-1]:
            s += x
        den = gain + loss
        mv = s / VOLUME_BARS
        X[b + 1 : b + 5, e] = [
            lr[0], vol, gain / den if den != 0.0 else 0.5, vb[-1] / mv if mv != 0.0 else 1.0,
        ]  # fmt: skip


def _kernel_one(X: np.ndarray, p: int, out: np.ndarray) -> None:
    """`kernel` for the one column p (streaming): Python integers for the clock, and the ending
    timeframes are a prefix of TIMEFRAMES (60 is a multiple of 15, 15 of 5)."""
    u = int(X[X_TIME, p]) // MINUTE_MS + 1  # minutes since the epoch at the candle's end
    ds = [u % k for k in _KL]  # candles since each timeframe's last bar end
    n = 0
    while n < len(ds) and ds[n] == 0:
        n += 1
    if n:
        _close_bars_one(X, p, n)
    c = X[X_CLOSE, p].item()
    vals = [X[b + 1 : b + 5, p - d].tolist() + [X[X_CLOSE, p - d].item()] for b, d in zip(_BL, ds)]
    part = np.log(np.array([c / v[4] for v in vals])).tolist()
    out[:, 0] = [*vals[0][:4], part[0], *vals[1][:4], part[1], *vals[2][:4], part[2]]
