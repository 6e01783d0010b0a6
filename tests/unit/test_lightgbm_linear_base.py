"""LightGBM boosted on a ridge base (`lightgbm.linear_base`): native == ONNX, NaN inputs, the linear effect."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import LightGBMConfig
from pipelines.contracts.onnx import make_session
from pipelines.models.base import ModelError
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


def test_volatility_scaled_targets_answer_in_label_units_natively_and_in_onnx():
    rng = np.random.default_rng(3)
    n = 6000
    X = rng.normal(size=(n, 4)).astype(np.float32)
    X[:, 3] = (np.abs(X[:, 3]) * 0.01 + 0.001).astype(np.float32)  # a volatility-like input
    X[::13, 3] = np.nan  # → the floor
    vol = np.nan_to_num(X[:, 3].astype(float), nan=0.001)
    Y = np.column_stack([vol * (-0.5 * X[:, 0] + rng.standard_t(3, size=n)) for _ in range(2)])
    cfg = LightGBMConfig(n_estimators=20, linear_base=True, scale_by="vol")
    m = LightGBMReturns(cfg, [1, 2], objective="huber", scale_index=3).fit(X, Y)
    assert 0 < m.scale_floor_ < np.nanquantile(X[:, 3], 0.1)
    native = m.predict(X)
    np.testing.assert_allclose(
        make_session(m.to_onnx()).run(None, {"features": X})[0], native, rtol=1e-5, atol=1e-9
    )
    unscaled = np.column_stack([b.predict(X) for b in m.boosters_]) + m.linear_.predict(X)
    np.testing.assert_allclose(native, unscaled * m._scale(X)[:, None], rtol=1e-12)
    assert m._scale(X)[0] == pytest.approx(m.scale_floor_)  # row 0 has a NaN scale: the floor


def test_scale_by_names_a_feature_of_the_set():
    from pipelines.config import TrainingConfig
    from pipelines.models import make_model

    cfg = TrainingConfig().model_copy(update={"lightgbm": LightGBMConfig(scale_by="volatility_30m")})
    m = make_model("lightgbm", cfg, 27, [1], objective="huber")
    assert m.scale_index == 16  # core27's volatility_30m
    bad = cfg.model_copy(update={"lightgbm": LightGBMConfig(scale_by="nope")})
    with pytest.raises(ModelError, match="'nope' is not a feature of core27"):
        make_model("lightgbm", bad, 27, [1], objective="huber")
