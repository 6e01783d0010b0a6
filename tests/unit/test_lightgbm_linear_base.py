"""LightGBM boosted on a ridge base (`lightgbm.linear_base`): native == ONNX, NaN inputs, the linear effect."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import LightGBMConfig
from pipelines.contracts.onnx import make_session
from pipelines.models.lightgbm import LightGBMReturns, LinearBase


def _data(n: int = 6000, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    X[::9, 3] = np.nan  # a feature with gaps (e.g. whale19's unknown book fields)
    noise = rng.standard_t(3, size=(n, 2)) * 0.5
    Y = -0.2 * X[:, [0]].astype(np.float64) + 0.1 * np.tanh(X[:, [1]]) + noise  # linear + a bend
    return X, Y


def test_linear_base_export_matches_native_with_nan_inputs():
    X, Y = _data()
    m = LightGBMReturns(LightGBMConfig(n_estimators=20, linear_base=True), [1, 2], objective="huber").fit(
        X, Y
    )
    out = make_session(m.to_onnx()).run(None, {"features": X})[0]
    native = m.predict(X)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, native, rtol=1e-5, atol=1e-6)
    # the base alone is the ridge: the trees add to it
    trees_only = np.column_stack([b.predict(X) for b in m.boosters_])
    np.testing.assert_allclose(native, trees_only + m.linear_.predict(X), rtol=1e-12)


def test_ridge_recovers_a_linear_effect_and_fills_nan_with_the_mean():
    X, Y = _data(20_000, seed=1)
    lin = LinearBase.fit(X, Y, l2=0.0)
    assert lin.coef[0, 0] == pytest.approx(-0.2, abs=0.02)
    row = X[:1].copy()
    row[0, 3] = np.nan
    filled = row.copy()
    filled[0, 3] = lin.mean[3]
    np.testing.assert_allclose(lin.predict(row), lin.predict(filled), rtol=1e-6)  # float32 row


def test_a_direction_classifier_boosts_without_the_linear_base():
    X, Y = _data(2000)
    m = LightGBMReturns(LightGBMConfig(n_estimators=5, linear_base=True), [1, 2], objective="direction")
    assert m.fit(X, Y).linear_ is None
    out = make_session(m.to_onnx()).run(None, {"features": X})[0]
    np.testing.assert_allclose(out, m.predict(X), rtol=1e-5, atol=1e-6)
