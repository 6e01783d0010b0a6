"""The promotion gates: the paired test against references (scipy, McNemar, a hand Newey-West), its size
under autocorrelation, the gates in `decide` / `decide_review`, the naive baselines realised for a review,
and the demo's planted signal in the synthetic generator."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipelines.config import PromotionPolicy
from pipelines.contracts.newest_window import NewestWindow
from pipelines.review.decision import decide, decide_review
from pipelines.review.gates import paired_test, review_baseline_losses, row_losses
from pipelines.review.newest_window import compare_on_newest_window
from pipelines.tasks import get_task

RETURNS = get_task("returns", (1,))
STRICT = PromotionPolicy(min_lift_pp=0.5, min_samples=500, alpha=0.05, require_beats_baselines=True)


# ---------------------------------------------------------------- the paired test against references


def test_without_autocorrelation_it_is_the_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1, 400), rng.normal(0.9, 1, 400)
    t = paired_test(a, b, horizon=1, alpha=0.05, lag=0)
    ref = stats.ttest_rel(a, b, alternative="greater")  # HLN at h=1, lag 0 is exactly Student's paired t
    assert t.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert t.diff == pytest.approx(float(np.mean(a - b)), rel=1e-12) and t.n == 400


def test_direction_loss_is_mcnemar_with_a_hac_variance():
    rng = np.random.default_rng(1)
    n = 3000
    hit_champion, hit_challenger = rng.random(n) < 0.52, rng.random(n) < 0.55
    loss_a, loss_b = 1.0 - hit_champion, 1.0 - hit_challenger
    b = int(np.sum(hit_challenger & ~hit_champion))  # rows only the challenger gets right
    c = int(np.sum(hit_champion & ~hit_challenger))
    t = paired_test(loss_a, loss_b, horizon=1, alpha=0.05, lag=0, loss="direction")
    assert t.discordant == b + c
    # iid: (b - c) / sqrt(b + c - (b - c)^2 / n), times the HLN factor sqrt((n - 1) / n)
    hand = (b - c) / math.sqrt(b + c - (b - c) ** 2 / n) * math.sqrt((n - 1) / n)
    assert t.statistic == pytest.approx(hand, rel=1e-10)
    # McNemar's exact test, mid-p (half the probability of the observed count): the continuous reference
    mid_p = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue - 0.5 * stats.binom.pmf(
        b, b + c, 0.5
    )
    assert t.p_value == pytest.approx(mid_p, abs=0.005)
    assert "pp" in t.describe() and f"{100 * (b - c) / n:+.2f} pp" in t.describe()


def test_hac_variance_matches_a_hand_newey_west():
    rng = np.random.default_rng(2)
    e = rng.normal(size=1205)
    d = 0.05 + np.convolve(e, np.ones(5) / 5, mode="valid")[:1200]  # MA(4): overlapping 5-step losses
    t = paired_test(d, np.zeros_like(d), horizon=5, alpha=0.05)
    n, lag = d.size, t.lag
    assert lag == max(4, math.floor(4 * (n / 100) ** (2 / 9)))
    x = d - d.mean()
    lrv = x @ x / n + 2 * sum((1 - j / (lag + 1)) * (x[j:] @ x[:-j]) / n for j in range(1, lag + 1))
    hln = math.sqrt((n + 1 - 2 * 5 + 5 * 4 / n) / n)
    assert t.statistic == pytest.approx(d.mean() / math.sqrt(lrv / n) * hln, rel=1e-9)
    assert t.p_value == pytest.approx(stats.t.sf(t.statistic, n - 1), rel=1e-9)


def test_interval_excludes_zero_exactly_when_the_one_sided_test_rejects():
    rng = np.random.default_rng(3)
    for shift in np.linspace(-0.05, 0.15, 21):
        a = rng.normal(shift, 1, 800)
        t = paired_test(a, np.zeros(800), horizon=1, alpha=0.05)
        assert (t.ci_low > 0) == (t.p_value < 0.05) and t.confidence == pytest.approx(0.90)


def test_size_under_autocorrelated_null_stays_near_alpha():
    """Overlapping 5-step losses with no true difference: the HAC test rejects about alpha of the time,
    the iid test (lag 0) far more often: the reason for the Newey-West variance."""
    rng = np.random.default_rng(4)
    hac = iid = 0
    reps = 300
    for _ in range(reps):
        e = rng.normal(size=805)
        d = np.convolve(e, np.ones(5), mode="valid")[:800]
        hac += paired_test(d, np.zeros(800), horizon=5, alpha=0.05).p_value < 0.05
        iid += paired_test(d, np.zeros(800), horizon=1, alpha=0.05, lag=0).p_value < 0.05
    assert hac / reps < 0.11 and iid / reps > 0.2


def test_degenerate_inputs():
    same = paired_test(np.ones(100), np.ones(100), horizon=1, alpha=0.05)
    assert same.p_value == 1.0 and same.diff == 0.0 and same.discordant == 0
    few = paired_test(np.array([1.0, np.nan]), np.array([0.0, 1.0]), horizon=1, alpha=0.05)
    assert few.n == 1 and math.isnan(few.p_value)
    with pytest.raises(ValueError, match="equal length"):
        paired_test(np.ones(3), np.ones(4), horizon=1, alpha=0.05)
    with pytest.raises(ValueError, match="alpha"):
        paired_test(np.ones(3), np.ones(3), horizon=1, alpha=0.6)


def test_row_losses_mark_undefined_rows():
    pred = np.array([0.1, -0.2, np.nan, 0.3])
    actual = np.array([0.5, -0.1, 0.2, 0.0])  # row 2: no forecast; row 3: flat outcome, no direction
    np.testing.assert_array_equal(row_losses(RETURNS, pred, actual), [0.0, 0.0, np.nan, np.nan])


# ---------------------------------------------------------------- the gates on a newest window


def _window(n=2880, edge=0.0, noise_seed=None, seed=0):
    """A newest window where the champion calls ~56 % of directions. The challenger is the champion with
    `edge` of its wrong calls fixed (a real edge), or, with `noise_seed`, the champion with 15 % of its calls
    drawn afresh with the same 56 % skill (as good in expectation: different by noise only)."""
    rng = np.random.default_rng(seed)
    actual = rng.normal(0, 1e-3, n)
    champ = np.where(rng.random(n) < 0.56, actual, -actual)
    chall = champ.copy()
    if edge:
        wrong = np.flatnonzero(np.sign(champ) != np.sign(actual))
        fix = rng.choice(wrong, int(edge * n), replace=False)
        chall[fix] = actual[fix]
    if noise_seed is not None:
        other = np.random.default_rng(noise_seed)
        redraw = other.random(n) < 0.15
        chall[redraw] = np.where(other.random(redraw.sum()) < 0.56, actual[redraw], -actual[redraw])
    times = (np.arange(n, dtype=np.int64) + 10_000) * 60_000
    base = {"always_up": np.column_stack([np.ones(n), np.zeros(n)])}
    nw = NewestWindow(times, chall[:, None], actual[:, None], base)
    champion = pd.DataFrame({"open_time": pd.to_datetime(times, unit="ms", utc=True), "h1": champ})
    return nw, champion


def _decide(nw, champion, policy=STRICT):
    cmp = compare_on_newest_window(nw, [1], 1, champion, None, task=RETURNS, alpha=policy.alpha)
    d = decide(
        policy,
        challenger_score=cmp.challenger_score,
        champion_score=cmp.champion_score,
        n_rows=cmp.rows,
        gates={"parity": True, "validation": True},
        baseline_score=cmp.baseline_score,
        below_baselines={},
        test=cmp.test,
        baseline_test=cmp.baseline_test,
        baseline_name=cmp.baseline_name,
    )
    return cmp, d


def test_a_challenger_better_by_noise_only_is_refused_with_its_p_value():
    """200 challengers exactly as good as the champion: the old rule (point lift >= 0.5 pp on 2,880 rows)
    promoted about one in six; the paired test promotes about alpha of them, and says why it refused."""
    decisions = [_decide(*_window(noise_seed=s))[1] for s in range(200)]
    lifted = [d for d in decisions if d.lift >= 0.005]
    promoted = [d for d in decisions if d.promote]
    assert len(lifted) > 20 and len(promoted) <= 16  # 8 %: alpha 5 % plus sampling slack
    refused = [d for d in lifted if not d.promote]
    assert len(refused) > 0.6 * len(lifted)
    for d in refused:
        assert d.failed_gates == ("significance",) and d.p_value >= 0.05
        assert f"p={d.p_value:.2g}" in d.reason and "not significant at alpha 0.05" in d.reason


def test_a_challenger_with_a_real_edge_is_promoted():
    cmp, d = _decide(*_window(edge=0.03))  # fixes 3 % of the rows: +3 pp
    assert d.promote, d.reason
    assert d.lift_pp == pytest.approx(3.0, abs=0.05) and d.p_value < 1e-6
    assert cmp.test.ci_low > 0 and "significant at alpha 0.05" in d.reason
    assert "beats best baseline always_up" in d.reason and d.baseline_test.p_value < 0.05
    rec = d.record()
    assert rec["decision"] == "promote" and rec["test.p_value"] == d.p_value and rec["rows"] == 2880.0


def test_significant_but_below_min_lift_and_the_other_gates():
    nw, champion = _window(edge=0.03)
    big_bar = STRICT.model_copy(update={"min_lift_pp": 5.0})
    _, d = _decide(nw, champion, big_bar)
    assert not d.promote and d.failed_gates == ("min_lift",) and "lift below the minimum 5.00 pp" in d.reason
    cmp = compare_on_newest_window(nw, [1], 1, champion, None, task=RETURNS)
    args = dict(challenger_score=cmp.challenger_score, champion_score=cmp.champion_score, n_rows=cmp.rows)
    no_test = decide(STRICT, gates={"parity": True}, below_baselines={}, baseline_score=0.5, **args)
    assert not no_test.promote and "not promoting on a point estimate" in no_test.reason
    parity = decide(STRICT, gates={"parity": False}, test=cmp.test, **args)
    assert not parity.promote and parity.failed_gates == ("parity",)
    below = decide(
        STRICT, gates={"parity": True}, below_baselines={}, baseline_score=0.99, test=cmp.test, **args
    )
    assert not below.promote and below.failed_gates == ("beats_baselines",)
    assert "does not beat the best naive baseline" in below.reason


def test_first_version_is_judged_by_the_baselines_and_the_checks():
    nw, _ = _window()
    cmp = compare_on_newest_window(nw, [1], 1, None, None, task=RETURNS)
    assert cmp.test is None and cmp.baseline_name == "always_up" and cmp.baseline_test is not None
    d = decide(
        STRICT,
        challenger_score=cmp.challenger_score,
        champion_score=None,
        n_rows=cmp.rows,
        gates={"parity": True},
        baseline_score=cmp.baseline_score,
        below_baselines={},
        baseline_test=cmp.baseline_test,
        baseline_name=cmp.baseline_name,
    )
    assert d.promote and d.reason.startswith("first version: no champion yet") and d.p_value is None


# ---------------------------------------------------------------- the review's baseline gate


def _review_result(acc_a, acc_b, n=2000, seed=0):
    from pipelines.review.abstats import compare_arms
    from pipelines.review.arms import ArmData

    rng = np.random.default_rng(seed)
    real = rng.normal(0, 1e-3, n)
    t = 1_700_000_000_000 + 60_000 * np.arange(n)
    pa = np.where(rng.random(n) < acc_a, 1, -1) * np.sign(real)
    pb = np.where(rng.random(n) < acc_b, 1, -1) * np.sign(real)
    a, b = ArmData("champion v1", pa, real, t), ArmData("challenger v2", pb, real, t)
    return compare_arms(a, b, paired=True, fee_bps=1.0, alpha=0.05, loss="direction", min_samples=500)


def test_review_requires_beating_the_best_baseline():
    res = _review_result(0.45, 0.55)
    above = paired_test(
        np.full(2000, 0.5), np.full(2000, 0.45) + np.arange(2000) % 2 * 0.01, horizon=1, alpha=0.05
    )
    below = paired_test(np.full(2000, 0.40), np.full(2000, 0.45), horizon=1, alpha=0.05, loss="direction")
    ok = decide_review(STRICT, res, baseline=("persistence", above))
    assert ok.promote and "beats best baseline persistence" in ok.reason
    refused = decide_review(STRICT, res, baseline=("reversal", below))
    assert not refused.promote and refused.failed_gates == ("beats_baselines",)
    assert "does not beat the best naive baseline reversal" in refused.reason and "p=" in refused.reason
    missing = decide_review(STRICT, res, baseline=None, baseline_note="no candles")
    assert not missing.promote and "(no candles)" in missing.reason
    off = decide_review(STRICT.model_copy(update={"require_beats_baselines": False}), res)
    assert off.promote  # the gate is the policy's
    rec = refused.record()
    assert rec["failed_gates"] == "beats_baselines" and rec["baseline"] == "reversal"
    assert rec["baseline_test.diff"] == pytest.approx(-0.05)


def test_review_baselines_are_realised_from_the_candle_sequence():
    from pipelines.sources.synthetic import generate

    candles = generate(n=600)
    candles.loc[100:102, "close"] = candles.loc[
        99, "close"
    ]  # flat candles: persistence carries the last move
    task = get_task("returns", (1, 2))
    t_ms = candles["open_time"].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    rows = np.arange(50, 590, 3)  # requests at every third candle, in reverse log order
    real = np.log(candles["close"].to_numpy()[rows + 2] / candles["close"].to_numpy()[rows])
    resolved = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in rows][::-1],
            "time_ms": t_ms[rows][::-1] + 1000,
            "open_time": t_ms[rows][::-1],
            "arm": "challenger",
            "version": "2",
            "horizon": 2,
            "prediction": np.ones(rows.size),
            "realised": real[::-1],
        }
    )
    log = pd.DataFrame({"request_id": resolved["request_id"], "symbol": "SYNTHUSDT"})
    chall, base = review_baseline_losses(resolved, log, candles, task=task, challenger_version="2", horizon=2)
    assert set(base) == {"always_up", "persistence", "reversal"} and chall.size == rows.size
    full = task.baseline_forecasts(None, task.frame_baseline_inputs(candles))
    want = row_losses(task, full["persistence"][rows, 0], real)  # computed on consecutive candles
    np.testing.assert_array_equal(base["persistence"], want)
    np.testing.assert_array_equal(chall, base["always_up"])  # the challenger always calls up
    with pytest.raises(Exception, match="horizon 3"):
        review_baseline_losses(resolved, log, candles, task=task, challenger_version="2", horizon=3)


# ---------------------------------------------------------------- the demo's planted signal


def test_planted_wick_signal_changes_the_market_only_from_its_day():
    from pipelines.contracts.errors import SourceError
    from pipelines.sources.synthetic import DEMO_SIGNAL, SyntheticConfig, SynthParams, generate

    plain = generate(n=4 * 1440, params=SynthParams(flow_kappa=0.2))
    off = generate(n=4 * 1440, params=SynthParams(flow_kappa=0.2, wick=0.0))
    pd.testing.assert_frame_equal(plain, off)  # the knob off is the series without it, bit for bit
    changed = generate(n=4 * 1440, params=SynthParams(flow_kappa=0.2, wick=0.4, change_from="2024-01-03"))
    pd.testing.assert_frame_equal(plain.iloc[: 2 * 1440], changed.iloc[: 2 * 1440])  # before the change
    o, c, h, lo = (changed[k].to_numpy() for k in ("open", "close", "high", "low"))
    wick = np.log(np.minimum(o, c) / lo) - np.log(h / np.maximum(o, c))  # lower minus upper wick
    nxt = np.diff(np.log(c))
    after = slice(2 * 1440, 4 * 1440 - 1)
    assert np.corrcoef(wick[after], nxt[after.start :])[0, 1] > 0.2  # learnable after the change
    assert abs(np.corrcoef(wick[: 2 * 1440], nxt[: 2 * 1440])[0, 1]) < 0.05  # absent before it
    cfg = SyntheticConfig(params={**DEMO_SIGNAL, "change_from": "2024-01-03"})
    assert cfg.synth_params().wick == DEMO_SIGNAL["wick"]
    with pytest.raises(SourceError, match="not SynthParams knobs"):
        SyntheticConfig(params={"wik": 0.4}).synth_params()
    with pytest.raises(SourceError, match="not a date"):
        SynthParams(change_from="soon")
