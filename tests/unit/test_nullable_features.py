"""Features that are NaN by design (whale19's book fields on a kline feed): trees train and export on
them, predictions skip no row for them, and models that cannot take NaN are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import load_training_config
from pipelines.features import compute_features, get_feature_set
from pipelines.sources.binance_files import read_klines
from pipelines.tasks import get_task
from pipelines.training.predict import predict_bundle
from pipelines.training.walk_forward import TrainingError, train_walk_forward, usable_rows
from tests.conftest import FIL_FILES, REPO

SMALL = {
    "features": {"feature_set": "core18+whale19"},
    "walk_forward": {"train_size": 4000, "test_size": 1000, "step": 1000, "max_folds": 2, "window": 0},
    "lightgbm": {"n_estimators": 20},
    "export": {"parity_rows": 1000},
}


@pytest.fixture(scope="module")
def candles():
    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:7000].reset_index(drop=True)


def test_usable_rows_allows_nan_only_in_nullable_features(candles):
    fs = get_feature_set("core18+whale19")
    assert set(fs.nullable) == {"spread", "relative_spread", "bid_price", "ask_price"}
    X = compute_features(candles, fs.name).to_numpy().copy()
    assert np.isnan(X[fs.warmup :, fs.names.index("bid_price")]).all()  # kline feed: unknown, not 0
    ok = usable_rows(X, fs.names, fs.nullable)
    assert ok[fs.warmup :].all() and not usable_rows(X, fs.names).any()
    X[fs.warmup + 5, fs.names.index("spread")] = np.inf  # ±inf is never "missing"
    assert not usable_rows(X, fs.names, fs.nullable)[fs.warmup + 5]


def test_lightgbm_trains_exports_and_predicts_with_missing_book_features(candles):
    cfg = load_training_config(REPO / "configs", SMALL, task="returns")
    task = get_task("returns", cfg.labels.horizons)
    res = train_walk_forward(candles, symbol="FILUSDT", interval="1m", cfg=cfg, task=task)
    assert res.parity_max_abs <= 1e-5
    assert res.manifest.feature_set.nullable == ["spread", "relative_spread", "bid_price", "ask_price"]
    pred = predict_bundle(res.onnx_bytes, res.manifest, candles.iloc[-2000:].reset_index(drop=True))
    need = get_feature_set("core18+whale19").warmup
    assert pred.dropna().shape[0] == 2000 - need + 1  # every row past warm-up is predicted


def test_a_model_that_cannot_take_nan_is_refused_with_the_reason(candles):
    cfg = load_training_config(REPO / "configs", SMALL, task="returns")
    task = get_task("returns", cfg.labels.horizons)
    with pytest.raises(TrainingError, match=r"bid_price.*are NaN on these candles.*lstm_attention cannot"):
        train_walk_forward(
            candles,
            symbol="FILUSDT",
            interval="1m",
            cfg=cfg,
            task=task,
            model_type="lstm_attention",
            preset="tiny",
        )
