"""Always-valid sequential test of a mean loss difference: normal-mixture SPRT with HAC variance.

Why this method (and not Lan-DeMets alpha spending): the review runs hourly for as long as the
experiment lives, so neither the number of looks nor the final sample size is known in advance;
alpha-spending boundaries need both (a planned maximum information and a spending schedule), and
unplanned extra looks break them. A mixture SPRT (Robbins 1970; Johari et al. 2017, "always-valid
inference") gives a p-value and a confidence sequence that hold simultaneously over ALL sample
sizes, so any number of reviews at any times is fine. Price: at one pre-planned n it is less
powerful than a fixed-n test (its boundary is ~3 sd instead of 1.96 sd near plan_n).

Model: the estimate theta_hat (mean loss difference, champion - challenger) after n rows is
approximately N(theta, V) with V = LRV / n, where LRV is the Newey-West long-run variance, so
autocorrelated losses are accounted for (the iid V = var / n would be too small). Mixing the
likelihood ratio over theta ~ N(0, tau^2) gives

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 theta_hat^2 / (2 V (V + tau^2)))

and P(sup_n Lambda_n >= 1/alpha) <= alpha under H0 (Ville's inequality on the Brownian limit).
The always-valid p-value is the running min of 1/Lambda; the confidence sequence is
{theta : Lambda(theta_hat - theta) < 1/alpha}, intersected over looks.

tau (the effect scale the test is tuned for) must not depend on later data, or the mixture stops
being a fixed prior. It is fixed from the burn-in prefix (the first `min_samples` rows, which no
later look changes): tau^2 = LRV_prefix / (r* plan_n), where r* makes the boundary tightest at
n = plan_n. Looks before `min_samples` rows are not evaluated (the HAC plug-in needs data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from pipelines.review.hac import newey_west_lrv, prefix_mean_lrv

METHOD = "normal-mixture SPRT (always-valid), Newey-West HAC variance"


@dataclass(frozen=True)
class SequentialResult:
    """The sequential test at each look (arrays of shape (..., K), looks on the last axis)."""

    n: np.ndarray  # rows per arm at each look (int)
    estimate: np.ndarray  # theta_hat: mean loss(champion) - mean loss(challenger); > 0 favours challenger
    variance: np.ndarray  # V = LRV / n (paired) or LRV_a / n_a + LRV_b / n_b (split)
    log_lambda: np.ndarray  # log mixture likelihood ratio; 0 at looks not evaluated
    p_value: np.ndarray  # always-valid p-value: running min over looks of min(1, 1/Lambda)
    ci_low: np.ndarray  # confidence sequence for theta, running intersection over looks
    ci_high: np.ndarray
    tau2: np.ndarray  # mixture variance used, shape (...)
    alpha: float

    @property
    def rejected(self) -> np.ndarray:
        """Whether H0 (no difference) was rejected at or before each look, (..., K) bool."""
        return self.p_value <= self.alpha

    @property
    def first_rejection(self) -> np.ndarray:
        """Index of the first rejecting look, -1 if none, shape (...)."""
        rej = self.rejected
        return np.where(rej.any(axis=-1), rej.argmax(axis=-1), -1)


def optimal_r(alpha: float) -> float:
    """r* = V / tau^2 at which the mixture boundary on |theta_hat| / sqrt(V) is smallest.

    The boundary is z^2(r) = (1 + r) (2 ln(1/alpha) + ln(1 + 1/r)); setting dz^2/dr = 0 gives
    2 ln(1/alpha) + ln(1 + 1/r) = 1/r (r* ~= 0.12 at alpha = 0.05).
    """
    c = 2.0 * math.log(1.0 / alpha)
    return float(optimize.brentq(lambda r: c + math.log1p(1.0 / r) - 1.0 / r, 1e-6, 10.0))


def mixture_tau2(lrv_per_row: np.ndarray | float, plan_n: int, alpha: float) -> np.ndarray:
    """tau^2 = LRV / (r* plan_n): the mixture tuned so its boundary is tightest at n = plan_n rows."""
    return np.asarray(lrv_per_row, dtype=np.float64) / (optimal_r(alpha) * plan_n)


def log_mixture_lr(theta_hat: np.ndarray, v: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    """log Lambda for estimate theta_hat ~ N(theta, v) against H0: theta = 0, theta ~ N(0, tau2)."""
    theta_hat, v, tau2 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (theta_hat, v, tau2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * np.log(v / (v + tau2)) + tau2 * theta_hat**2 / (2.0 * v * (v + tau2))
    # v == 0: a constant differential; no evidence if it is 0, conclusive otherwise
    return np.where(v > 0, out, np.where(theta_hat == 0, 0.0, np.inf))


def cs_halfwidth(v: np.ndarray, tau2: np.ndarray, alpha: float) -> np.ndarray:
    """Half-width of the (1 - alpha) confidence sequence at a look with estimate variance v."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((v + tau2) / v)))
    return np.where(v > 0, w, 0.0)


def sequential_from_estimates(
    n: np.ndarray, theta_hat: np.ndarray, v: np.ndarray, tau2: np.ndarray, evaluated: np.ndarray, alpha: float
) -> SequentialResult:
    """Assemble the always-valid p-values and the confidence sequence from per-look estimates.

    Args:
        n: rows per arm at each look, (K,).
        theta_hat: estimates, (..., K).
        v: their variances, (..., K).
        tau2: mixture variance, (...) (fixed across looks).
        evaluated: which looks count (enough rows), bool (K,) or (..., K).
        alpha: level.
    """
    t2 = np.asarray(tau2, dtype=np.float64)[..., None]
    log_lam = np.where(evaluated, log_mixture_lr(theta_hat, v, t2), 0.0)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lam)), axis=-1)
    half = cs_halfwidth(v, t2, alpha)
    low = np.where(evaluated, theta_hat - half, -np.inf)
    high = np.where(evaluated, theta_hat + half, np.inf)
    return SequentialResult(
        n=np.asarray(n),
        estimate=np.asarray(theta_hat, dtype=np.float64),
        variance=np.asarray(v, dtype=np.float64),
        log_lambda=log_lam,
        p_value=p,
        ci_low=np.maximum.accumulate(low, axis=-1),
        ci_high=np.minimum.accumulate(high, axis=-1),
        tau2=np.asarray(tau2, dtype=np.float64),
        alpha=alpha,
    )


def _tau2_from_prefix(
    lrv_prefix: np.ndarray, lrv_fallback: np.ndarray, plan_n: int, alpha: float
) -> np.ndarray:
    """tau^2 from the burn-in LRV; a constant burn-in (LRV 0) falls back to the newest look's LRV."""
    lrv = np.where(lrv_prefix > 0, lrv_prefix, lrv_fallback)
    lrv = np.where(lrv > 0, lrv, 1e-12)  # all-constant: any tau works since theta_hat and V are 0
    return mixture_tau2(lrv, plan_n, alpha)


def sequential_paired(
    d: np.ndarray,
    cutoffs: np.ndarray,
    *,
    alpha: float = 0.05,
    min_samples: int = 100,
    plan_n: int = 10_000,
    horizon: int = 1,
) -> SequentialResult:
    """Always-valid test of E[d] = 0 for a paired loss differential d = loss_champ - loss_chall.

    Args:
        d: differential, (..., n) in request order (leading axes: independent experiments).
        cutoffs: rows seen at each look, increasing int (K,), each <= n.
        alpha: level (family-wise over all looks, past and future).
        min_samples: burn-in rows: fixes tau and is the first look that is evaluated.
        plan_n: rows at which the test is tuned to be most powerful.
        horizon: forecast horizon (HAC lag >= h - 1).
    """
    d = np.asarray(d, dtype=np.float64)
    cut = np.asarray(cutoffs, dtype=np.int64)
    # clip tiny cutoffs so the prefix moments are defined; those looks are masked out anyway
    m, lrv, _ = prefix_mean_lrv(d, np.maximum(cut, 2), min_lag=horizon - 1)
    v = lrv / np.maximum(cut, 1)
    burn = min(min_samples, d.shape[-1])
    lrv0 = newey_west_lrv(d[..., :burn], min_lag=horizon - 1) if burn >= 2 else np.zeros(d.shape[:-1])
    tau2 = _tau2_from_prefix(lrv0, lrv[..., -1], plan_n, alpha)
    return sequential_from_estimates(cut, m, v, tau2, cut >= min_samples, alpha)


def sequential_split(
    loss_champ: np.ndarray,
    loss_chall: np.ndarray,
    cutoffs_champ: np.ndarray,
    cutoffs_chall: np.ndarray,
    *,
    alpha: float = 0.05,
    min_samples: int = 100,
    plan_n: int = 10_000,
    horizon: int = 1,
) -> SequentialResult:
    """Always-valid test of mean(loss_champ) = mean(loss_chall) for split (independent) traffic.

    V = LRV_champ / n_champ + LRV_chall / n_chall (each arm's own HAC; the arms serve different
    requests). Ignoring positive cross-arm correlation from shared market conditions only makes
    V larger, i.e. conservative. `n` below is the smaller arm's count, and min_samples / plan_n
    are per arm.

    Args:
        loss_champ: (..., n_a); loss_chall: (..., n_b), each in request order.
        cutoffs_champ, cutoffs_chall: rows of each arm seen at each look, int (K,).
        alpha, min_samples, plan_n, horizon: as in `sequential_paired`.
    """
    ca = np.asarray(cutoffs_champ, dtype=np.int64)
    cb = np.asarray(cutoffs_chall, dtype=np.int64)
    ma, lrva, _ = prefix_mean_lrv(loss_champ, np.maximum(ca, 2), min_lag=horizon - 1)
    mb, lrvb, _ = prefix_mean_lrv(loss_chall, np.maximum(cb, 2), min_lag=horizon - 1)
    n = np.minimum(ca, cb)
    v = lrva / np.maximum(ca, 1) + lrvb / np.maximum(cb, 1)
    # Burn-in: the first min_samples rows of EACH arm (fixed data, whatever the look schedule);
    # V ~ (LRV_a + LRV_b) / n at equal counts, so that sum is the per-row scale for tau^2.
    a = np.asarray(loss_champ, dtype=np.float64)
    b = np.asarray(loss_chall, dtype=np.float64)
    burn = min(min_samples, a.shape[-1], b.shape[-1])
    if burn >= 2:
        lag = horizon - 1
        lrv0 = newey_west_lrv(a[..., :burn], min_lag=lag) + newey_west_lrv(b[..., :burn], min_lag=lag)
    else:
        lrv0 = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]))
    tau2 = _tau2_from_prefix(lrv0, v[..., -1] * n[-1], plan_n, alpha)
    return sequential_from_estimates(n, ma - mb, v, tau2, n >= min_samples, alpha)
