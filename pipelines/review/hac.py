"""Long-run (HAC) variance of autocorrelated series: Newey-West, its lag rule, block lengths.

Per-minute forecast losses are autocorrelated (overlapping horizons, volatility clustering), so
Var(mean) is LRV / n with LRV = gamma_0 + 2 * sum_j w_j gamma_j, not gamma_0 / n. All functions
work along the last axis and broadcast over leading axes (e.g. (experiments, n)) so a simulation
can run thousands of experiments in one call.
"""

from __future__ import annotations

import math

import numpy as np


def newey_west_lag(n: int, min_lag: int = 0) -> int:
    """Newey-West (1994) rule of thumb floor(4 (n/100)^(2/9)), at least `min_lag` (h - 1 for h-step).

    Args:
        n: sample size.
        min_lag: lower bound; an h-step forecast's losses are MA(h-1) under the null, so h - 1.

    Returns:
        The truncation lag, in [min_lag, n - 1] (0 when n <= 1).
    """
    if n <= 1:
        return 0
    rule = int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))
    return int(min(max(rule, min_lag), n - 1))


def autocovariances(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Biased sample autocovariances gamma_0..gamma_L (divisor n), shape (..., L+1)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    xc = x - x.mean(axis=-1, keepdims=True)
    out = [np.einsum("...t,...t->...", xc[..., j:], xc[..., : n - j]) / n for j in range(max_lag + 1)]
    return np.stack(out, axis=-1)


def newey_west_lrv(x: np.ndarray, lag: int | None = None, *, min_lag: int = 0) -> np.ndarray:
    """Newey-West long-run variance with Bartlett weights w_j = 1 - j / (lag + 1).

    Args:
        x: series, shape (..., n), time on the last axis.
        lag: truncation lag; None = `newey_west_lag(n, min_lag)`.
        min_lag: lower bound for the automatic lag.

    Returns:
        LRV estimate, shape (...); Var(mean of x) ~= LRV / n. Non-negative (Bartlett kernel).
    """
    n = np.shape(x)[-1]
    lag = newey_west_lag(n, min_lag) if lag is None else int(min(lag, max(n - 1, 0)))
    g = autocovariances(x, lag)
    w = 1.0 - np.arange(1, lag + 1) / (lag + 1.0)
    return g[..., 0] + 2.0 * (g[..., 1:] * w).sum(axis=-1)


def effective_sample_size(x: np.ndarray, *, min_lag: int = 0) -> float:
    """n * gamma_0 / LRV for a 1-D series, capped at n (so positive autocorrelation shrinks it)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    g0 = float(x.var())
    lrv = float(newey_west_lrv(x, min_lag=min_lag))
    if g0 <= 0 or lrv <= 0:
        return float(n)
    return float(min(n, n * g0 / lrv))


def prefix_mean_lrv(
    x: np.ndarray, cutoffs: np.ndarray, *, min_lag: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Newey-West LRV of every prefix x[..., :c] for c in `cutoffs`, in one pass.

    Equivalent to calling `newey_west_lrv(x[..., :c])` per cutoff (same automatic lag per prefix),
    but costs O(n * L) instead of O(K * n * L) by using cumulative sums of lagged products:
    n * gamma_j(c) = S_j(c) - m (P_j(c) + Q_j(c)) + (c - j) m^2, with S_j the sum of x_t x_{t-j},
    P_j / Q_j the sums of the two overlapping windows and m the prefix mean.

    Args:
        x: series, shape (..., n).
        cutoffs: prefix lengths, int (K,), each in [2, n].
        min_lag: lower bound for the automatic lag (h - 1).

    Returns:
        (means (..., K), lrvs (..., K), lags (K,)).
    """
    x = np.asarray(x, dtype=np.float64)
    cut = np.asarray(cutoffs, dtype=np.int64)
    # Shifting by a constant leaves every centred moment unchanged and avoids cancellation when
    # the mean is large relative to the spread (0/1 losses have mean ~0.5, sd ~0.5).
    shift = x.mean(axis=-1, keepdims=True)
    x = x - shift
    lags = np.array([newey_west_lag(int(c), min_lag) for c in cut], dtype=np.int64)
    csum = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)  # (..., n+1)
    total = csum[..., cut]  # (..., K)
    m = total / cut
    cf = cut.astype(np.float64)
    lrv = np.zeros(x.shape[:-1] + (cut.size,))
    for j in range(int(lags.max()) + 1 if lags.size else 0):
        prod = x[..., j:] * x[..., : x.shape[-1] - j]  # (..., n-j), product ending at t = j..n-1
        ps = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(prod, axis=-1)], axis=-1)
        valid = cut > j
        idx = np.clip(cut - j, 0, None)
        s = ps[..., idx]  # sum_{t=j}^{c-1} x_t x_{t-j}
        p = total - csum[..., np.minimum(j, cut)]  # sum_{t=j}^{c-1} x_t
        q = csum[..., idx]  # sum_{t=0}^{c-1-j} x_t
        g = (s - m * (p + q) + (cf - j) * m * m) / cf
        g = np.where(valid, g, 0.0)
        if j == 0:
            lrv = lrv + g
        else:
            w = np.where(j <= lags, 1.0 - j / (lags + 1.0), 0.0)
            lrv = lrv + 2.0 * w * g
    return m + shift, lrv, lags


def politis_white_block_length(x: np.ndarray, *, circular: bool = True) -> int:
    """Automatic block length for the (circular) block bootstrap of a mean.

    Politis & White (2004) with the Patton, Politis & White (2009) correction: pick a bandwidth M
    from the first lag where autocorrelations stop being significant, estimate the spectral
    quantities G and g(0) with a flat-top kernel, and set b = (2 G^2 / D)^(1/3) n^(1/3) with
    D = 4/3 g(0)^2 (circular) or 2 g(0)^2 (stationary). Falls back to ceil(n^(1/3)) when the
    series is constant. Result is clipped to [1, min(3 sqrt(n), n / 3)].
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n < 4:
        return 1
    b_max = max(1, int(math.ceil(min(3.0 * math.sqrt(n), n / 3.0))))
    k_n = max(5, int(math.ceil(math.sqrt(math.log10(n)))))
    m_max = int(math.ceil(math.sqrt(n))) + k_n
    g = autocovariances(x, min(m_max, n - 1))
    if g[0] <= 0:
        return max(1, int(math.ceil(n ** (1 / 3))))
    rho = g[1:] / g[0]
    thresh = 2.0 * math.sqrt(math.log10(n) / n)
    m_hat = None
    for m in range(1, rho.size - k_n + 1):
        # first m such that the next k_n autocorrelations are all insignificant
        if np.all(np.abs(rho[m - 1 : m - 1 + k_n]) < thresh):
            m_hat = m - 1
            break
    if m_hat is None:
        m_hat = rho.size
    big_m = min(2 * max(m_hat, 1), rho.size)
    k = np.arange(-big_m, big_m + 1)
    t = np.abs(k) / big_m
    lam = np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2.0 * (1.0 - t), 0.0))
    r = g[np.abs(k)]
    big_g = float(np.sum(lam * np.abs(k) * r))
    g0 = float(np.sum(lam * r))
    d = (4.0 / 3.0 if circular else 2.0) * g0 * g0
    if d <= 0 or big_g == 0:
        return max(1, int(math.ceil(n ** (1 / 3))))
    b = (2.0 * big_g * big_g / d) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    return int(min(max(1, math.ceil(b)), b_max))
