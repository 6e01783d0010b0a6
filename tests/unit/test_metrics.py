"""The metrics module against hand-computed values, and the returns task's baselines on identical rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.config import EvaluationConfig
from pipelines.tasks import TaskError, get_task, nested_report
from pipelines.tasks.returns import ReturnsTask, best_baseline, last_move_sign
from pipelines.training.metrics import (
    MetricError,
    direction_accuracy,
    periods_per_year,
    sign_pnl,
    trade_rows,
    wilson_interval,
)

WHO = ("model", *ReturnsTask.baselines)
METRICS = (
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "n",
    "n_flat",
    "ic",
    "rmse",
    "pnl_total_return",
    "pnl_sharpe",
    "pnl_max_drawdown",
    "acc_top10",
    "pnl_top10",
    "acc_top25",
    "pnl_top25",
    "acc_top50",
    "pnl_top50",
)
EvaluationError = (MetricError, TaskError)
best_baseline_accuracy = best_baseline


def evaluate_all(pred, actual, last_return, horizons, *, interval, cfg, segments=None):
    """The returns task's report: the model beside its baselines on the same rows."""
    task = get_task("returns", horizons)
    base = task.baseline_forecasts(None, np.asarray(last_return, float).reshape(-1, 1))
    return task.evaluate(pred, actual, base, interval=interval, cfg=cfg, segments=segments)


YEAR_MINUTES = 365.25 * 24 * 60


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(8, 10, 0.95)
    assert lo == pytest.approx(0.49016, abs=1e-4)
    assert hi == pytest.approx(0.94331, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lo99, hi99 = wilson_interval(8, 10, 0.99)
    assert lo99 < lo and hi99 > hi


def test_accuracy_excludes_flat_rows_and_zero_prediction_is_wrong():
    actual = np.array([0.01, -0.02, 0.0, 0.03, -0.01])
    pred = np.array([0.5, -0.1, 0.2, 0.0, 0.3])  # right, right, (flat), no call, wrong
    acc = direction_accuracy(pred, actual)
    assert acc["n"] == 4 and acc["n_flat"] == 1
    assert acc["accuracy"] == pytest.approx(2 / 4)
    assert (acc["accuracy_lo"], acc["accuracy_hi"]) == pytest.approx(wilson_interval(2, 4))


def test_perfect_predictor_pnl_is_sum_abs_minus_fees():
    r = np.array([0.01, -0.02, 0.0, 0.03])
    out = sign_pnl(r, r, 1, fee_bps=1.0, periods_per_year=YEAR_MINUTES)
    # positions +1, -1, 0, +1 from flat: turnover 1 + 2 + 1 + 1 = 5
    assert out["pnl_total_return"] == pytest.approx(math.expm1(0.06 - 5e-4), rel=1e-12)
    pnl = np.array([0.01 - 1e-4, 0.02 - 2e-4, -1e-4, 0.03 - 1e-4])
    assert out["pnl_sharpe"] == pytest.approx(pnl.mean() / pnl.std(ddof=1) * math.sqrt(YEAR_MINUTES))
    assert out["pnl_max_drawdown"] == pytest.approx(-math.expm1(-1e-4))  # only the flat row's exit fee


def test_horizon_trades_every_hth_row_and_segments_restart():
    r = np.array([0.01, 0.5, 0.0, 0.7])  # rows 1 and 3 are inside holding periods: never traded at h=2
    out = sign_pnl(r, r, 2, fee_bps=1.0, periods_per_year=1.0)
    assert out["pnl_total_return"] == pytest.approx(math.expm1(0.01 - 1e-4 - 1e-4))  # enter +1, exit to 0
    assert trade_rows(10, 3).tolist() == [0, 3, 6, 9]
    assert trade_rows(10, 3, [5, 5]).tolist() == [0, 3, 5, 8]
    with pytest.raises(EvaluationError):
        trade_rows(10, 3, [5, 4])


def test_fees_reduce_pnl_exactly_by_turnover():
    rng = np.random.default_rng(0)
    r, pred = rng.normal(0, 1e-3, 500), rng.normal(0, 1, 500)
    free = sign_pnl(pred, r, 1, fee_bps=0.0, periods_per_year=1.0)
    paid = sign_pnl(pred, r, 1, fee_bps=2.5, periods_per_year=1.0)
    turnover = np.abs(np.diff(np.sign(pred), prepend=0.0)).sum()
    assert math.log1p(free["pnl_total_return"]) - math.log1p(paid["pnl_total_return"]) == pytest.approx(
        2.5e-4 * turnover, rel=1e-9
    )


def test_max_drawdown_of_equity_curve():
    r = np.array([0.1, -0.2, 0.05])
    out = sign_pnl(np.ones(3), r, 1, fee_bps=0.0, periods_per_year=1.0)
    assert out["pnl_max_drawdown"] == pytest.approx(1 - math.exp(-0.2))
    assert out["pnl_total_return"] == pytest.approx(math.expm1(-0.05))


def test_periods_per_year():
    assert periods_per_year("1m", 1) == pytest.approx(YEAR_MINUTES)
    assert periods_per_year("1m", 5) == pytest.approx(YEAR_MINUTES / 5)
    assert periods_per_year("1h", 2) == pytest.approx(365.25 * 12)


def test_evaluate_all_model_and_baselines_on_same_rows():
    rng = np.random.default_rng(1)
    n, horizons = 400, [1, 3]
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n + 4)))
    close[50] = close[49]  # a flat candle
    logc = np.log(close)
    last_return = logc[1 : n + 1] - logc[:n]  # at row t: ln(c[t]/c[t-1]) with t = 1..n
    actual = np.column_stack([logc[1 + h : n + 1 + h] - logc[1 : n + 1] for h in horizons])
    pred = actual.copy()  # perfect model
    cfg = EvaluationConfig(fee_bps=0.0)
    flat = evaluate_all(pred, actual, last_return, horizons, interval="1m", cfg=cfg)
    assert set(flat) == {f"{w}.h{h}.{m}" for w in WHO for h in horizons for m in METRICS}
    for h in horizons:
        ns = {flat[f"{w}.h{h}.n"] + flat[f"{w}.h{h}.n_flat"] for w in WHO}
        assert ns == {float(n)}  # identical rows for everyone
        assert flat[f"model.h{h}.accuracy"] == 1.0
        assert flat[f"model.h{h}.ic"] == pytest.approx(1.0)
        assert flat[f"model.h{h}.rmse"] == 0.0
        assert math.isnan(flat[f"always_up.h{h}.ic"])
        j = horizons.index(h)
        assert flat[f"always_up.h{h}.rmse"] == pytest.approx(np.sqrt(np.mean(actual[:, j] ** 2)))
        moved = actual[:, j] != 0
        up = (actual[moved, j] > 0).mean()
        assert flat[f"always_up.h{h}.accuracy"] == pytest.approx(up)
        # persistence and reversal call opposite signs on every row (the flat candle carries the last move)
        total = flat[f"persistence.h{h}.accuracy"] + flat[f"reversal.h{h}.accuracy"]
        assert total == pytest.approx(1.0)
        hits = (np.sign(last_move_sign(last_return)[moved]) == np.sign(actual[moved, j])).mean()
        assert flat[f"persistence.h{h}.accuracy"] == pytest.approx(hits)
        assert flat[f"persistence.h{h}.ic"] == pytest.approx(-flat[f"reversal.h{h}.ic"])
        # fee-free perfect predictor: P&L = sum |r| over every h-th row
        idx = np.arange(0, n, h)
        assert flat[f"model.h{h}.pnl_total_return"] == pytest.approx(math.expm1(np.abs(actual[idx, j]).sum()))
    report = nested_report(flat)
    assert report["model"]["h3"]["accuracy"] == 1.0
    assert set(report) == set(WHO)
    assert best_baseline_accuracy(flat, 1)[0] in WHO[1:]


def test_evaluate_all_rejects_bad_inputs():
    cfg = EvaluationConfig()
    with pytest.raises(EvaluationError, match="shapes"):
        evaluate_all(np.zeros((5, 2)), np.zeros((5, 1)), np.zeros(5), [1], interval="1m", cfg=cfg)
    y = np.zeros((5, 1))
    y[2] = np.nan
    with pytest.raises(EvaluationError, match="actual has 1 non-finite"):
        evaluate_all(np.zeros((5, 1)), y, np.zeros(5), [1], interval="1m", cfg=cfg)


def test_last_move_sign_carries_through_flat_candles():
    r = np.array([0.0, 0.0, 1e-3, 0.0, -2e-3, 0.0, 0.0, 3e-3])
    assert last_move_sign(r).tolist() == [0, 0, 1, 1, -1, -1, -1, 1]


def test_coverage_trades_only_the_most_confident_rows():
    from pipelines.training.metrics import coverage_metrics, top_rows

    actual = np.array([0.01, -0.01, 0.02, -0.02, 0.01, -0.01, 0.03, -0.03, 0.01, -0.01])
    pred = np.array(
        [0.9, 0.8, -0.1, 0.1, 0.2, -0.2, 0.7, -0.6, -0.05, 0.05]
    )  # the confident ones: 0, 6, 7, 1
    assert top_rows(np.abs(pred), 0.25).nonzero()[0].tolist() == [0, 1, 6]  # ceil(2.5) = 3 rows
    m = coverage_metrics(pred, actual, np.abs(pred), 1, fee_bps=0.0, periods_per_year=1.0)
    assert m["acc_top10"] == 1.0 and m["acc_top25"] == pytest.approx(2 / 3)
    assert m["pnl_top10"] == pytest.approx(np.expm1(0.01))  # one row held long, flat elsewhere
    flat = coverage_metrics(pred, actual, np.zeros(10), 1, fee_bps=0.0, periods_per_year=1.0)
    assert all(math.isnan(v) for v in flat.values())  # a constant confidence ranks nothing


def test_reliability_of_perfect_and_overconfident_probabilities():
    from pipelines.training.metrics import reliability

    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=20000) < p).astype(float)
    good = reliability(p, y)
    assert good["ece"] < 0.02 and good["brier"] == pytest.approx(1 / 6, abs=0.01)
    over = reliability(np.clip(0.5 + 2 * (p - 0.5), 0, 1), y)  # twice as far from 1/2 as it should be
    assert over["ece"] > 0.1 and over["brier"] > good["brier"]
