"""The returns task: labels (future log returns per horizon, NaN past the end), baselines, scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.contracts.errors import KairosError
from pipelines.tasks import TaskError, get_task
from pipelines.tasks.returns import make_labels
from tests.conftest import FIL_FILES

LabelError = TaskError


def label_names(horizons):
    return get_task("returns", horizons).label_names


def test_hand_checked_values():
    close = np.array([1.0, 2.0, 4.0, 2.0, 1.0])
    y = make_labels(close, [1, 2])
    assert y.shape == (5, 2) and y.dtype == np.float64
    ln2 = math.log(2)
    np.testing.assert_allclose(y[:4, 0], [ln2, ln2, -ln2, -ln2], rtol=1e-15)
    np.testing.assert_allclose(y[:3, 1], [math.log(4), 0.0, -math.log(4)], rtol=1e-15, atol=1e-300)
    assert np.isnan(y[4, 0]) and np.isnan(y[3:, 1]).all()


def test_horizon_longer_than_series_is_all_nan():
    y = make_labels(np.array([1.0, 1.1, 1.2]), [1, 5])
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:2, 0]).all()


def test_names():
    assert label_names([1, 2, 3, 4, 5]) == ["ret_h1", "ret_h2", "ret_h3", "ret_h4", "ret_h5"]
    assert label_names((15, 60)) == ["ret_h15", "ret_h60"]


@pytest.mark.parametrize("horizons", [[], [0], [-1, 2], [1, 1], [1.5]])
def test_bad_horizons(horizons):
    with pytest.raises(KairosError, match="horizons"):
        label_names(horizons)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_bad_prices_named(bad):
    close = np.array([1.0, 2.0, bad, 3.0])
    with pytest.raises(LabelError, match=r"close\[2\]"):
        make_labels(close, [1])


def test_not_1d():
    with pytest.raises(LabelError, match="1-D"):
        make_labels(np.ones((3, 2)), [1])


def test_real_data_sum_of_one_step_returns(shared_data):
    """ret_h5[t] = sum of the five one-candle returns after t (telescoping), on real FILUSDT closes."""
    from pipelines.sources.binance_files import read_klines

    close = read_klines(FIL_FILES[0], "FILUSDT")["close"].to_numpy()[:20000]
    y = make_labels(close, [1, 5])
    n = close.size
    tele = sum(y[k : n - 5 + k, 0] for k in range(5))
    np.testing.assert_allclose(y[: n - 5, 1], tele, rtol=0, atol=1e-13)
    assert np.isnan(y[n - 5 :, 1]).all() and np.isfinite(y[: n - 5]).all()


def test_baselines_carry_the_last_move_through_flat_candles():
    task = get_task("returns", (1, 2))
    close = np.array([1.0, 1.1, 1.1, 1.0, 1.0, 1.0])
    A = task.baseline_inputs(close)
    base = task.baseline_forecasts(task.fit_baselines(A[1:], None), A[1:])
    np.testing.assert_array_equal(base["persistence"][:, 0], [1, 1, -1, -1, -1])
    np.testing.assert_array_equal(base["reversal"][:, 0], [-1, -1, 1, 1, 1])
    np.testing.assert_array_equal(base["always_up"][:, 0], 1)


def test_realised_matches_labels_and_is_nan_past_the_grid():
    task = get_task("returns", (1, 3))
    close = np.array([1.0, 2.0, 4.0, 2.0, np.nan, 1.0])
    np.testing.assert_allclose(task.realised(close, np.array([0, 1]), 1), [math.log(2), math.log(2)])
    out = task.realised(close, np.array([1, 3, 4]), 3)  # row 1+3 is a missing candle, 4+3 past the end
    assert np.isnan(out).all()


def test_direction_objective_changes_the_meaning_and_adds_calibration():
    from pipelines.config import EvaluationConfig

    t = get_task("returns", (1,), objective="direction")
    assert (
        t.training_objective == "direction" and "log-odds" in t.meaning and t.output_name == "direction_logit"
    )
    assert get_task("returns", (1,)).output_name == "returns"
    rng = np.random.default_rng(0)
    actual = 1e-3 * rng.normal(size=(2000, 1))
    logit = actual * 3e3 + rng.normal(size=(2000, 1))
    base = t.baseline_forecasts(None, 1e-3 * rng.normal(size=(2000, 1)))
    flat = t.evaluate(logit, actual, base, interval="1m", cfg=EvaluationConfig())
    assert 0 < flat["model.h1.brier"] < 0.25 and 0 <= flat["model.h1.ece"] < 1
    assert "persistence.h1.brier" not in flat
    assert get_task("returns", (1,)).meaning == "predicted log return ln(close[t+h]/close[t])"


def test_objective_preference_list_each_family_takes_the_first_it_supports():
    from pipelines.tasks import load_task
    from tests.conftest import REPO

    t = load_task(REPO / "configs", "returns", (1, 2, 3, 4, 5))
    assert t.objectives == ("huber", "l2") and t.training_objective == "huber"  # the shipped default
    assert t.for_family(("l2", "huber", "quantile", "direction")).training_objective == "huber"  # LightGBM
    tft = t.for_family(("l2", "quantile"), "model tft")
    assert tft.objectives == ("l2",) and tft.output_name == "returns"
    with pytest.raises(TaskError, match="model toy supports objectives"):
        t.for_family(("quantile",), "model toy")
