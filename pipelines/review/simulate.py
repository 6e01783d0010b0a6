"""Monte-Carlo check of the sequential test: false-positive rate and power under repeated looks.

Each simulated experiment is one A/B test reviewed `looks` times at equally spaced sample sizes;
a method "fires" if any look rejects (stop at first significance). Experiments are simulated in
blocks of (experiments, n) arrays so thousands run in seconds on one core.

Scenarios (per-request losses, time on the last axis):
- "direction": 0/1 direction misses. Each arm's latent error z_t is AR(1) (rho) with unit variance;
  a miss is z_t > Phi^-1(accuracy). In shadow (paired) mode both arms share a common AR(1)
  component with weight `arm_corr` (two similar models mostly agree), in split mode they do not.
- "gaussian": the per-request loss itself is 1 + AR(1) noise (rho), challenger mean 1 - effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from scipy.signal import lfilter

from pipelines.review.fixed import welch_stats
from pipelines.review.sequential import sequential_paired, sequential_split


@dataclass(frozen=True)
class SimResult:
    """Share of experiments in which each method declared a difference at any look."""

    scenario: str
    paired: bool
    experiments: int
    n: int  # rows per arm at the last look
    looks: int
    effect: float  # accuracy lift (direction) or mean-loss reduction (gaussian)
    sequential_rate: float  # always-valid mixture SPRT with HAC variance
    naive_any_look_rate: float  # iid Welch at every look, stop at first p < alpha
    naive_last_look_rate: float  # iid Welch once, at the last look only
    naive_paired_any_look_rate: float  # shadow only: iid paired t-test at every look (nan for split)
    hac_last_look_rate: float  # HAC z-test once at the last look (fixed-n, autocorrelation-aware)

    def binomial_upper(self, rate: float, confidence: float = 0.99) -> float:
        """Upper end of the Clopper-Pearson interval for a rate over `experiments` trials."""
        k = round(rate * self.experiments)
        if k >= self.experiments:
            return 1.0
        return float(stats.beta.ppf(0.5 + confidence / 2, k + 1, self.experiments - k))


def ar1(rng: np.random.Generator, shape: tuple[int, int], rho: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series along the last axis, shape (experiments, n)."""
    eps = rng.standard_normal(shape)
    eps *= math.sqrt(1.0 - rho * rho)  # innovation sd so the stationary variance is 1
    eps[:, 0] /= math.sqrt(1.0 - rho * rho)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -rho], eps, axis=-1)


def simulate_losses(
    rng: np.random.Generator,
    scenario: Literal["direction", "gaussian"],
    paired: bool,
    experiments: int,
    n: int,
    *,
    rho: float = 0.3,
    effect: float = 0.0,
    base_accuracy: float = 0.5,
    arm_corr: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-request losses (champion, challenger), each (experiments, n); lower is better."""
    shape = (experiments, n)
    if scenario == "gaussian":
        return 1.0 + ar1(rng, shape, rho), 1.0 - effect + ar1(rng, shape, rho)
    c = arm_corr if paired else 0.0
    common = ar1(rng, shape, rho) if c > 0 else 0.0
    z_a = math.sqrt(c) * common + math.sqrt(1 - c) * ar1(rng, shape, rho)
    z_b = math.sqrt(c) * common + math.sqrt(1 - c) * ar1(rng, shape, rho)
    miss_a = (z_a > stats.norm.ppf(base_accuracy)).astype(np.float64)
    miss_b = (z_b > stats.norm.ppf(base_accuracy + effect)).astype(np.float64)
    return miss_a, miss_b


def simulate(
    scenario: Literal["direction", "gaussian"],
    *,
    paired: bool,
    experiments: int = 1000,
    n: int = 4000,
    looks: int = 20,
    rho: float = 0.3,
    effect: float = 0.0,
    alpha: float = 0.05,
    min_samples: int = 100,
    plan_n: int = 10_000,
    arm_corr: float = 0.8,
    seed: int = 0,
    block: int = 200,
) -> SimResult:
    """Run `experiments` simulated A/B tests, each reviewed at `looks` equally spaced sizes.

    Args:
        scenario: "direction" (0/1 misses) or "gaussian" (continuous AR(1) loss).
        paired: shadow traffic (sequential_paired on the differential) or split.
        experiments: Monte-Carlo replications.
        n: rows per arm at the last look.
        looks: reviews per experiment (equally spaced, the last at n).
        rho: AR(1) coefficient of the errors.
        effect: 0 for the null; accuracy lift (direction) or loss reduction (gaussian).
        alpha, min_samples, plan_n: passed to the sequential test.
        arm_corr: shadow mode only: share of latent error common to both arms.
        seed: RNG seed.
        block: experiments per vectorised block (memory ~ 8 * 4 * block * n bytes).
    """
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.linspace(n / looks, n, looks).round().astype(np.int64))
    seq_hits = naive_any = naive_last = hac_last = paired_any = 0
    z_crit = stats.norm.ppf(1 - alpha / 2)
    for start in range(0, experiments, block):
        e = min(block, experiments - start)
        la, lb = simulate_losses(rng, scenario, paired, e, n, rho=rho, effect=effect, arm_corr=arm_corr)
        if paired:
            res = sequential_paired(la - lb, cuts, alpha=alpha, min_samples=min_samples, plan_n=plan_n)
        else:
            res = sequential_split(la, lb, cuts, cuts, alpha=alpha, min_samples=min_samples, plan_n=plan_n)
        seq_hits += int(res.rejected[:, -1].sum())
        with np.errstate(invalid="ignore"):
            z_last = np.abs(res.estimate[:, -1]) / np.sqrt(res.variance[:, -1])
        hac_last += int((z_last > z_crit).sum())
        fired = np.zeros(e, dtype=bool)
        for c in cuts:
            p = welch_stats(la[:, :c], lb[:, :c])[3]
            fired |= p < alpha
        naive_any += int(fired.sum())
        if paired:  # iid paired t-test: right pairing, wrong (iid) variance
            fired_p = np.zeros(e, dtype=bool)
            for c in cuts:
                p_d = stats.ttest_1samp(la[:, :c] - lb[:, :c], 0.0, axis=-1).pvalue
                fired_p |= p_d < alpha
            paired_any += int(fired_p.sum())
        naive_last += int((p < alpha).sum())
    k = float(experiments)
    return SimResult(
        scenario=scenario,
        paired=paired,
        experiments=experiments,
        n=n,
        looks=int(cuts.size),
        effect=effect,
        sequential_rate=seq_hits / k,
        naive_any_look_rate=naive_any / k,
        naive_last_look_rate=naive_last / k,
        hac_last_look_rate=hac_last / k,
        naive_paired_any_look_rate=paired_any / k if paired else float("nan"),
    )
