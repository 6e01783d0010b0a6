"""The volatility task: labels from candles after t only, baselines from candles <= t, HAR fitted on the
training fold, QLIKE / MSE / MZ-R², the review loss and the outcome join."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.config import EvaluationConfig, load_training_config
from pipelines.tasks import TaskError, get_task, load_task
from pipelines.tasks.volatility import qlike
from tests.conftest import REPO

H = (2, 3)


def task(horizons=H, **options):
    return get_task("volatility", horizons, options)


def test_labels_are_log_realised_variance_of_the_next_h_candles():
    close = np.array([1.0, 2.0, 4.0, 2.0, 2.0, 1.0])
    r2 = np.log(2) ** 2
    y = task(floor_per_candle=0.0).labels(close)
    # t=0: returns of candles 1, 2 (h=2) and 1..3 (h=3) are all ±ln 2
    assert y[0, 0] == pytest.approx(math.log(2 * r2)) and y[0, 1] == pytest.approx(math.log(3 * r2))
    assert y[2, 0] == pytest.approx(math.log(r2))  # candles 3 (ln 1/2) and 4 (flat)
    assert np.isnan(y[4:, 0]).all() and np.isnan(y[3:, 1]).all()


def test_flat_candles_stay_finite_thanks_to_the_floor():
    y = task().labels(np.full(10, 3.0))
    assert np.allclose(y[:8, 0], math.log(2 * 1e-10)) and np.isfinite(y[:7]).all()


def test_no_look_ahead_labels_read_only_later_candles_and_baselines_only_earlier():
    rng = np.random.default_rng(1)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 1e-3, 3000)))
    t = task((5, 15))
    Y, A = t.labels(close), t.baseline_inputs(close)
    k = 2000
    bumped = close.copy()
    bumped[k] *= 1.01
    Y2, A2 = t.labels(bumped), t.baseline_inputs(bumped)
    # baseline inputs of rows < k never see candle k; labels of rows > k never see it (row k's label starts
    # from close[k], as a return does), and rows just before k do read it: that is what they predict
    np.testing.assert_array_equal(A[:k], A2[:k])
    np.testing.assert_array_equal(Y[k + 1 :], Y2[k + 1 :])
    assert not np.allclose(Y[k - 5 : k], Y2[k - 5 : k])


def test_ewma_matches_a_plain_riskmetrics_loop_and_persistence_is_the_last_window():
    rng = np.random.default_rng(2)
    close = 5 * np.exp(np.cumsum(rng.normal(0, 2e-3, 500)))
    t = task((3,), floor_per_candle=0.0)
    A = t.baseline_inputs(close)
    r2 = np.log(close[1:] / close[:-1]) ** 2
    s2, want = r2[0], []
    for x in r2:
        s2 = 0.94 * s2 + 0.06 * x
        want.append(s2)
    np.testing.assert_allclose(A[1:, 3], np.log(3 * np.array(want)), rtol=1e-10)
    np.testing.assert_allclose(A[400, 0], math.log(r2[397:400].sum()), rtol=1e-12)  # candles 398..400
    np.testing.assert_allclose(A[400, 1], math.log(r2[385:400].sum() / 5), rtol=1e-12)  # 5 windows of 3


def test_har_is_fitted_on_the_training_rows_only_and_recovers_a_planted_relation():
    rng = np.random.default_rng(3)
    t = task((5,))
    n = 4000
    A = rng.normal(-12, 1, size=(n, 4))
    Y = (0.5 + 0.4 * A[:, 0] + 0.3 * A[:, 1] + 0.2 * A[:, 2] + rng.normal(0, 0.01, n))[:, None]
    coef = t.fit_baselines(A[:3000], Y[:3000])
    np.testing.assert_allclose(coef[0], [0.5, 0.4, 0.3, 0.2], atol=0.02)
    Y_test_changed = Y.copy()
    Y_test_changed[3000:] += 100.0
    np.testing.assert_array_equal(t.fit_baselines(A[:3000], Y_test_changed[:3000]), coef)
    fc = t.baseline_forecasts(coef, A[3000:])
    np.testing.assert_allclose(fc["har_rv"][:, 0], Y[3000:, 0], atol=0.05)
    np.testing.assert_array_equal(fc["persistence"][:, 0], A[3000:, 0])
    np.testing.assert_array_equal(fc["ewma"][:, 0], A[3000:, 3])


def test_qlike_is_zero_at_the_truth_and_punishes_under_forecasts_more():
    assert qlike(np.array([-10.0]), np.array([-10.0]))[0] == pytest.approx(0.0)
    under, over = (
        qlike(np.array([-11.0]), np.array([-10.0]))[0],
        qlike(np.array([-9.0]), np.array([-10.0]))[0],
    )
    assert under > over > 0


def test_evaluate_scores_model_and_every_baseline_on_the_same_rows():
    rng = np.random.default_rng(4)
    t = task()
    actual = rng.normal(-12, 1, size=(300, 2))
    base = {
        w: actual + rng.normal(0, s, size=actual.shape)
        for w, s in (("persistence", 1), ("ewma", 0.5), ("har_rv", 0.3))
    }
    flat = t.evaluate(actual + 0.1, actual, base, interval="1m", cfg=EvaluationConfig())
    for who in ("model", *t.baselines):
        for h in H:
            assert flat[f"{who}.h{h}.n"] == 300
    assert flat["model.h2.mz_r2"] == pytest.approx(1.0) and flat["model.h2.mse"] == pytest.approx(0.01)
    assert flat["har_rv.h2.qlike"] < flat["persistence.h2.qlike"]
    assert t.score(actual[:, 0] + 0.1, actual[:, 0], "neg_qlike", 2, interval="1m", cfg=None) < 0
    with pytest.raises(TaskError, match="no metric"):
        t.score(actual[:, 0], actual[:, 0], "accuracy", 2, interval="1m", cfg=None)


def test_realised_equals_labels_and_is_nan_when_a_candle_in_the_window_is_missing():
    rng = np.random.default_rng(5)
    close = 5 * np.exp(np.cumsum(rng.normal(0, 1e-3, 200)))
    t = task((5,))
    np.testing.assert_array_equal(t.realised(close, np.arange(150), 5), t.labels(close)[:150, 0])
    grid = close.copy()
    grid[103] = np.nan  # a missing candle inside (100, 105]
    out = t.realised(grid, np.array([90, 100, 103, 110]), 5)
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2]) and np.isfinite(out[3])
    loss, keep = t.row_loss(np.array([-10.0, np.nan, -9.0]), np.array([-10.0, -10.0, np.nan]))
    assert keep.tolist() == [True, False, False] and loss.tolist() == [0.0]


def test_config_sets_horizons_purge_and_promotion():
    from pipelines.config import load_promotion_policy

    configs = REPO / "configs"
    cfg = load_training_config(configs, task="volatility")
    assert cfg.labels.horizons == (5, 15, 60) and cfg.walk_forward.purge >= 60
    t = load_task(configs, "volatility", cfg.labels.horizons)
    assert (t.output_name, t.promotion_metric, t.higher_is_better, t.review_loss) == (
        "log_variance",
        "qlike",
        False,
        "qlike",
    )
    policy = load_promotion_policy(configs, "volatility")
    assert policy.horizon in cfg.labels.horizons and policy.min_lift is not None
    assert t.warmup == 22 * 60 + 1  # the longest HAR window (22 windows of 60 candles)
    with pytest.raises(TaskError, match="ewma_lambda"):
        _ = task(ewma_lambda=1.5).warmup
