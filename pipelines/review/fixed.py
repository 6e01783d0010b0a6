"""Fixed-sample tests of "is one arm's mean loss lower": Welch, Cohen's d, block bootstrap, DM.

These are valid for ONE look at the data. Repeated reviews must use `pipelines.review.sequential`;
the Welch test here is kept because the 001 seed asks for it, and because showing its inflated
false-positive rate under repeated looks is part of the acceptance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from pipelines.review.arms import ABDataError
from pipelines.review.hac import newey_west_lag, newey_west_lrv, politis_white_block_length


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of mean(a) - mean(b), assuming iid rows (see module doc)."""

    diff: float  # mean(a) - mean(b)
    t: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float  # two-sided
    cohens_d: float  # diff / pooled sd


@dataclass(frozen=True)
class BootstrapCI:
    """Block-bootstrap percentile interval of mean(a) - mean(b)."""

    diff: float
    low: float
    high: float
    block_length_a: int
    block_length_b: int
    reps: int
    confidence: float


@dataclass(frozen=True)
class DMResult:
    """Diebold-Mariano test of E[loss_a - loss_b] = 0 on paired losses, HAC variance, HLN-corrected."""

    mean_diff: float  # mean(loss_a - loss_b); > 0 means b has lower loss
    se: float  # sqrt(LRV / n)
    dm: float  # mean_diff / se, asymptotically N(0, 1)
    dm_hln: float  # Harvey-Leybourne-Newbold small-sample corrected statistic, ~ t(n-1)
    p_value: float  # two-sided, from t(n-1) on dm_hln
    lag: int
    n: int


def welch_stats(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised Welch t-test along the last axis.

    Args:
        a: losses of arm a, shape (..., n_a).
        b: losses of arm b, shape (..., n_b).

    Returns:
        (diff, t, df, two-sided p, Cohen's d), each shape (...). t is nan when both variances are 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.shape[-1], b.shape[-1]
    ma, mb = a.mean(axis=-1), b.mean(axis=-1)
    va, vb = a.var(axis=-1, ddof=1), b.var(axis=-1, ddof=1)
    sa, sb = va / na, vb / nb
    se2 = sa + sb
    diff = ma - mb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
        df = se2 * se2 / (sa * sa / (na - 1) + sb * sb / (nb - 1))
        pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        d = diff / pooled
    p = 2.0 * stats.t.sf(np.abs(t), df)
    return diff, t, df, p, d


def welch_test(a: np.ndarray, b: np.ndarray) -> WelchResult:
    """Welch's t-test and Cohen's d (pooled sd) for two 1-D loss arrays (each n >= 2)."""
    diff, t, df, p, d = welch_stats(a, b)
    return WelchResult(float(diff), float(t), float(df), float(p), float(d))


def _block_means(x: np.ndarray, block: int, n_blocks: int, starts: np.ndarray) -> np.ndarray:
    """Mean of circular-block resamples of x: (reps,) from block starts (reps, n_blocks).

    The resample concatenates n_blocks blocks of length `block` from the circularly wrapped series
    and truncates to len(x); its mean only needs block sums, read off one cumulative sum.
    """
    n = x.size
    wrapped = np.concatenate([x, x[:block]])  # circular: a block may run past the end
    c = np.concatenate([[0.0], np.cumsum(wrapped)])
    full = c[starts + block] - c[starts]  # (reps, n_blocks)
    last_len = n - (n_blocks - 1) * block  # the last block is cut to fill exactly n rows
    total = full[:, :-1].sum(axis=1) + (c[starts[:, -1] + last_len] - c[starts[:, -1]])
    return total / n


def block_bootstrap_diff_ci(
    a: np.ndarray,
    b: np.ndarray,
    *,
    confidence: float = 0.95,
    reps: int = 2000,
    seed: int = 0,
    block_length: int | str = "politis-white",
) -> BootstrapCI:
    """Circular block bootstrap CI of mean(a) - mean(b) for two independent, autocorrelated series.

    Each arm is resampled on its own (split traffic: arms see different requests), with blocks
    long enough to keep the within-arm dependence.

    Args:
        a: losses of arm a, 1-D.
        b: losses of arm b, 1-D.
        confidence: two-sided coverage.
        reps: bootstrap replications.
        seed: RNG seed (results are reproducible).
        block_length: an int, "politis-white" (automatic, per arm) or "cube-root" (ceil(n^(1/3))).

    Returns:
        BootstrapCI with the percentile interval.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)

    def _len(x: np.ndarray) -> int:
        if isinstance(block_length, int):
            return max(1, min(block_length, x.size))
        if block_length == "cube-root":
            return max(1, int(math.ceil(x.size ** (1 / 3))))
        if block_length == "politis-white":
            return politis_white_block_length(x)
        raise ABDataError(
            f"block_length must be an int, 'politis-white' or 'cube-root', got {block_length!r}"
        )

    def _resampled_means(x: np.ndarray, block: int) -> np.ndarray:
        n_blocks = int(math.ceil(x.size / block))
        starts = rng.integers(0, x.size, size=(reps, n_blocks))
        return _block_means(x, block, n_blocks, starts)

    la, lb = _len(a), _len(b)
    boot = _resampled_means(a, la) - _resampled_means(b, lb)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return BootstrapCI(float(a.mean() - b.mean()), float(low), float(high), la, lb, reps, confidence)


def paired_block_bootstrap_ci(
    d: np.ndarray, *, block_length: int = 60, confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> BootstrapCI:
    """Circular block bootstrap CI of mean(d) for a paired difference d = a - b (both forecasts judged on
    the same rows, resampled together: far narrower than comparing two marginal intervals). Blocks of
    `block_length` rows keep the autocorrelation of overlapping multi-step labels inside a block."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, 0, 0, reps, confidence)
    block = max(1, min(int(block_length), d.size))
    n_blocks = int(math.ceil(d.size / block))
    starts = np.random.default_rng(seed).integers(0, d.size, size=(reps, n_blocks))
    boot = _block_means(d, block, n_blocks, starts)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return BootstrapCI(float(d.mean()), float(low), float(high), block, block, reps, confidence)


def hln_factor(n: int, horizon: int) -> float:
    """Harvey-Leybourne-Newbold (1997) multiplier sqrt((n + 1 - 2h + h(h-1)/n) / n) for the DM stat."""
    return math.sqrt(max(n + 1 - 2 * horizon + horizon * (horizon - 1) / n, 0.0) / n)


def diebold_mariano(
    loss_a: np.ndarray, loss_b: np.ndarray, *, horizon: int = 1, lag: int | None = None
) -> DMResult:
    """Diebold-Mariano test on the loss differential d = loss_a - loss_b of paired forecasts.

    Var(mean d) uses the Newey-West LRV with lag = max(h - 1, floor(4 (n/100)^(2/9))) unless
    `lag` is given; the statistic gets the HLN small-sample correction and a t(n-1) reference.

    Args:
        loss_a: per-request loss of forecaster a, (n,).
        loss_b: per-request loss of forecaster b on the same requests, (n,).
        horizon: forecast horizon h in steps.
        lag: HAC truncation lag; None = automatic (see above).

    Returns:
        DMResult; p_value is nan when the differential is constant (no information).
    """
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = d.size
    lag = newey_west_lag(n, horizon - 1) if lag is None else lag
    mean = float(d.mean())
    se = math.sqrt(max(float(newey_west_lrv(d, lag)), 0.0) / n)
    if se == 0.0:
        dm = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = float("nan") if mean == 0.0 else 0.0
        return DMResult(mean, se, dm, dm, p, lag, n)
    dm = mean / se
    dm_hln = dm * hln_factor(n, horizon)
    p = float(2.0 * stats.t.sf(abs(dm_hln), n - 1))
    return DMResult(mean, se, dm, dm_hln, p, lag, n)
