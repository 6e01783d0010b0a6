"""A/B statistics: hand-computed cases for each estimator, plus the issue-7 simulation acceptance.

The simulation tests run 1,000 experiments x 20 looks per scenario, vectorised (a few s each).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.signal import lfilter

from pipelines.review.abstats import (
    ABDataError,
    ArmData,
    arm_metrics,
    block_bootstrap_diff_ci,
    compare_arms,
    diebold_mariano,
    direction_hits,
    fee_aware_pnl,
    hln_factor,
    log_mixture_lr,
    look_times,
    newey_west_lag,
    newey_west_lrv,
    optimal_r,
    politis_white_block_length,
    prefix_mean_lrv,
    sequential_paired,
    welch_test,
    wilson_interval,
)
from pipelines.review.simulate import simulate


def _ar1(rng: np.random.Generator, n: int, rho: float, size: int | None = None) -> np.ndarray:
    shape = (n,) if size is None else (size, n)
    eps = rng.standard_normal(shape) * math.sqrt(1 - rho * rho)
    eps[..., 0] /= math.sqrt(1 - rho * rho)
    return lfilter([1.0], [1.0, -rho], eps, axis=-1)


def _nw_by_hand(x: np.ndarray, lag: int) -> float:
    """statsmodels' Bartlett HAC for a mean (S_hac_simple on demeaned x), written as plain loops."""
    n = len(x)
    u = [v - sum(x) / n for v in x]
    gamma = [sum(u[t] * u[t - j] for t in range(j, n)) / n for j in range(lag + 1)]
    return gamma[0] + 2 * sum((1 - j / (lag + 1)) * gamma[j] for j in range(1, lag + 1))


# ---------------------------------------------------------------- HAC / Newey-West


@pytest.mark.parametrize("lag", [0, 1, 3, 7])
def test_newey_west_matches_hand_formula(lag):
    x = np.random.default_rng(lag).normal(size=57)
    assert float(newey_west_lrv(x, lag)) == pytest.approx(_nw_by_hand(list(x), lag), rel=1e-12)


def test_newey_west_known_value_and_batching():
    # x = [1, 3, 2, 4, 0]: mean 2, deviations [-1, 1, 0, 2, -2]
    # gamma0 = 10/5 = 2, gamma1 = (-1 + 0 + 0 - 4)/5 = -1, gamma2 = (0 + 2 + 0)/5 = 0.4
    # lag 2: 2 + 2 * (2/3 * -1 + 1/3 * 0.4) = 14/15
    x = np.array([1.0, 3.0, 2.0, 4.0, 0.0])
    assert float(newey_west_lrv(x, 2)) == pytest.approx(14 / 15, rel=1e-12)
    batch = np.stack([x, 2 * x, x + 5])
    np.testing.assert_allclose(newey_west_lrv(batch, 2), [14 / 15, 4 * 14 / 15, 14 / 15], rtol=1e-12)


def test_newey_west_recovers_ar1_long_run_variance():
    rho = 0.3
    x = _ar1(np.random.default_rng(1), 200_000, rho)  # unit variance; LRV = (1 + rho) / (1 - rho)
    assert float(newey_west_lrv(x)) == pytest.approx((1 + rho) / (1 - rho), rel=0.05)
    assert float(np.var(x)) == pytest.approx(1.0, rel=0.03)  # iid variance would be 46% short


def test_newey_west_lag_rule():
    assert newey_west_lag(100) == 4  # floor(4 * 1)
    assert newey_west_lag(500) == 5  # floor(4 * 5^(2/9)) = floor(5.72)
    assert newey_west_lag(10_000) == 11  # floor(4 * 100^(2/9)) = floor(11.1)
    assert newey_west_lag(100, min_lag=9) == 9  # an h=10 forecast needs h - 1 lags
    assert newey_west_lag(3, min_lag=9) == 2  # never more than n - 1


def test_prefix_mean_lrv_equals_direct_computation():
    x = np.random.default_rng(2).normal(loc=0.5, size=(4, 900))
    cuts = np.array([2, 50, 333, 900])
    m, lrv, lags = prefix_mean_lrv(x, cuts, min_lag=2)
    for k, c in enumerate(cuts):
        np.testing.assert_allclose(m[:, k], x[:, :c].mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(lrv[:, k], newey_west_lrv(x[:, :c], min_lag=2), rtol=1e-9, atol=1e-12)
        assert lags[k] == newey_west_lag(int(c), 2)


def test_politis_white_block_length_tracks_dependence():
    rng = np.random.default_rng(3)
    assert politis_white_block_length(rng.normal(size=5000)) <= 3
    # AR(1) rho = 0.7: theory b = (2 G^2 / (4/3 g0^2))^(1/3) n^(1/3) ~= 2.24 * 17.1 ~= 38
    assert 25 <= politis_white_block_length(_ar1(rng, 5000, 0.7)) <= 55


# ---------------------------------------------------------------- fixed-sample tests


def test_diebold_mariano_hand_computed():
    # d = [1, 3, 2, 4, 0]: mean 2, NW LRV at lag 2 = 14/15 (above), se = sqrt(14/75)
    # DM = 2 / sqrt(14/75) = 4.6291; HLN with h = 3: sqrt((5 + 1 - 6 + 3*2/5) / 5) = sqrt(0.24)
    res = diebold_mariano(np.array([1.0, 3, 2, 4, 0]), np.zeros(5), horizon=3)
    assert res.lag == 2  # h - 1 dominates the rule at n = 5 (capped at n - 1 = 4)
    assert res.mean_diff == 2.0
    assert res.se == pytest.approx(math.sqrt(14 / 75), rel=1e-12)
    assert res.dm == pytest.approx(4.629100498862757, rel=1e-12)
    assert res.dm_hln == pytest.approx(4.629100498862757 * math.sqrt(0.24), rel=1e-12)
    assert res.p_value == pytest.approx(2 * stats.t.sf(res.dm_hln, 4), rel=1e-12)
    assert hln_factor(5, 1) == pytest.approx(math.sqrt(4 / 5))


def test_diebold_mariano_detects_better_forecaster_and_handles_constant():
    rng = np.random.default_rng(4)
    y = rng.normal(size=3000)
    good, bad = (y - 0.9 * y - 0.1 * rng.normal(size=3000)) ** 2, (rng.normal(size=3000)) ** 2
    res = diebold_mariano(bad, good)
    assert res.dm_hln > 5 and res.p_value < 1e-6
    same = diebold_mariano(good, good)
    assert same.mean_diff == 0 and same.dm == 0 and math.isnan(same.p_value)


def test_welch_matches_scipy_and_cohens_d_by_hand():
    a = np.array([1.0, 2, 3, 4, 5])
    b = np.array([2.0, 4, 6, 8, 10, 12])
    res = welch_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert res.t == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.df == pytest.approx(ref.df, rel=1e-12)
    # pooled sd = sqrt((4 * 2.5 + 5 * 14) / 9) = sqrt(80 / 9); diff = 3 - 7 = -4
    assert res.cohens_d == pytest.approx(-4 / math.sqrt(80 / 9), rel=1e-12)


def test_wilson_interval_matches_scipy_and_edges():
    for k, n in [(81, 263), (5, 10), (1, 50)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n, 0.95)
        assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # not the degenerate [0, 0] of the Wald interval
    assert wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_block_bootstrap_covers_where_iid_bootstrap_does_not():
    """AR(1) rho = 0.5 losses, true difference 0: the block CI keeps ~nominal coverage, iid does not."""
    rng = np.random.default_rng(5)
    reps, n = 200, 400
    a_all, b_all = _ar1(rng, n, 0.5, reps), _ar1(rng, n, 0.5, reps)
    cover_block = cover_iid = 0
    for i in range(reps):
        blk = block_bootstrap_diff_ci(a_all[i], b_all[i], reps=500, seed=i)
        iid = block_bootstrap_diff_ci(a_all[i], b_all[i], reps=500, seed=i, block_length=1)
        cover_block += blk.low <= 0 <= blk.high
        cover_iid += iid.low <= 0 <= iid.high
        assert blk.block_length_a > 1
    # LRV / var = 3 at rho = 0.5, so the iid interval is sqrt(3) too narrow: ~74% coverage
    assert cover_block / reps >= 0.86
    assert cover_iid / reps <= 0.82
    assert cover_block - cover_iid >= 0.08


def test_block_bootstrap_is_seeded_and_centred():
    rng = np.random.default_rng(6)
    a, b = rng.normal(1.0, 1, 500), rng.normal(0.0, 1, 700)
    r1 = block_bootstrap_diff_ci(a, b, seed=3, block_length="cube-root")
    r2 = block_bootstrap_diff_ci(a, b, seed=3, block_length="cube-root")
    assert r1 == r2 and r1.block_length_a == 8 and r1.block_length_b == 9
    assert r1.low < r1.diff < r1.high and r1.low > 0.7 and r1.high < 1.3


# ---------------------------------------------------------------- per-arm metrics


def test_fee_aware_pnl_by_hand():
    # positions [1, 1, -1, 0]; turnover [1, 0, 2, 1]; fee 10 bp = 0.001 per unit
    net = fee_aware_pnl(np.array([0.3, 0.1, -0.2, 0.0]), np.array([0.01, -0.02, -0.01, 0.05]), 10.0)
    np.testing.assert_allclose(net, [0.009, -0.02, 0.008, -0.001], rtol=1e-12)


def test_pnl_matches_training_evaluation_definition():
    """Horizon 3: one trade every 3rd request, same total return as pipelines.training.metrics.sign_pnl."""
    from pipelines.training import metrics as evaluate

    rng = np.random.default_rng(11)
    pred, real = rng.normal(size=100), rng.normal(size=100) * 1e-3
    m = arm_metrics(ArmData("m", pred, real, np.arange(100), horizon=3), fee_bps=2.0)
    ref = evaluate.sign_pnl(pred, real, 3, fee_bps=2.0, periods_per_year=1.0)
    assert m.pnl_total_return == pytest.approx(ref["pnl_total_return"], rel=1e-12)
    assert m.turnover == float(np.abs(np.diff(np.sign(pred[::3]), prepend=0.0)).sum())


def test_arm_metrics_exclude_zero_outcomes_and_report_ci():
    pred = np.array([1.0, -1, 1, 1, -1, 1, 0.5, -0.5])
    real = np.array([0.5, -0.2, -0.1, 0.0, 0.3, 0.2, 0.1, -0.4])
    hits = direction_hits(pred, real)  # row 3 dropped (realised 0)
    np.testing.assert_array_equal(hits, [1, 1, 0, 0, 1, 1, 1])
    arm = ArmData("m", pred, real, np.arange(8) * 60_000)
    m = arm_metrics(arm, fee_bps=0.0)
    assert m.n == 8 and m.n_direction == 7
    assert m.accuracy == pytest.approx(5 / 7)
    assert m.accuracy_ci[0] < 5 / 7 < m.accuracy_ci[1]
    assert m.mse == pytest.approx(np.mean((pred - real) ** 2))
    assert m.ic == pytest.approx(stats.spearmanr(pred, real).statistic)
    assert m.pnl_total == pytest.approx(float(np.sum(np.sign(pred) * real)))


def test_accuracy_ci_widens_under_autocorrelation():
    rng = np.random.default_rng(7)
    n = 4000
    real = rng.normal(size=n)
    # a model whose hits come in runs (AR(1) latent error): same accuracy, fewer independent hits
    z = _ar1(rng, n, 0.8)
    pred = np.where(z < 0, np.sign(real), -np.sign(real))
    m = arm_metrics(ArmData("m", pred, real, np.arange(n)), fee_bps=0.0)
    iid = wilson_interval(m.accuracy * m.n_direction, m.n_direction)
    assert m.accuracy_n_eff < 0.4 * n
    assert (m.accuracy_ci[1] - m.accuracy_ci[0]) > 1.5 * (iid[1] - iid[0])


def test_arm_data_rejects_bad_input():
    t = np.arange(3)
    with pytest.raises(ABDataError, match="NaN"):
        ArmData("a", np.array([1.0, np.nan, 2]), np.ones(3), t)
    with pytest.raises(ABDataError, match="not sorted"):
        ArmData("a", np.ones(3), np.ones(3), np.array([0, 2, 1]))
    with pytest.raises(ABDataError, match="equal length"):
        ArmData("a", np.ones(3), np.ones(2), t)


# ---------------------------------------------------------------- sequential + compare_arms


def test_mixture_lr_formula_and_confidence_sequence_agree():
    v, tau2, theta = 0.01, 0.002, 0.25
    expected = 0.5 * math.log(v / (v + tau2)) + tau2 * theta**2 / (2 * v * (v + tau2))
    assert float(log_mixture_lr(theta, v, tau2)) == pytest.approx(expected, rel=1e-12)
    assert optimal_r(0.05) == pytest.approx(0.1218, abs=2e-4)
    d = np.random.default_rng(8).normal(0.08, 1.0, size=3000)
    res = sequential_paired(d, np.arange(100, 3001, 100), alpha=0.05, min_samples=100)
    # 0 is outside the running confidence sequence exactly when the always-valid p <= alpha
    outside = (res.ci_low > 0) | (res.ci_high < 0)
    np.testing.assert_array_equal(outside, res.p_value <= 0.05)
    assert np.all(np.diff(res.p_value) <= 0)  # running min: a verdict never flips back


def _paired_arms(rng, n, acc_a, acc_b, rho=0.3):
    """Shadow traffic: both arms predict the same realised returns; hits from AR(1) latent errors."""
    real = rng.normal(size=n) * 1e-3
    t = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 60_000
    common = _ar1(rng, n, rho)

    def _pred(acc):
        z = math.sqrt(0.8) * common + math.sqrt(0.2) * _ar1(rng, n, rho)
        hit = z < stats.norm.ppf(acc)
        return np.where(hit, 1.0, -1.0) * np.sign(real) * np.abs(rng.normal(size=n)) * 1e-3

    return ArmData("champion", _pred(acc_a), real, t), ArmData("challenger", _pred(acc_b), real, t)


def test_compare_arms_paired_verdicts():
    rng = np.random.default_rng(9)
    champ, chall = _paired_arms(rng, 6000, 0.50, 0.58)
    res = compare_arms(champ, chall, paired=True, fee_bps=1.0, alpha=0.05, looks=10)
    assert res.verdict == "challenger better"
    assert res.accuracy_lift_pp == pytest.approx(100 * (res.challenger.accuracy - res.champion.accuracy))
    assert 4 < res.accuracy_lift_pp < 12 and res.loss_diff > 0
    assert res.dm is not None and res.dm.p_value < 1e-4 and res.bootstrap is None
    assert res.sequential.n.size == 10 and res.look_times[-1] == champ.time[-1]
    flipped = compare_arms(chall, champ, paired=True, fee_bps=1.0, alpha=0.05, looks=10)
    assert flipped.verdict == "champion better"
    same = compare_arms(champ, champ, paired=True, fee_bps=1.0, alpha=0.05, looks=10)
    assert same.verdict == "no difference yet" and same.p_value == 1.0
    metrics = res.metrics()
    assert metrics["verdict_code"] == 1.0 and all(isinstance(v, float) for v in metrics.values())
    assert "challenger better" in res.summary()


def test_compare_arms_split_and_burn_in():
    rng = np.random.default_rng(10)
    champ, _ = _paired_arms(rng, 4000, 0.5, 0.5)
    _, chall = _paired_arms(rng, 4000, 0.5, 0.5)
    chall = ArmData("challenger", chall.prediction, chall.realised, chall.time + 30_000)
    res = compare_arms(champ, chall, paired=False, fee_bps=1.0, alpha=0.05, looks=20, bootstrap_reps=500)
    assert res.verdict == "no difference yet" and res.dm is None
    assert res.bootstrap is not None and res.bootstrap.low < res.loss_diff < res.bootstrap.high
    early = compare_arms(
        champ.upto(champ.time[50]),
        chall.upto(chall.time[50]),
        paired=False,
        fee_bps=1.0,
        min_samples=500,
        bootstrap_reps=200,
    )
    assert early.verdict == "no difference yet" and early.p_value == 1.0  # burn-in not reached
    with pytest.raises(ABDataError, match="same requests"):
        compare_arms(champ, chall, paired=True, fee_bps=1.0)


@pytest.mark.parametrize("loss", ["squared", "pnl"])
def test_compare_arms_other_losses_at_horizon_2(loss):
    rng = np.random.default_rng(12)
    n = 3000
    real = rng.normal(size=n) * 1e-3
    t = np.arange(n, dtype=np.int64) * 60_000
    good = ArmData("good", real + rng.normal(size=n) * 5e-4, real, t, horizon=2)
    noise = ArmData("noise", rng.normal(size=n) * 1e-3, real, t, horizon=2)
    res = compare_arms(noise, good, paired=True, fee_bps=0.0, looks=5, loss=loss, min_samples=200)
    assert res.verdict == "challenger better", res.summary()
    assert res.dm is not None and res.dm.lag >= 1  # h - 1
    expected_n = n if loss == "squared" else n // 2  # pnl: one trade per 2 requests
    assert int(res.sequential.n[-1]) == expected_n


def test_look_times():
    t = np.array([0, 10, 20, 100], dtype=np.int64)
    np.testing.assert_array_equal(look_times(t, None), [100])
    np.testing.assert_array_equal(look_times(t, 4), [25, 50, 75, 100])
    np.testing.assert_array_equal(look_times(t, [50, 5, 200]), [5, 50, 100])  # now is always last


# ---------------------------------------------------------------- acceptance: simulation


@pytest.mark.parametrize(
    ("scenario", "paired"),
    [("gaussian", True), ("gaussian", False), ("direction", False), ("direction", True)],
)
def test_sequential_false_positive_rate_under_repeated_looks(scenario, paired):
    """H0 true, AR(1) rho = 0.3 errors, 1,000 experiments x 20 looks, stop at first significance.

    Measured (seed 0, n = 4000): sequential 0.5-1.0%; naive Welch any-look 45-55% (split, gaussian),
    naive paired t any-look 38% (shadow, direction; Welch ignores the pairing there and is 3.6%).
    """
    r = simulate(scenario, paired=paired, experiments=1000, n=4000, looks=20, rho=0.3, seed=0)
    assert r.binomial_upper(r.sequential_rate, 0.99) <= 0.05 + 0.005, r
    naive = r.naive_paired_any_look_rate if (paired and scenario == "direction") else r.naive_any_look_rate
    assert naive > 0.10, r  # repeated iid testing is clearly inflated
    assert r.sequential_rate < naive / 5


def test_sequential_power_for_one_point_accuracy_lift():
    """51% vs 50% direction accuracy, shadow traffic (arm latent-error correlation 0.8), AR(1) 0.3.

    Measured (seed 0, 300 experiments, 20 looks to n = 40,000 per arm): always-valid power 0.86;
    the fixed-n HAC z-test at n = 40,000 alone gets 0.98 (but is valid for that single look only).
    """
    r = simulate("direction", paired=True, experiments=300, n=40_000, looks=20, effect=0.01, seed=0, block=50)
    assert r.sequential_rate >= 0.7, r
    assert r.hac_last_look_rate >= r.sequential_rate - 0.02, r


def test_paired_block_bootstrap_is_narrower_than_the_marginal_intervals_and_covers_the_truth():
    from pipelines.review.fixed import paired_block_bootstrap_ci

    rng = np.random.default_rng(7)
    n = 20_000
    y = rng.choice([-1.0, 1.0], size=n)
    rule = np.where(rng.random(n) < 0.54, y, -y)  # a rule right 54 % of the time
    model = np.where(rng.random(n) < 0.90, rule, -rule)  # agrees with it on 90 % of rows, flips the rest
    d = (model == y) * 1.0 - (rule == y)
    ci = paired_block_bootstrap_ci(d, block_length=60)
    assert ci.low < d.mean() < ci.high and ci.diff == pytest.approx(d.mean())
    truth = 0.10 * (0.46 - 0.54)  # flips turn 54 % hits into 46 %: E[d] = -0.008
    assert ci.low < truth < ci.high
    half_marginal = 1.96 * np.sqrt(0.25 / n)  # one accuracy's own half-width, ~0.7 pp
    assert (ci.high - ci.low) / 2 < 0.75 * half_marginal  # sd of d: sqrt(0.10) vs sqrt(0.25) per row
    again = paired_block_bootstrap_ci(d, block_length=60)
    assert (again.low, again.high) == (ci.low, ci.high)  # seeded
