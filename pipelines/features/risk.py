"""risk: tail, realised-moment, momentum-persistence and regime features, as one kernel.

Same engine as core27 (see its docstring): the kernel computes new columns [lo, hi) of a work matrix
X from those columns and the LAGS before them, plus a carried state; batch (chunks of 8192 columns)
and streaming (one column) run the same code and agree bit for bit. The seed document's "Taleb
antifragility" (tail risk, Extreme Value Theory) and "Gary DPI" (regime detection, momentum
persistence) parts name these features.

Input: 1-minute candles (close, and open_time for the refit clock), consecutive, as validation
guarantees. r_t = ln(close_t / close_{t-1}) is the 1-minute log return; at a history's first candle
the close before is taken equal to it (r_0 = 0, masked). Features at candle t read candles <= t only.

Definitions (defaults in brackets apply where a denominator is 0, e.g. a window of unchanged closes):

 hill_left, hill_right   Hill (1975) estimate of the extreme-value index xi = 1/alpha (alpha the
     tail index) of losses -r (left) and gains r (right) over the last HILL_WINDOW = 240 returns with
     k = HILL_K = 24 order statistics: with X_(1) >= ... >= X_(k+1) the largest tail values,
     H = (1/k) sum_{i<=k} ln X_(i) - ln X_(k+1), evaluated as (1/k) sum_j max(ln x_j - ln X_(k+1), 0)
     over the whole window (the same number: only values above X_(k+1) contribute, ties add 0).
     Defined only when X_(k+1) > 0, i.e. at least k+1 = 25 strictly positive tail values (1-minute
     returns are often exactly 0 at the tick size); [0.0] otherwise (no tail information).
 evt_var_99, evt_es_99   conditional EVT value-at-risk and expected shortfall of the NEXT candle's
     loss -r_{t+1} at EVT_Q = 99 %, as positive log-return losses (= loss fractions to within
     VaR^2/2), after McNeil & Frey (2000, "Estimation of tail-related risk measures for
     heteroscedastic financial time series"), with an EWMA volatility in place of their GARCH:
       sigma^2_{t+1|t} = lambda sigma^2_{t|t-1} + (1 - lambda) r_t^2, lambda = EWMA_LAMBDA = 0.94
       (RiskMetrics; per candle, half-life 11.2 minutes), started at 0 before the first candle;
       z_t = -r_t / sigma_{t|t-1} the standardised losses (zero mean assumed: 1-minute mean returns
       are ~1 % of their std) [z = 0 while sigma = 0].
     Refit: at every candle whose open_time is a multiple of REFIT_MS = 60 minutes since the epoch
     (a wall-clock schedule: the same refit candles whatever the history's first candle), a
     generalized Pareto distribution is fitted to the exceedances of the last EVT_WINDOW = 1440
     standardised losses (that candle included) over the threshold u = the (k+1)-th largest of them,
     k = EVT_EXCEED = 144 (u is the window's empirical 90 % quantile; k/n = 0.1, as McNeil & Frey's
     k = 100 of n = 1000). Tail estimator P(Z > z) = (k/n)(1 + xi (z - u)/beta)^(-1/xi), hence
       z_q = u + (beta/xi) [((1 - q) n/k)^(-xi) - 1]      (u - beta ln((1 - q) n/k) at xi = 0),
       ES_z = (z_q + beta - xi u) / (1 - xi)              (mean of Z beyond z_q; needs xi < 1),
     and evt_var_99 = sigma_{t+1|t} z_q, evt_es_99 = sigma_{t+1|t} ES_z. Between refits the last
     fit (u, xi, beta, z_q, ES_z) is carried in the state and scaled by the current volatility.
     GPD fit: probability-weighted moments (Hosking & Wallis 1987), not scipy's MLE: on the
     exceedances y_(1) <= ... <= y_(k), a0 = mean(y), a1 = (1/k) sum_i (k-i)/(k-1) y_(i) (unbiased
     estimator of E[Y (1 - F(Y))]); xi = 2 - a0/(a0 - 2 a1), beta = 2 a0 a1/(a0 - 2 a1) [xi = 0,
     beta = a0 when a0 - 2 a1 <= 0, i.e. all exceedances equal]; xi is capped at XI_MAX = 0.9 (the
     ES needs xi < 1; FILUSDT 2023-08's 710 hourly fits give xi in [-0.36, 0.70]). Why PWM: closed
     form, ~24 us per refit (vectorised over all refits of a batch, or alone when streaming), while
     scipy.stats.genpareto.fit (MLE, floc=0) took 3.9 ms median / 7 ms max per refit on the same
     windows (2-core machine): ~65 s for the ~16,700 refits of a 1M-candle batch, and 100x the
     streaming budget. The two agree to |xi_MLE - xi_PWM| <= 0.10 (95 %), z_q within 4.3 % (95 %).
     The tests check z_q / ES_z against scipy.stats.genpareto (ppf, mean of the excess) at the
     same refit candles.
 realised_skew_60, realised_kurt_60   population (biased, ddof=0) skewness m3/m2^1.5 and excess
     kurtosis m4/m2^2 - 3 of the last MOM_WINDOW = 60 returns, m_k the central moments [0.0, 0.0
     when m2 <= FLAT_TOL * mean(r^2): a window of (near-)equal returns].
 semivar_up_60, semivar_down_60   realised semivariances (Barndorff-Nielsen, Kinnebrock & Shephard
     2010) as shares of realised variance RV = sum r^2 over the last 60 returns:
     sum r^2 [r > 0] / RV and sum r^2 [r < 0] / RV (zero returns count in neither; the two add up to
     1 up to rounding) [0.5, 0.5 when RV = 0].
 jump_share_60   max(0, 1 - BV/RV) over the last 60 returns (Barndorff-Nielsen & Shephard 2004),
     BV = (pi/2) (n/(n-1)) sum_{i=2..n} |r_i| |r_{i-1}| (n = 60; the 59 adjacent pairs inside the
     window), i.e. BV/RV = (pi/2) mean_pairs |r_i r_{i-1}| / mean r^2 [0.0 when RV = 0].
 drawdown_240   close_t / max(close_{t-239..t}) - 1 (<= 0).
 variance_ratio_240   Lo & MacKinlay (1988) VR(q), q = VR_Q = 5, over the last n = 240 returns with
     overlapping q-sums and their bias corrections: mu = mean r, sa^2 = sum (r - mu)^2 / (n - 1),
     sc^2 = sum_{j} (r_j + ... + r_{j-q+1} - q mu)^2 / m over the n - q + 1 = 236 q-sums inside the
     window, m = q (n - q + 1)(1 - q/n); VR = sc^2 / sa^2 (~1 for a random walk, > 1 momentum,
     < 1 mean reversion) [1.0 when sum (r - mu)^2 <= FLAT_TOL * sum r^2].
 autocorr_1_240   lag-1 sample autocorrelation of the last 240 returns (Box-Jenkins, as
     statsmodels' acf): sum_{i=2..n} (r_i - mu)(r_{i-1} - mu) / sum_{i=1..n} (r_i - mu)^2 [0.0 when
     flat, as above].
 regime_p0..regime_p3   filtered probabilities P(state_t = j | r_1..r_t) of a 4-state Gaussian HMM
     on the raw 1-minute log returns (emission N(mu_j, sigma_j^2)), states sorted by variance
     (p0 the calmest). Parameters are FITTED ON TRAINING ROWS by `fit` (Baum-Welch EM, below) and
     passed in `params`; the forward recursion runs from the history's first candle: the prior for
     r_1 is the fitted initial distribution pi, then p_t = normalise(prior_t * b(r_t)),
     prior_{t+1} = p_t A. Emission densities are evaluated relative to the largest one (exp of the
     log-density minus its max; the constant cancels in the normalisation); where every state with
     prior mass has an underflowed density (|r| beyond ~38 sigma of all of them), p_t = normalised
     densities (the observation decides). The recursion forgets its start geometrically; its values
     are reported from REGIME_WARMUP candles on (see "Warm-up").
     Price discreteness: 1-minute returns sit on a tick grid with many exact zeros (FILUSDT 25 %,
     NEARUSDT 42 %). On FILUSDT the states are volatility levels (variances 0.24 / 0.64 / 1.8 / 26
     x var(r), persistence A_jj 0.98 / 0.98 / 0.97 / 0.73); on NEARUSDT the calmest state sits at the
     variance floor and absorbs unchanged-price minutes (A_00 ~ 0.4): p0 then reads "the price did
     not move" more than "calm regime" (an interval-censored emission would model the tick).

Regime fit (`fit`, training rows only): returns r of the given candles, standardised by their std
s for conditioning (the parameters are returned in raw units); Baum-Welch EM (Rabiner 1989) with
normalised (scaled) forward/backward vectors; variance floor VAR_FLOOR = 0.01 * var(r) (keeps a
state from collapsing onto the many exactly-zero returns); N_RESTARTS = 5 starts from fixed seeds
0..4 (variances log-uniform in [0.05, 5] var(r), means ~N(0, 0.05^2) var(r), A = 0.9 I + 0.1
Dirichlet rows, pi uniform), each iterated SHORT_ITER = 10 times ("short runs", Biernacki, Celeux &
Govaert 2003), then the one with the best log-likelihood is iterated to convergence (increase of
the log-likelihood < EM_TOL = 1e-7 per observation, at most MAX_ITER = 500 iterations in all); the
states are then sorted by variance (ascending) so labels are stable between refits. The forward
and backward passes over the T returns are exact and vectorised as a parallel prefix (`_chain`):
products of the per-candle matrices A diag(b_t) over aligned sub-blocks (a tree of batched 4x4
products, rescaled by scalars that cancel), a short loop chaining blocks of 256 candles, then a
down-sweep giving every candle's normalised vector (agrees with a sequential forward/backward pass
to 4e-16). Measured on this 2-core machine: ~1.2 s for 20,000 returns, ~4-5 s for 40,000; the short
runs reach the best of 5 full runs to within 0.02 nats on FILUSDT / NEARUSDT months. On a simulated
4-state HMM (30,000 draws) the fit recovers variances within 2 %, means within 0.02 sd and every
transition probability within 0.003 (tests). The returned dict is JSON (lists of floats, hmmlearn's
names): means, variances, transmat (transition matrix, rows = from-state), startprob (initial
distribution), log_likelihood (of the raw returns, nats), iterations, converged,
restart_log_likelihoods (after the short runs), variance_floor, n_obs.

Warm-up (first valid candle index, NaN before): hill_* 240; realised_*, semivar_*, jump_share 60;
drawdown 239; variance_ratio, autocorr 240. EWMA: sigma^2_{t+1|t} is reported once the weight of
the missing history lambda^t < 1e-16 (t >= 596, as core27's EMAs); z_t then from 597; a fit window
of exact z ends at >= 597 + 1439 = 2036, and with hourly refits every later candle has one within
59 candles: evt_* from 2095 (assumes 1-minute candles on whole minutes, as mtf). regime_* from
REGIME_WARMUP = 2000, a conservative fixed warm-up (the fitted A has off-diagonal entries down to
1e-10, so a contraction bound from A alone would be useless). Measured: filters started at every
97th candle of FILUSDT 2023-08..10 and NEARUSDT 2023-08..10 (HMMs fitted on each symbol's first
20,000 candles), from the fitted pi and from each one-hot prior, versus the filter of the whole
month: max |dp| <= 4e-3 after 100 candles, <= 1e-7 after 250, and exactly 0 (the same bits) from
500 on. Unlike the windows this is measured, not guaranteed (forgetting depends on the data).
`warmup` = 2096 candles.

Numerics: window sums add lags newest first, one sequential add per lag (core27.cumsum_lags), so a
sum never depends on where a history started or how it was chunked. The 60/240 windows use raw
power sums of per-candle terms (r, r^2, r^3, r^4, r_t r_{t-1}, q-sums and their squares, written
once per candle into scratch rows of X) and central moments from them; cancellation is mild since
|mean| << std for 1-minute returns (vs two-pass references on FILUSDT: <= 1e-13 absolute,
relative <= 2e-10 only where a value crosses 0, e.g. excess kurtosis). Sequential
recursions (EWMA, standardised losses, the HMM filter) are one scalar Python loop (`_scan`) shared
by both paths (~2 us per candle); scalar tails (M == 1, streaming) evaluate the same formulas
(`_finish`, `_terms`) on Python floats instead of 1-element arrays: the same IEEE operations in the
same order, transcendental functions (log, exp, expm1) always numpy, so the bits agree. Streaming also
refits the GPD on Python floats (`_gpd_one`: numpy's partition, sort and sums on the one window, the
closed-form tail in floats) and carries the Hill order statistics and the 240-close maximum from one
candle to the next (`_order_stats_one`: a sorted window and a max deque; order statistics and maxima
are values, not sums, so any method gives the kernel's bits).

Cost (2-core machine, FILUSDT, load ~1): streaming ~25 us p50 / ~39 us p99 per candle, ~36 us at the
hourly refit candles (before the scalar refit and the carried order statistics: 29 / 60 us, 60 us at
refits); batch ~6 s per 1M candles.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.features.core27 import lag_view, sum_lags

NAME = "risk"
VERSION = 1

NAMES: tuple[str, ...] = (
    "hill_left", "hill_right", "evt_var_99", "evt_es_99", "realised_skew_60", "realised_kurt_60",
    "semivar_up_60", "semivar_down_60", "jump_share_60", "drawdown_240", "variance_ratio_240",
    "autocorr_1_240", "regime_p0", "regime_p1", "regime_p2", "regime_p3",
)  # fmt: skip
_F = {n: i for i, n in enumerate(NAMES)}
OPTIONAL: tuple[str, ...] = ()

HILL_WINDOW, HILL_K = 240, 24
EVT_WINDOW, EVT_EXCEED, EVT_Q = 1440, 144, 0.99
XI_MAX = 0.9
REFIT_MS = 3_600_000  # refit the GPD at candles whose open_time is a multiple of this
MINUTE_MS = 60_000
EWMA_LAMBDA = 0.94
EWMA_ALPHA = 1.0 - EWMA_LAMBDA
MOM_WINDOW = 60
LONG_WINDOW = 240
VR_Q = 5
FLAT_TOL = 1e-9  # a window whose central second moment is below this share of its raw one is flat
N_STATES = 4
REGIME_WARMUP = 2000
SEED_RESIDUAL = 1e-16  # as core27
SENT = -1.0e4  # ln of a value that is not in a tail (below any ln of a positive double, -745)

# fit
N_RESTARTS = 5
SHORT_ITER = 10
MAX_ITER = 500
EM_TOL = 1e-7
VAR_FLOOR = 0.01
MIN_FIT_ROWS = 1000
_BLOCK = 256  # forward/backward block length (power of 2)

# Rows of X: the clock, close, then scratch rows the kernel writes once per candle:
#   _Q0 + 0..9: r^3, r^4, r^2 [r > 0], r^2 [r < 0], |r_t r_{t-1}|  (summed over 60 lags)
#               r, r^2, r_t r_{t-1}, q-sum R5, R5^2                   (summed over up to 240 lags)
#   X_LP, X_LN: ln r where r > 0, ln(-r) where r < 0 (SENT elsewhere), the Hill tails
#   X_Z: standardised loss z_t (the GPD fit windows)
X_TIME, X_CLOSE = 0, 1
_Q0 = 2
_NQ = 10
_N_SHORT = 5  # the first 5 Q rows are summed over the 60-window only
X_R = _Q0 + 5
X_LP, X_LN, X_Z = _Q0 + _NQ, _Q0 + _NQ + 1, _Q0 + _NQ + 2
INPUTS: tuple[str | None, ...] = ("open_time", "close") + (None,) * (_NQ + 3)
PAD_VALUES = np.array([0.0, 1.0] + [0.0] * _NQ + [SENT, SENT, 0.0])
LAGS = EVT_WINDOW  # the GPD window; every other window is shorter

# The 12 window sums, (Q row, last lag) → S[i]; see `_window_sums`
_SUMS = (
    (0, 59), (1, 59), (2, 59), (3, 59), (4, 58), (5, 59), (6, 59),  # S3 S4 U D BV S1 S2 (60)
    (5, 239), (6, 239), (7, 238), (8, 235), (9, 235),  # S1 S2 P Q1 Q2 (240)
)  # fmt: skip
_SUM_ROW = np.array([q for q, _ in _SUMS])
_SUM_LAG = np.array([j for _, j in _SUMS])
_S60 = (_SUM_ROW[:_N_SHORT], _SUM_LAG[:_N_SHORT])  # streaming: the sums of the 60-window rows
_L240 = (_SUM_ROW[_N_SHORT:] - _N_SHORT, _SUM_LAG[_N_SHORT:])  # and of the rows that go on to 240
assert (_SUM_ROW[:_N_SHORT] < _N_SHORT).all() and (_SUM_ROW[_N_SHORT:] >= _N_SHORT).all()
_PM = np.array([[1.0], [-1.0]])  # r → (r, -r): gains, losses
_HILL_KTH = (HILL_K, HILL_WINDOW - HILL_K - 1)  # sorted positions of the (k+1)-th smallest / largest
_N60 = float(MOM_WINDOW)
_N240 = float(LONG_WINDOW)
_BV_SCALE = (math.pi / 2.0) * (_N60 / (_N60 - 1.0))
_NQS = LONG_WINDOW - VR_Q + 1  # q-sums inside the 240 window: 236
_VR_M = VR_Q * _NQS * (1.0 - VR_Q / _N240)  # Lo-MacKinlay's m
_EVT_LOGR = math.log((1.0 - EVT_Q) * EVT_WINDOW / EVT_EXCEED)  # ln((1 - q) n / k) = ln 0.1
_PWM_W = (EVT_EXCEED - 1.0 - np.arange(EVT_EXCEED)) / (EVT_EXCEED - 1.0)  # (k - i)/(k - 1), i = 1..k


def _seed_rows(alpha: float) -> int:
    """Rows after which the missing history's weight (1-alpha)^k is below SEED_RESIDUAL."""
    return math.ceil(math.log(SEED_RESIDUAL) / math.log(1.0 - alpha))


_Z_EXACT = _seed_rows(EWMA_ALPHA) + 1  # 597: first z_t whose sigma_{t|t-1} is exact
EVT_FIRST = _Z_EXACT + EVT_WINDOW - 1 + REFIT_MS // MINUTE_MS - 1  # 2095


def first_valid() -> np.ndarray:
    """(16,) int: the first candle index at which each feature is defined (see the module docstring)."""
    fv = {
        "hill_left": HILL_WINDOW,
        "hill_right": HILL_WINDOW,
        "evt_var_99": EVT_FIRST,
        "evt_es_99": EVT_FIRST,
        "drawdown_240": LONG_WINDOW - 1,
        "variance_ratio_240": LONG_WINDOW,
        "autocorr_1_240": LONG_WINDOW,
    }
    for n in ("realised_skew_60", "realised_kurt_60", "semivar_up_60", "semivar_down_60", "jump_share_60"):
        fv[n] = MOM_WINDOW
    for j in range(N_STATES):
        fv[f"regime_p{j}"] = REGIME_WARMUP
    return np.array([fv[n] for n in NAMES], dtype=np.int64)


# ------------------------------------------------------------------------------------ state


class State:
    """Carried state: the EWMA variance, the last GPD fit, the HMM (parameters and prior)."""

    __slots__ = ("y", "gpd", "pred", "A", "mu", "inv", "cst", "win")

    def __init__(self, params: Mapping[str, Any]):
        mu, var, A, pi = _check_params(params)
        self.y = 0.0  # sigma^2_{t|t-1}: 0 before the first candle
        self.gpd = [0.0] * 5  # (u, xi, beta, z_q, ES_z) of the last refit; none yet (masked)
        self.pred = pi.tolist()  # prior of the next observation's state
        self.A = tuple(A.ravel().tolist())
        self.mu = mu.tolist()
        self.inv = (-0.5 / var).tolist()  # log-density (r - mu)^2 * inv + cst, up to a constant
        self.cst = (-0.5 * np.log(var)).tolist()
        self.win: list[Any] | None = None  # streaming only, see `_order_stats_one`; None = rebuild from X


def _check_params(p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from pipelines.features.base import FeatureError

    try:
        mu = np.asarray(p["means"], dtype=np.float64)
        var = np.asarray(p["variances"], dtype=np.float64)
        A = np.asarray(p["transmat"], dtype=np.float64)
        pi = np.asarray(p["startprob"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise FeatureError(
            f"feature set 'risk': bad fitted parameters ({e!r}); refit with fit_feature_params"
        ) from None
    k = N_STATES
    ok = (
        mu.shape == (k,) and var.shape == (k,) and A.shape == (k, k) and pi.shape == (k,)
        and np.isfinite(mu).all() and (var > 0).all() and np.isfinite(var).all()
        and (A >= 0).all() and np.allclose(A.sum(1), 1.0, atol=1e-9)
        and (pi >= 0).all() and abs(pi.sum() - 1.0) < 1e-9
    )  # fmt: skip
    if not ok:
        raise FeatureError(
            "feature set 'risk': fitted HMM parameters are malformed (4 means, 4 positive variances, "
            "a 4x4 row-stochastic transition matrix, an initial distribution); refit with fit_feature_params"
        )
    return mu, var, A, pi


def new_state(params: Mapping[str, Any]) -> State:
    """The carried state, from the parameters `fit` returned (base.py raises without them)."""
    return State(params)


# ------------------------------------------------------------------- formulas (floats or arrays)
# Written once for both Python floats (streaming, M == 1) and (M,) arrays (batch): the same IEEE
# operations in the same order give the same bits.


def _div(a: Any, b: Any, default: float) -> Any:
    """a / b, `default` where b == 0."""
    if type(b) is float:
        return a / b if b != 0.0 else default
    out = np.full(np.shape(b), default)
    np.divide(a, b, out=out, where=b != 0.0)
    return out


def _sqrt(x: Any) -> Any:
    return math.sqrt(x) if type(x) is float else np.sqrt(x)  # both correctly rounded


def _max0(x: Any) -> Any:
    return max(x, 0.0) if type(x) is float else np.maximum(x, 0.0)


def _terms(r: Any, r1: Any, r2: Any, r3: Any, r4: Any) -> list[Any]:
    """The per-candle Q rows from r_t and r_{t-1..t-4} (see X's rows)."""
    sq = r * r
    q = r + r1 + r2 + r3 + r4  # R5, added newest first
    return [sq * r, sq * sq, sq * (r > 0.0), sq * (r < 0.0), abs(r * r1), r, sq, r * r1, q, q * q]


def _finish(S: Sequence[Any], r_new: Any, r_old: Any, c: Any, cmax: Any) -> list[Any]:
    """Features 4..11 (realised moments .. autocorr) from the window sums S (see _SUMS)."""
    s3, s4, up, down, bvs, s1, s2, s1l, s2l, pl, q1, q2 = S
    # 60-window central moments from raw power sums
    mu = s1 / _N60
    e2 = s2 / _N60
    e3 = s3 / _N60
    mu2 = mu * mu
    m2 = e2 - mu2
    m3 = e3 - 3.0 * mu * e2 + 2.0 * mu2 * mu
    m4 = s4 / _N60 - 4.0 * mu * e3 + 6.0 * mu2 * e2 - 3.0 * mu2 * mu2
    m2 = m2 * (m2 > FLAT_TOL * e2)  # 0 for a flat window (→ the defaults)
    skew = _div(m3, m2 * _sqrt(m2), 0.0)
    kurt = _div(m4, m2 * m2, 3.0) - 3.0
    up_share = _div(up, s2, 0.5)
    down_share = _div(down, s2, 0.5)
    jump = _max0(1.0 - _div(_BV_SCALE * bvs, s2, 1.0))
    dd = c / cmax - 1.0
    # 240-window: deviations from the window mean, via raw sums
    mu = s1l / _N240
    ss = s2l - s1l * mu  # sum (r - mu)^2
    ss = ss * (ss > FLAT_TOL * s2l)
    ac = _div(pl - mu * (s1l - r_new) - mu * (s1l - r_old) + (_N240 - 1.0) * mu * mu, ss, 0.0)
    qs = q2 - 2.0 * VR_Q * mu * q1 + (_NQS * VR_Q * VR_Q) * mu * mu  # sum (R5 - q mu)^2
    vr = _div(qs * ((_N240 - 1.0) / _VR_M), ss, 1.0)
    return [skew, kurt, up_share, down_share, jump, dd, vr, ac]


def _scan(st: State, rs: list[float], E: list[list[float]], first: bool) -> tuple[list, list, list]:
    """The sequential recursions over candles (Python floats; the same loop for batch and streaming).

    Args:
        rs: returns r_t of the new candles; E: their emission densities relative to the largest
            (4 per candle); first: the first candle is the history's first (no return: the filter
            reports its prior and does not update).

    Returns:
        z_t (standardised losses, with sigma_{t|t-1}), sigma_{t+1|t}, filtered probabilities.
    """
    a, w = EWMA_LAMBDA, EWMA_ALPHA
    y = st.y
    a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33 = st.A
    p0, p1, p2, p3 = st.pred
    zs, sds, ps = [], [], []
    for x, (e0, e1, e2, e3) in zip(rs, E):
        sd = math.sqrt(y)
        zs.append(-x / sd if sd > 0.0 else 0.0)
        y = a * y + w * (x * x)
        sds.append(math.sqrt(y))
        if first:
            first = False
            ps.append((p0, p1, p2, p3))
            continue
        u0, u1, u2, u3 = p0 * e0, p1 * e1, p2 * e2, p3 * e3
        s = u0 + u1 + u2 + u3
        if not s > 0.0:  # every state with prior mass underflowed: the observation decides
            u0, u1, u2, u3 = e0, e1, e2, e3
            s = u0 + u1 + u2 + u3  # >= 1: the largest density is exp(0)
        f0, f1, f2, f3 = u0 / s, u1 / s, u2 / s, u3 / s
        ps.append((f0, f1, f2, f3))
        p0 = f0 * a00 + f1 * a10 + f2 * a20 + f3 * a30
        p1 = f0 * a01 + f1 * a11 + f2 * a21 + f3 * a31
        p2 = f0 * a02 + f1 * a12 + f2 * a22 + f3 * a32
        p3 = f0 * a03 + f1 * a13 + f2 * a23 + f3 * a33
    st.y = y
    st.pred = [p0, p1, p2, p3]
    return zs, sds, ps


# -------------------------------------------------------------------------------- GPD fit


def gpd_tail(Z: np.ndarray) -> np.ndarray:
    """GPD tail of each row of standardised losses Z (n, EVT_WINDOW) → (n, 5): u, xi, beta, z_q, ES_z.

    Row-wise numpy operations only, so a row gives the same bits alone (streaming) or with others.
    """
    n, w = Z.shape
    k = EVT_EXCEED
    P = np.partition(Z, w - k - 1, axis=1)[:, w - k - 1 :]  # [u, the k largest (unordered)]
    u = P[:, 0].copy()
    Y = np.sort(P[:, 1:], axis=1)
    Y -= u[:, None]  # exceedances, ascending
    a0 = Y.sum(axis=1) / k
    a1 = (Y * _PWM_W).sum(axis=1) / k
    den = a0 - 2.0 * a1
    ok = den > 0.0
    xi = np.zeros(n)
    beta = a0.copy()
    np.divide(a0, den, out=xi, where=ok)
    np.subtract(2.0, xi, out=xi, where=ok)
    np.divide(2.0 * a0 * a1, den, out=beta, where=ok)
    np.minimum(xi, XI_MAX, out=xi)
    g = np.full(n, -_EVT_LOGR)  # (((1-q) n/k)^-xi - 1) / xi, its limit at xi = 0
    nz = xi != 0.0
    g[nz] = np.expm1(-_EVT_LOGR * xi[nz]) / xi[nz]
    zq = u + beta * g
    es = (zq + beta - xi * u) / (1.0 - xi)
    return np.stack([u, xi, beta, zq, es], axis=1)


def _gpd_one(z: np.ndarray) -> list[float]:
    """`gpd_tail` of the one window z (EVT_WINDOW,) (the streaming refit) as 5 Python floats: the same
    numpy partition, sort and (pairwise) sums on the one row, then the closed-form tail on Python floats
    (expm1 numpy's), the same IEEE operations in the same order, so the same bits as gpd_tail's row
    (tests/unit/test_features_risk.py) at about a third of the cost of 1-row array operations."""
    w, k = z.size, EVT_EXCEED
    P = np.partition(z, w - k - 1)[w - k - 1 :]  # [u, the k largest (unordered)], a copy
    u = P[0].item()
    Y = np.sort(P[1:])
    Y -= u  # exceedances, ascending
    a0 = Y.sum().item() / k
    a1 = (Y * _PWM_W).sum().item() / k
    den = a0 - 2.0 * a1
    xi, beta = 0.0, a0
    if den > 0.0:
        xi = 2.0 - a0 / den
        beta = 2.0 * a0 * a1 / den
    if xi >= XI_MAX:  # np.minimum (NaN stays NaN)
        xi = XI_MAX
    g = np.expm1(np.array([-_EVT_LOGR * xi])).item() / xi if xi != 0.0 else -_EVT_LOGR
    zq = u + beta * g
    return [u, xi, beta, zq, (zq + beta - xi * u) / (1.0 - xi)]


def _windows(row: np.ndarray, lo: int, hi: int, n: int) -> np.ndarray:
    """(hi-lo, n) view: [m, i] = row[lo + m - n + 1 + i], the n values ending at column lo + m."""
    return np.ndarray(
        shape=(hi - lo, n), dtype=np.float64, buffer=row, offset=(lo - n + 1) * row.itemsize,
        strides=(row.itemsize, row.itemsize),
    )  # fmt: skip


def _window_sums(X: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The 12 window sums of _SUMS (12, M), each added lag by lag, newest first."""
    V = lag_view(X, _Q0, _NQ, lo, hi, LONG_WINDOW)  # (240, 10, M)
    M = hi - lo
    if M <= 8:
        return np.add.accumulate(V, axis=0)[_SUM_LAG, _SUM_ROW]
    S = np.empty((len(_SUMS), M))
    s = V[0].copy()
    for j in range(1, MOM_WINDOW):
        s += V[j]
        if j == MOM_WINDOW - 2:
            S[4] = s[4]  # |r r'|: the 59 pairs inside the window
    S[[0, 1, 2, 3, 5, 6]] = s[[0, 1, 2, 3, 5, 6]]
    t = s[_N_SHORT:]  # r, r^2, r r', R5, R5^2 go on to 240 lags
    for j in range(MOM_WINDOW, LONG_WINDOW):
        t += V[j, _N_SHORT:]
        if j == _NQS - 1:
            S[10:12] = t[3:5]
        elif j == LONG_WINDOW - 2:
            S[9] = t[2]
    S[7:9] = t[0:2]
    return S


# ---------------------------------------------------------------------------------- kernel


def _logdens(r: Any, mu: Any, inv: Any, cst: Any) -> Any:
    """HMM log-density up to a constant, (r - mu)^2 * (-1/(2 var)) - ln(var)/2 (floats or arrays)."""
    d = r - mu
    return d * d * inv + cst


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, st: State, out: np.ndarray) -> None:
    """Write risk of columns [lo, hi) of X into out (16, hi-lo); advances `st`.

    Args:
        X: (15, W) float64 C-contiguous work matrix; columns [lo-LAGS, lo) hold the context. Writes
            the scratch rows of the new columns (and, at a history's first candle, column lo-1's close).
        lo, hi: the new columns.
        t0: candle index (from the start of the history) of column lo; rows with t0 + m below a
            feature's `first_valid` get finite garbage here and are masked NaN by the caller.
        st: the carried State (made from the fitted parameters).
        out: (16, hi-lo) float64, fully overwritten.
    """
    if t0 == 0:  # before the first candle: its own close (r_0 = 0)
        X[X_CLOSE, lo - 1] = X[X_CLOSE, lo]
    if hi - lo == 1:
        _kernel_one(X, lo, t0, st, out)
        return
    st.win = None  # the streaming order statistics no longer follow X
    M = hi - lo
    c = X[X_CLOSE, lo:hi]
    r = np.log(c / X[X_CLOSE, lo - 1 : hi - 1])  # (M,)
    X[X_R, lo:hi] = r
    for i, v in enumerate(_terms(*(X[X_R, lo - j : hi - j] for j in range(5)))):
        X[_Q0 + i, lo:hi] = v
    tails = X[X_LP : X_LN + 1, lo:hi]  # (2, M): ln r, ln(-r) where positive
    tails[:] = SENT
    g = r * _PM
    np.log(g, out=tails, where=g > 0.0)

    # sequential recursions: EWMA volatility, standardised losses, HMM filter
    lb = _logdens(r[:, None], np.array(st.mu), np.array(st.inv), np.array(st.cst))  # (M, 4)
    lb -= lb.max(axis=1, keepdims=True)
    zs, sds, ps = _scan(st, r.tolist(), np.exp(lb).tolist(), t0 == 0)
    X[X_Z, lo:hi] = zs

    # EVT: refits at the hour candles (all of the chunk at once), the last fit carried between them
    cols = np.flatnonzero(np.fmod(X[X_TIME, lo:hi], float(REFIT_MS)) == 0.0)  # epoch ms: exact
    G = np.empty((cols.size + 1, 5))
    G[0] = st.gpd
    if cols.size:
        G[1:] = gpd_tail(_windows(X[X_Z], lo, hi, EVT_WINDOW)[cols])
    which = np.zeros(M, dtype=np.intp)
    which[cols] = 1
    np.cumsum(which, out=which)  # index into G: 0 = the carried fit, i = the chunk's i-th refit
    st.gpd = G[-1].tolist()
    sd = np.array(sds)
    out[2] = sd * G[which, 3]
    out[3] = sd * G[which, 4]

    # Hill: the (k+1)-th largest gain and loss of the window, then sum max(ln x - ln X_(k+1), 0)
    W = np.partition(_windows(X[X_R], lo, hi, HILL_WINDOW), _HILL_KTH, axis=1)
    th = np.empty((2, M))
    th[0] = W[:, _HILL_KTH[1]]
    np.negative(W[:, _HILL_KTH[0]], out=th[1])
    lt = np.zeros((2, M))
    live = th > 0.0
    np.log(th, out=lt, where=live)
    H = lag_view(X, X_LP, 2, lo, hi, HILL_WINDOW) - lt  # (240, 2, M)
    np.maximum(H, 0.0, out=H)
    hill = sum_lags(H) / HILL_K
    hill *= live  # 0 without k+1 positive tail values
    out[0] = hill[1]
    out[1] = hill[0]

    cmax = lag_view(X, X_CLOSE, 1, lo, hi, LONG_WINDOW)[:, 0].max(axis=0)
    r_old = X[X_R, lo - LONG_WINDOW + 1 : hi - LONG_WINDOW + 1]
    out[4:12] = _finish(list(_window_sums(X, lo, hi)), r, r_old, c, cmax)
    out[12:16] = np.array(ps).T


def _order_stats_one(
    X: np.ndarray, p: int, t0: int, st: State, r: float, c: float
) -> tuple[float, float, float]:
    """The Hill order statistics (the returns at sorted positions _HILL_KTH of the LONG_WINDOW ending at
    column p) and the largest of its closes, for candle t0 at column p (streaming).

    Order statistics and a maximum are values, not sums: any method gives the same bits as `kernel`'s
    np.partition / max. Carried between consecutive candles in `st.win` = [next candle index, the
    window's returns sorted, a deque of (candle index, close) with decreasing closes, the window's
    maximum first]: one bisect/insort and an amortised O(1) deque step per candle instead of a
    partition and a max over the window (~5 us). Rebuilt from X when the candle is not the next one
    (after a batch chunk, at a history's start)."""
    n = LONG_WINDOW
    win = st.win
    if win is not None and win[0] == t0:
        rs, dq = win[1], win[2]
        old = X[X_R, p - n].item()  # the return leaving the window
        i = bisect.bisect_left(rs, old)
        if i < n and rs[i] == old:
            del rs[i]
            bisect.insort(rs, r)
            while dq and dq[-1][1] <= c:
                dq.pop()
            dq.append((t0, c))
            if dq[0][0] <= t0 - n:
                dq.popleft()
            win[0] = t0 + 1
            return rs[_HILL_KTH[0]], rs[_HILL_KTH[1]], dq[0][1]
    rs = sorted(X[X_R, p - n + 1 : p + 1].tolist())
    dq: collections.deque[tuple[int, float]] = collections.deque()
    for j, v in enumerate(X[X_CLOSE, p - n + 1 : p + 1].tolist(), start=t0 - n + 1):
        while dq and dq[-1][1] <= v:
            dq.pop()
        dq.append((j, v))
    st.win = [t0 + 1, rs, dq]
    return rs[_HILL_KTH[0]], rs[_HILL_KTH[1]], dq[0][1]


def _kernel_one(X: np.ndarray, p: int, t0: int, st: State, out: np.ndarray) -> None:
    """`kernel` for the one column p (streaming): the same operations on Python floats and on
    contiguous slices, in the same order, so the same bits (tests/unit/test_features_risk.py)."""
    n = LONG_WINDOW
    cp, c = X[X_CLOSE, p - 1 : p + 1].tolist()
    r = np.log(np.array([c / cp])).tolist()[0]
    rl = X[X_R, p - 4 : p].tolist()  # r_{t-4..t-1}
    X[X_R, p] = r
    lo_k, hi_k, cmax = _order_stats_one(X, p, t0, st, r, c)
    th = [hi_k, -lo_k]  # X_(k+1) of gains, of losses
    # one log call: |r| (the tail rows) and the two thresholds (1.0 stands in where not positive)
    logs = np.log(np.array([abs(r) if r != 0.0 else 1.0] + [v if v > 0.0 else 1.0 for v in th])).tolist()
    la = logs[0]
    lp, ln = (la, SENT) if r > 0.0 else ((SENT, la) if r < 0.0 else (SENT, SENT))
    X[_Q0 : X_LN + 1, p] = [*_terms(r, rl[3], rl[2], rl[1], rl[0]), lp, ln]

    lb = [_logdens(r, m, i, k) for m, i, k in zip(st.mu, st.inv, st.cst)]
    top = max(lb)
    zs, sds, ps = _scan(st, [r], [np.exp(np.array([v - top for v in lb])).tolist()], t0 == 0)
    X[X_Z, p] = zs[0]

    if int(X[X_TIME, p]) % REFIT_MS == 0:
        st.gpd = _gpd_one(X[X_Z, p - EVT_WINDOW + 1 : p + 1])
    sd = sds[0]

    live = [v > 0.0 for v in th]
    lt = [logs[1] if live[0] else 0.0, logs[2] if live[1] else 0.0]
    H = X[X_LP : X_LN + 1, p - n + 1 : p + 1][:, ::-1] - np.array(lt)[:, None]  # (2, 240) newest first
    np.maximum(H, 0.0, out=H)
    hs = np.add.accumulate(H, axis=1)[:, -1].tolist()
    hill = [hs[0] / HILL_K * live[0], hs[1] / HILL_K * live[1]]

    # the 12 window sums: the 60-window rows over 60 lags only (accumulate costs ~3 ns per term)
    S = np.add.accumulate(X[_Q0 : _Q0 + _N_SHORT, p - MOM_WINDOW + 1 : p + 1][:, ::-1], axis=1)
    L = np.add.accumulate(X[_Q0 + _N_SHORT : _Q0 + _NQ, p - n + 1 : p + 1][:, ::-1], axis=1)
    S = S[_S60].tolist() + L[_L240].tolist()
    f = _finish(S, r, X[X_R, p - n + 1].item(), c, cmax)
    out[:, 0] = [hill[1], hill[0], sd * st.gpd[3], sd * st.gpd[4], *f, *ps[0]]


# ------------------------------------------------------------------------------ regime fit


def _chain(v0: np.ndarray, A: np.ndarray, bb: np.ndarray, T: int, da: bool = False) -> np.ndarray:
    """Normalised v_t ∝ v0 M_1 ... M_t (row vectors), t = 1..T; returns (R, T, K).

    M_t = A diag(b_t) (forward; da=True: diag(b_t) A, the backward recursion with A transposed).
    bb: (B, R, nb, K) emissions in blocks (`_blocks`): b_t at [k, :, blk] for t - 1 = blk * B + k.
    Exact and vectorised (a parallel prefix, Blelloch 1990): up-sweep, the products of aligned
    sub-blocks of 2, 4, .., B steps (batched 4x4 products; from 8 steps on each is scaled by its largest
    entry: a scalar, it cancels in the normalised vectors; entries are non-negative, so no
    cancellation; a product of <= 4 steps has an entry >= min(A)^4 * 1, no underflow); the blocks'
    starting vectors by a short loop over the blocks; down-sweep, each sub-block's starting vector
    from its parent's (left child: the same, right child: times the left child's product); finally
    each step's vector = its starting vector times its own matrix, normalised.
    """
    B, R, nb, K = bb.shape
    if da:
        P = bb[:, :, :, :, None] * A[None, :, None]
    else:
        P = A[None, :, None] * bb[:, :, :, None, :]  # (B, R, nb, K, K)
    levels = [P]
    while P.shape[0] > 1:
        P = P[0::2] @ P[1::2]
        if len(levels) >= 2:  # products of >= 4 steps: rescale (a 4-step product cannot underflow)
            P /= np.maximum(P.max(axis=(-1, -2), keepdims=True), 1e-300)
        levels.append(P)
    top = P[0]  # (R, nb, K, K): each block's product
    S = np.empty((1, R, nb, K))
    v = (v0 / v0.sum(-1, keepdims=True))[:, None]  # (R, 1, K)
    for blk in range(nb):
        S[0, :, blk] = v[:, 0]
        v = v @ top[:, blk]
        v /= max(v.sum(), 1e-300) if R == 1 else np.maximum(v.sum(-1, keepdims=True), 1e-300)
    for P in levels[-2::-1]:  # down-sweep: starting vectors of the children
        child = np.empty((2 * S.shape[0], R, nb, K))
        child[0::2] = S
        child[1::2] = _normalise(np.einsum("nrbk,nrbkj->nrbj", S, P[0::2]))
        S = child
    V = _normalise(np.einsum("nrbk,nrbkj->rbnj", S, levels[0]))  # (R, nb, B, K): after each step
    return V.reshape(R, nb * B, K)[:, :T]


def _blocks(b: np.ndarray) -> np.ndarray:
    """(R, T, K) → (B, R, nb, K), padded with ones (identity-like steps after T, not returned)."""
    R, T, K = b.shape
    nb = -(-T // _BLOCK)
    full = np.ones((R, nb * _BLOCK, K))
    full[:, :T] = b
    return np.ascontiguousarray(full.reshape(R, nb, _BLOCK, K).transpose(2, 0, 1, 3))


def _rowsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last (states) axis: a matrix-vector product, ~10x a reduction over 4 elements."""
    return a @ np.ones(a.shape[-1])


def _normalise(a: np.ndarray) -> np.ndarray:
    """a / its sum over the last axis, in place (a zero vector stays zero)."""
    a /= np.maximum(_rowsum(a), 1e-300)[..., None]
    return a


def _emissions(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian densities of x (T,) under R x K states, relative to each (r, t)'s largest, and that
    largest log-density: (R, T, K), (R, T)."""
    lb = x[None, :, None] - mu[:, None, :]
    lb *= lb
    lb *= (-0.5 / var)[:, None, :]
    lb -= (0.5 * np.log(2.0 * np.pi * var))[:, None, :]
    m = lb[..., 0].copy()
    for j in range(1, lb.shape[-1]):
        np.maximum(m, lb[..., j], out=m)
    lb -= m[..., None]
    return np.exp(lb), m


def _loglik(x: np.ndarray, mu: np.ndarray, var: np.ndarray, A: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Log-likelihood of x under each of R parameter sets (forward pass only): (R,)."""
    b, m = _emissions(x, mu, var)
    f0 = pi * b[:, 0]
    alpha = _chain(f0, A, _blocks(b[:, 1:]), x.size - 1)
    pred = np.concatenate([_normalise(f0.copy())[:, None], alpha[:, :-1]], axis=1) @ A
    return np.log(_rowsum(f0)) + np.log(_rowsum(pred * b[:, 1:])).sum(-1) + m.sum(-1)


def _em_step(x, mu, var, A, pi, floor):
    """One Baum-Welch iteration for R parameter sets at once: (log-likelihood before, new params)."""
    R, K = mu.shape
    T = x.size
    b, m = _emissions(x, mu, var)  # (R, T, K)
    f0 = pi * b[:, 0]
    alpha = np.empty((R, T, K))  # filtered P(s_t | x_1..t)
    alpha[:, 0] = f0 / _rowsum(f0)[:, None]
    alpha[:, 1:] = _chain(f0, A, _blocks(b[:, 1:]), T - 1)
    beta = np.empty((R, T, K))  # backward vectors, each scaled to sum 1
    beta[:, -1] = 1.0 / K
    beta[:, -2::-1] = _chain(np.ones((R, K)), A.transpose(0, 2, 1), _blocks(b[:, :0:-1]), T - 1, da=True)
    pred = alpha[:, :-1] @ A  # (R, T-1, K): P(s_t | x_1..t-1)
    W = b[:, 1:] * beta[:, 1:]
    ll = np.log(_rowsum(f0)) + np.log(_rowsum(pred * b[:, 1:])).sum(-1) + m.sum(-1)
    g = _normalise(alpha * beta)  # P(s_t | x_1..T)
    W /= _rowsum(pred * W)[..., None]
    xs = A * (alpha[:, :-1].transpose(0, 2, 1) @ W)  # sum_t P(s_{t-1}=i, s_t=j | x)
    ones = np.ones(T)
    gs = np.maximum(ones @ g, 1e-300)  # (R, K)
    rows = _rowsum(xs)[..., None]
    A = np.where(rows > 0, xs / np.maximum(rows, 1e-300), 1.0 / K)
    mu = (x @ g) / gs
    d = x[None, :, None] - mu[:, None, :]
    d *= d
    d *= g
    var = np.maximum((ones @ d) / gs, floor)
    return ll, (mu, var, A, g[:, 0].copy())


def _init(K: int, seeds: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Starting parameters for standardised data (unit variance), one set per seed."""
    R = len(seeds)
    mu, var, A = np.empty((R, K)), np.empty((R, K)), np.empty((R, K, K))
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        var[i] = np.sort(np.exp(rng.uniform(math.log(0.05), math.log(5.0), K)))
        mu[i] = rng.normal(0.0, 0.05, K)
        a = 0.9 * np.eye(K) + 0.1 * rng.dirichlet(np.ones(K), K)
        A[i] = a / a.sum(1, keepdims=True)
    return mu, var, A, np.full((R, K), 1.0 / K)


def fit_hmm(
    x: np.ndarray,
    n_states: int = N_STATES,
    restarts: int = N_RESTARTS,
    short_iter: int = SHORT_ITER,
    max_iter: int = MAX_ITER,
    tol: float = EM_TOL,
    var_floor: float = VAR_FLOOR,
) -> dict[str, Any]:
    """Gaussian HMM by Baum-Welch on x (T,) (see the module docstring); states sorted by variance.

    Returns numpy arrays (means, variances, transition, initial) in x's units, plus log_likelihood,
    iterations, restart_log_likelihoods, converged.
    """
    x = np.asarray(x, dtype=np.float64)
    T = x.size
    scale = float(x.std())
    if not (T >= 2 and math.isfinite(scale) and scale > 0):
        raise ValueError("HMM fit needs a finite, non-constant series")
    z = x / scale
    floor = var_floor * float(z.var())
    mu, var, A, pi = _init(n_states, list(range(restarts)))
    for _ in range(short_iter):
        _, (mu, var, A, pi) = _em_step(z, mu, var, A, pi, floor)
    restart_ll = _loglik(z, mu, var, A, pi)
    best = int(np.argmax(restart_ll))
    mu, var, A, pi = mu[best : best + 1], var[best : best + 1], A[best : best + 1], pi[best : best + 1]
    prev = -np.inf
    it, converged = short_iter, False
    while it < max_iter:
        ll, (mu, var, A, pi) = _em_step(z, mu, var, A, pi, floor)
        it += 1
        if ll[0] - prev < tol * T:
            converged = True
            break
        prev = ll[0]
    ll = float(_loglik(z, mu, var, A, pi)[0])
    order = np.argsort(var[0], kind="stable")
    log_scale = T * math.log(scale)
    return {
        "means": mu[0][order] * scale,
        "variances": var[0][order] * scale * scale,
        "transmat": A[0][np.ix_(order, order)],
        "startprob": pi[0][order],
        "log_likelihood": ll - log_scale,
        "iterations": it,
        "restart_log_likelihoods": [float(v) - log_scale for v in restart_ll],
        "converged": converged,
        "variance_floor": floor * scale * scale,
    }


def fit(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Fit the regime HMM on training candles (arrays of the set's fields) → JSON-serialisable params."""
    from pipelines.features.base import FeatureError

    c = np.asarray(arrays["close"], dtype=np.float64)
    if c.size < MIN_FIT_ROWS:
        raise FeatureError(
            f"feature set 'risk': fitting needs >= {MIN_FIT_ROWS} training candles, got {c.size}"
        )
    if not (np.isfinite(c).all() and (c > 0).all()):
        raise FeatureError("feature set 'risk': training closes must be finite and > 0")
    r = np.log(c[1:] / c[:-1])
    try:
        h = fit_hmm(r)
    except ValueError as e:
        raise FeatureError(f"feature set 'risk': {e} (training closes never change)") from None
    return {
        "model": "gaussian_hmm",
        "observation": "1-minute log return ln(close_t / close_{t-1})",
        "n_states": N_STATES,
        "means": h["means"].tolist(),
        "variances": h["variances"].tolist(),
        "transmat": h["transmat"].tolist(),
        "startprob": h["startprob"].tolist(),
        "log_likelihood": h["log_likelihood"],
        "iterations": h["iterations"],
        "converged": h["converged"],
        "restarts": N_RESTARTS,
        "restart_log_likelihoods": h["restart_log_likelihoods"],
        "variance_floor": h["variance_floor"],
        "n_obs": int(r.size),
    }
