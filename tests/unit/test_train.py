"""Walk-forward training core: fast slices with stand-in features, and real FILUSDT data.

The first tests replace `pipelines.features` with tiny stand-ins so the row
bookkeeping (warm-up, labels, window, folds, newest window, sequence alignment) is checked exactly
and quickly. The real-data tests run the whole thing on FILUSDT 1m candles.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper, numpy_helper
from pydantic import BaseModel

from pipelines.config import TrainingConfig
from pipelines.contracts.errors import ParityError
from pipelines.models import REGISTERED, ModelSpec
from pipelines.tasks.returns import ReturnsTask
from pipelines.training.splits import SplitError
from tests.conftest import FIL_FILES

WHO = ("model", *ReturnsTask.baselines)

H = [1, 2, 3]
SMALL = {
    "labels": {"horizons": H},
    "walk_forward": {
        "train_size": 300,
        "test_size": 60,
        "step": 60,
        "purge": 3,
        "max_folds": 3,
        "window": 600,
    },
    "lightgbm": {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 10, "num_threads": 1},
    "export": {"parity_rows": 200},
}


def candles_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 5.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    return pd.DataFrame(
        {
            "open_time": pd.date_range("2023-08-01", periods=n, freq="1min", tz="UTC"),
            "open": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": rng.uniform(1, 10, n),
        }
    )


@dataclass(frozen=True)
class FakeFeatureSet:
    name: str
    version: int
    names: list[str]
    warmup: int


@pytest.fixture()
def fake_features(monkeypatch):
    """Stand-in features (lagged returns, NaN for 10 warm-up rows) and labels (the contract's formula)."""
    names = [f"r{k}" for k in range(1, 5)]
    warmup = 10

    def compute_features(candles, name, params=None):
        lc = np.log(candles["close"].to_numpy(float))
        cols = {}
        for k, n in enumerate(names, start=1):
            v = np.full(lc.shape, np.nan)
            v[k:] = lc[k:] - lc[:-k]
            cols[n] = v
        df = pd.DataFrame(cols)
        df.iloc[:warmup] = np.nan
        return df

    feats = types.ModuleType("pipelines.features")
    feats.compute_features = compute_features
    feats.get_feature_set = lambda name: FakeFeatureSet(name, 1, names, warmup)
    monkeypatch.setitem(sys.modules, "pipelines.features", feats)
    return compute_features


def test_row_bookkeeping_with_stand_in_features(fake_features):
    from pipelines.training.walk_forward import train_walk_forward

    candles = candles_frame(700)
    cfg = TrainingConfig.model_validate({**SMALL, "features": {"feature_set": "fake"}})
    seen = []
    res = train_walk_forward(
        candles,
        symbol="TEST",
        interval="1m",
        cfg=cfg,
        synthetic=True,
        progress=lambda s, d, t: seen.append((s, d, t)),
    )
    # labelled rows [10, 697); window keeps the newest 600 → candle rows [97, 697)
    assert [(f.train_start, f.train_end, f.test_start, f.test_end) for f in res.folds] == [
        (117, 417, 420, 480),
        (177, 477, 480, 540),
        (237, 537, 540, 600),
    ]
    assert res.data_window["evaluation_start"] == candles["open_time"][97].isoformat()
    assert res.data_window["end"] == candles["open_time"][696].isoformat()
    assert res.data_window["rows"] == 300
    nw = res.newest_window
    assert (
        nw.open_times.tolist()
        == candles["open_time"][637:697].astype("datetime64[ms, UTC]").astype("int64").tolist()
    )
    close = np.log(candles["close"].to_numpy())
    np.testing.assert_allclose(nw.actuals[:, 2], close[640:700] - close[637:697])
    assert nw.predictions.shape == (60, 3)
    assert ("folds", 3, 3) in seen and seen[-1] == ("export", 2, 2)
    m = res.manifest
    assert m.synthetic and m.input.shape == [None, 4] and m.horizons == H
    assert m.outputs[0].meaning == "predicted log return ln(close[t+h]/close[t])"
    assert json.loads(m.to_json())["metrics"]["model.h1.accuracy"] == res.summary_metrics["model.h1.accuracy"]
    n_pooled = 180
    for who in WHO:
        for h in H:
            assert (
                res.summary_metrics[f"{who}.h{h}.n"] + res.summary_metrics[f"{who}.h{h}.n_flat"] == n_pooled
            )


class NoConfig(BaseModel):
    """MeanWindowModel has no hyperparameters."""


class MeanWindowModel:
    """A tiny sequence model: least squares on the window mean; ONNX = ReduceMean → MatMul → Add."""

    model_type, input_kind, sequence_length, parity_tolerance = "mean_window", "sequence", 5, 1e-5
    calls: list = []  # ("fit", X.shape, X_val.shape) / ("predict", X) across instances, in order

    def __init__(self, n_features, horizons):
        self.n_features, self.horizons, self.coef_ = n_features, list(horizons), None

    def fit(self, X, Y, *, X_val=None, Y_val=None):
        self.calls.append(("fit", X.shape, X_val.shape))
        A = np.column_stack([X.mean(axis=1), np.ones(len(X))]).astype(np.float64)
        self.coef_ = np.linalg.lstsq(A, Y, rcond=None)[0]  # (F + 1, H)
        return self

    def predict(self, X):
        self.calls.append(("predict", np.array(X)))
        m = X.astype(np.float32).mean(axis=1).astype(np.float64)
        return m @ self.coef_[:-1] + self.coef_[-1]

    def to_onnx(self):
        W, b = self.coef_[:-1].astype(np.float32), self.coef_[-1].astype(np.float32)
        g = helper.make_graph(
            [
                helper.make_node("ReduceMean", ["features"], ["m"], axes=[1], keepdims=0),
                helper.make_node("MatMul", ["m", "W"], ["mw"]),
                helper.make_node("Add", ["mw", "b"], ["returns"]),
            ],
            "mean_window",
            [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, 5, self.n_features])],
            [helper.make_tensor_value_info("returns", onnx.TensorProto.FLOAT, [None, len(self.horizons)])],
            initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m.SerializeToString()

    def get_params(self):
        return {"sequence_length": 5}


def test_sequence_model_windows_align_labels_to_last_row(fake_features, monkeypatch):
    from pipelines.training.walk_forward import train_walk_forward

    monkeypatch.setattr(MeanWindowModel, "calls", [])
    spec = ModelSpec(
        name="mean_window",
        factory=lambda cfg, nf, hs, **kw: MeanWindowModel(nf, hs),
        config_class=NoConfig,
        input_kind="sequence",
        base_config=lambda ctx: {},
    )
    monkeypatch.setitem(REGISTERED, "mean_window", spec)
    candles = candles_frame(700, seed=3)
    cfg = TrainingConfig.model_validate({**SMALL, "features": {"feature_set": "fake"}})
    res = train_walk_forward(candles, symbol="TEST", interval="1m", cfg=cfg, model_type="mean_window")
    assert res.manifest.input.shape == [None, 5, 4] and res.parity_max_abs <= 1e-5
    calls = MeanWindowModel.calls
    # 3 folds (fit, predict) + final fit + parity predict; fit rows = 300 - 30 validation - 3 purge
    assert [c[0] for c in calls] == ["fit", "predict"] * 3 + ["fit", "predict"]
    assert calls[0][1:] == ((267, 5, 4), (30, 5, 4))
    # the newest fold tested the windows ENDING on candle rows 637..696, labels of those same rows
    X = fake_features(candles, "fake").to_numpy(np.float32)
    want = np.stack([X[i - 4 : i + 1] for i in range(637, 697)])
    np.testing.assert_array_equal(calls[5][1], want)
    close = np.log(candles["close"].to_numpy())
    np.testing.assert_allclose(res.newest_window.actuals[:, 0], close[638:698] - close[637:697])
    # the labelled window starts 5 - 1 rows later than for tabular inputs, but the window is still 600 rows
    assert res.data_window["evaluation_rows"] == 600


def test_too_few_candles_is_a_split_error(fake_features):
    from pipelines.training.walk_forward import train_walk_forward

    cfg = TrainingConfig.model_validate({**SMALL, "features": {"feature_set": "fake"}})
    with pytest.raises(SplitError, match="need train_size 300"):
        train_walk_forward(candles_frame(300), symbol="T", interval="1m", cfg=cfg)


# ------------------------------------------------------------------ real FILUSDT data
REAL = {
    "walk_forward": {
        "train_size": 10_000,
        "test_size": 2_000,
        "step": 2_000,
        "purge": 5,
        "max_folds": 3,
        "window": 16_005,
    },
    "lightgbm": {"n_estimators": 50, "num_threads": 1},
    "export": {"parity_rows": 2_000},
}


@pytest.fixture(scope="module")
def fil_candles():
    pytest.importorskip("pipelines.features", reason="pipelines.features has not landed yet")
    from pipelines.sources.binance_files import read_klines

    if not FIL_FILES:
        pytest.fail("FILUSDT-1m-2023-*.zip missing from ../shared/data")
    return read_klines(FIL_FILES[0], "FILUSDT", "1m")  # August 2023: 44,640 candles


@pytest.fixture(scope="module")
def fil_result(fil_candles):
    from pipelines.training.walk_forward import train_walk_forward

    cfg = TrainingConfig.model_validate(REAL)
    return train_walk_forward(
        fil_candles.iloc[-17_000:].reset_index(drop=True), symbol="FILUSDT", interval="1m", cfg=cfg
    )


def test_real_fil_training_parity_and_report(fil_result, fil_candles):
    res = fil_result
    assert res.parity_max_abs <= 1e-5 and res.gates == {"parity": True}
    assert len(res.folds) == 3 and len(res.fold_metrics) == 3
    assert len(res.feature_names) == 27 and res.manifest.input.shape == [None, 27]
    for h in [1, 2, 3, 4, 5]:
        counts = {res.summary_metrics[f"{w}.h{h}.n"] + res.summary_metrics[f"{w}.h{h}.n_flat"] for w in WHO}
        assert counts == {6000.0}  # model and the three baselines on identical rows
        for w in WHO:
            assert set(res.report[w][f"h{h}"]) >= {
                "accuracy",
                "accuracy_lo",
                "accuracy_hi",
                "pnl_total_return",
            }
        assert 0.4 < res.summary_metrics[f"model.h{h}.accuracy"] < 0.65
    last = fil_candles.iloc[-17_000:].reset_index(drop=True)
    newest = res.newest_window
    expected_times = (
        last["open_time"].iloc[-5 - 2000 : -5].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    )
    np.testing.assert_array_equal(newest.open_times, expected_times)  # the last labelled test rows
    close = np.log(last["close"].to_numpy())
    np.testing.assert_allclose(newest.actuals[:, 0], close[-2000 - 4 :][:2000] - close[-2000 - 5 : -5])
    assert len(res.manifest.training["data_hash"]) == 64


def test_real_fil_broken_export_blocks(fil_candles, monkeypatch):
    from pipelines.models.lightgbm import LightGBMReturns
    from pipelines.training.walk_forward import train_walk_forward
    from tests.unit.test_lightgbm_export import add_constant

    original = LightGBMReturns.to_onnx
    monkeypatch.setattr(LightGBMReturns, "to_onnx", lambda self: add_constant(original(self), 1e-4))
    cfg = TrainingConfig.model_validate(
        {
            **REAL,
            "walk_forward": {**REAL["walk_forward"], "max_folds": 1},
            "lightgbm": {"n_estimators": 5, "num_threads": 1},
        }
    )
    with pytest.raises(ParityError, match="abs diff 0.0001 > tolerance 1e-05"):
        train_walk_forward(
            fil_candles.iloc[-14_000:].reset_index(drop=True), symbol="FILUSDT", interval="1m", cfg=cfg
        )


def test_real_predict_bundle_scores_like_the_final_model(fil_result, fil_candles):
    from pipelines.features import compute_features
    from pipelines.training.predict import predict_bundle

    res = fil_result
    recent = fil_candles.iloc[-1_500:].reset_index(drop=True)
    out = predict_bundle(res.onnx_bytes, res.manifest, recent)
    warmup = res.manifest.feature_set.warmup
    assert list(out.columns) == ["open_time", "h1", "h2", "h3", "h4", "h5"]
    assert len(out) == 1_500 - (warmup - 1)  # every row from the first exact one
    assert out["open_time"].iloc[-1] == recent["open_time"].iloc[-1]
    X = compute_features(recent, "core27")[res.feature_names].to_numpy(np.float32)[warmup - 1 :]
    np.testing.assert_allclose(
        out[["h1", "h2", "h3", "h4", "h5"]].to_numpy(), res.model.predict(X), atol=1e-5
    )


def test_direction_objective_trains_exports_and_names_its_output(fake_features):
    """The task's objective reaches the model; the bundle's output is the classifier's log-odds."""
    from pipelines.tasks import get_task
    from pipelines.training.walk_forward import train_walk_forward

    cfg = TrainingConfig.model_validate({**SMALL, "features": {"feature_set": "fake"}})
    task = get_task("returns", tuple(H), objective="direction")
    res = train_walk_forward(candles_frame(700), symbol="TEST", interval="1m", cfg=cfg, task=task)
    out = res.manifest.outputs[0]
    assert (out.name, out.signed) == ("direction_logit", True) and "log-odds" in out.meaning
    assert res.params["objective"] == "direction" and res.parity_max_abs < 1e-5
    assert 0 <= res.summary_metrics["model.h1.brier"] <= 1
