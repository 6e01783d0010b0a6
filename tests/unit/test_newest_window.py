"""Promotion's comparison on the newest window: the task's metric for challenger, champion and the best
naive baseline, all on the same out-of-sample rows; the policy then can require beating the baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.config import PromotionPolicy
from pipelines.contracts.newest_window import NewestWindow
from pipelines.review.decision import decide
from pipelines.review.newest_window import compare_on_newest_window
from pipelines.tasks import get_task


def _window(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    actual = rng.normal(size=(n, 1))
    good = np.where(rng.random(n) < 0.56, actual[:, 0], -actual[:, 0])  # ~56 % right
    reversal = np.where(rng.random(n) < 0.60, actual[:, 0], -actual[:, 0])  # ~60 % right
    times = (np.arange(n, dtype=np.int64) + 1_000) * 60_000
    base = {
        "always_up": np.column_stack([np.ones(n), np.zeros(n)]),
        "reversal": np.column_stack([np.sign(reversal), reversal]),
    }
    return NewestWindow(times, good[:, None], actual, base), times


def test_best_baseline_is_scored_on_the_same_rows_as_the_models():
    nw, times = _window()
    task = get_task("returns", (1,))
    champ = pd.DataFrame(
        {"open_time": pd.to_datetime(times, unit="ms", utc=True), "h1": -nw.predictions[:, 0]}
    )
    champ.loc[:99, "h1"] = np.nan  # the champion lacks the first 100 rows: all three are scored without them
    train_end = pd.to_datetime(times[199], unit="ms", utc=True)  # and rows up to its training end are dropped
    cmp = compare_on_newest_window(nw, [1], 1, champ, train_end, task=task)
    rows = slice(200, None)
    a = nw.actuals[rows, 0]
    acc = lambda s: float((np.sign(s) == np.sign(a)).mean())  # noqa: E731 - no flat rows here
    assert cmp.rows == 800 and cmp.challenger_score == acc(nw.predictions[rows, 0])
    assert cmp.champion_score == acc(-nw.predictions[rows, 0])
    assert cmp.baseline_name == "reversal" and cmp.baseline_score == acc(nw.baselines["reversal"][rows, 0])


def test_policy_requiring_the_baselines_refuses_a_challenger_below_the_best_rule():
    nw, _ = _window()
    cmp = compare_on_newest_window(nw, [1], 1, None, None, task=get_task("returns", (1,)))
    assert cmp.challenger_score < cmp.baseline_score  # 56 % against the reversal rule's 60 %
    strict = PromotionPolicy(require_beats_baselines=True)
    d = decide(
        strict,
        challenger_score=cmp.challenger_score,
        champion_score=None,
        n_rows=cmp.rows,
        gates={"parity": True},
        baseline_score=cmp.baseline_score,
        below_baselines={},
    )
    assert not d.promote and "does not beat the best naive baseline" in d.reason
    old = NewestWindow(nw.open_times, nw.predictions, nw.actuals)  # a run logged before baselines were kept
    cmp_old = compare_on_newest_window(old, [1], 1, None, None, task=get_task("returns", (1,)))
    assert cmp_old.baseline_score is None
    d = decide(
        strict,
        challenger_score=cmp_old.challenger_score,
        champion_score=None,
        n_rows=cmp_old.rows,
        gates={"parity": True},
        baseline_score=cmp_old.baseline_score,
        below_baselines={},
    )
    assert not d.promote and "no baseline score" in d.reason


def test_volatility_baselines_use_the_task_metric_direction():
    rng = np.random.default_rng(1)
    n = 500
    actual = rng.normal(-12, 1, size=(n, 1))
    model = actual + rng.normal(0, 0.5, size=(n, 1))
    base = {
        "persistence": actual + rng.normal(0, 1.0, size=(n, 1)),
        "har_rv": actual + rng.normal(0, 0.3, size=(n, 1)),
    }
    nw = NewestWindow(np.arange(n, dtype=np.int64) * 60_000, model, actual, base)
    cmp = compare_on_newest_window(nw, [5], 5, None, None, task=get_task("volatility", (5,)))
    assert cmp.metric == "qlike" and not cmp.higher_is_better
    assert (
        cmp.baseline_name == "har_rv" and cmp.baseline_score < cmp.challenger_score
    )  # lower QLIKE is better
