"""Batch scoring (`score_candles`, behind `kairos predict`): every candle through every graph output, with
the same values as the training path (native model, `predict_bundle`) and serving's streaming path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_training_config
from pipelines.contracts.bundle import OutputSpec, write_bundle
from pipelines.features import compute_features
from pipelines.sources.synthetic import generate
from pipelines.tasks import get_task
from pipelines.training.predict import history_rows, output_columns, predict_bundle, score_candles
from pipelines.training.walk_forward import train_walk_forward
from tests.conftest import REPO
from tests.fixtures.bundles import candle_records, feature_spec, linear_onnx, make_manifest
from tests.fixtures.flow_helpers import SMALL

N = 6000


def small_config(task: str):
    wf = {**SMALL["walk_forward"], "max_folds": 1, "purge": 60}
    return load_training_config(REPO / "configs", {**SMALL, "walk_forward": wf}, task=task)


def train(candles: pd.DataFrame, task: str):
    cfg = small_config(task)
    return train_walk_forward(
        candles,
        symbol="SYNTHUSDT",
        interval="1m",
        cfg=cfg,
        task=get_task(task, cfg.labels.horizons),
        synthetic=True,
    )


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return generate("SYNTHUSDT", n=N, seed=7)


@pytest.fixture(scope="module")
def returns_model(candles):
    return train(candles, "returns")


@pytest.fixture(scope="module")
def volatility_model(candles):
    return train(candles, "volatility")


def native_predictions(res, candles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(rows with exact features, the native model's predictions there): the training path."""
    fs = res.manifest.feature_set
    X = compute_features(candles, fs.name, fs.params or None)[fs.names].to_numpy(np.float32)
    ok = np.isfinite(X).all(axis=1)
    ok[: fs.warmup - 1] = False
    return np.flatnonzero(ok), res.model.predict(X[ok])


@pytest.mark.parametrize("task", ["returns", "volatility"])
def test_scores_equal_the_native_model_and_predict_bundle(task, request, candles):
    res = request.getfixturevalue(f"{task}_model")
    m = res.manifest
    recent = candles.iloc[-2000:].reset_index(drop=True)  # the last rows of the final fit's window and after
    out = score_candles(recent, res.onnx_bytes, m)

    out_name = m.outputs[0].name  # "returns" / "log_variance"
    cols = [f"{out_name}_h{h}" for h in m.horizons]
    assert list(out.columns) == ["symbol", "open_time", "scored", *cols]
    assert len(out) == 2000 and (out["symbol"] == "SYNTHUSDT").all()
    assert out["open_time"].equals(recent["open_time"])
    warm = m.feature_set.warmup
    assert not out["scored"].iloc[: warm - 1].any() and out["scored"].iloc[warm - 1 :].all()
    assert out.loc[~out["scored"], cols].isna().all().all()

    rows, native = native_predictions(res, recent)
    np.testing.assert_array_equal(np.flatnonzero(out["scored"]), rows)
    np.testing.assert_allclose(out.loc[out["scored"], cols].to_numpy(), native, rtol=1e-5, atol=1e-5)

    narrow = predict_bundle(res.onnx_bytes, m, recent)  # the champion-scoring path: exactly the same numbers
    assert narrow["open_time"].equals(out.loc[out["scored"], "open_time"].reset_index(drop=True))
    np.testing.assert_array_equal(
        narrow[[f"h{h}" for h in m.horizons]].to_numpy(), out.loc[out["scored"], cols]
    )


def test_scores_equal_servings_streaming_predictions(returns_model, candles, tmp_path):
    from serving.config import RuntimeConfig
    from serving.predictor import Predictor
    from serving.runtime import load_model

    res = returns_model
    model = load_model(
        write_bundle(tmp_path / "b", res.onnx_bytes, res.manifest),
        RuntimeConfig(warmup_runs=1, withhold_below_baselines=False),
    )
    warm = res.manifest.feature_set.warmup
    window = candles.iloc[4000 : 4000 + warm + 200].reset_index(drop=True)
    pred = Predictor(model)
    got = [pred.update(r) for r in candle_records(window)]
    out = score_candles(window, res.onnx_bytes, res.manifest)
    assert [p is not None for p in got] == out["scored"].tolist()
    streamed = np.array([p.values for p in got if p is not None])
    cols = [f"returns_h{h}" for h in res.manifest.horizons]
    np.testing.assert_allclose(out.loc[out["scored"], cols].to_numpy(), streamed, rtol=0, atol=1e-7)
    assert [p.open_time for p in got if p is not None] == [
        int(t.timestamp() * 1000) for t in out.loc[out["scored"], "open_time"]
    ]


def test_start_end_with_history_scores_every_row_in_range(returns_model, candles):
    res, m = returns_model, returns_model.manifest
    full = score_candles(candles, res.onnx_bytes, m)
    assert history_rows(m) == m.feature_set.warmup - 1
    lo, hi = 3000, 3499
    start, end = candles["open_time"].iloc[lo], candles["open_time"].iloc[hi]
    k = history_rows(m)
    part = score_candles(
        candles.iloc[lo - k : hi + 50], res.onnx_bytes, m, start=start, end=end.tz_localize(None).isoformat()
    )  # a naive end is UTC
    assert len(part) == 500 and part["scored"].all()
    pd.testing.assert_frame_equal(part, full.iloc[lo : hi + 1].reset_index(drop=True))

    short = score_candles(candles.iloc[lo - k + 1 : hi + 1], res.onnx_bytes, m, start=start)
    assert len(short) == 500 and not short["scored"].iloc[0] and short["scored"].iloc[1:].all()

    none = score_candles(
        candles, res.onnx_bytes, m, start=candles["open_time"].iloc[-1] + pd.Timedelta("1min")
    )
    assert none.empty and list(none.columns) == list(full.columns)


def test_batches_give_the_same_scores(returns_model, candles):
    res = returns_model
    recent = candles.iloc[-1500:].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        score_candles(recent, res.onnx_bytes, res.manifest, batch_size=7),
        score_candles(recent, res.onnx_bytes, res.manifest),
    )


def extra_outputs_onnx(n_features: int, horizons: int) -> bytes:
    """features (N, F) → returns (N, H), whale_probability (N, 1), anomaly_score (N,),
    threat_level (N, 1) int64, feature_deviation (N, F) = the features: a future whale-like graph."""
    from onnx import TensorProto, helper, numpy_helper

    W = np.full((n_features, horizons), 1e-3, dtype=np.float32)
    inits = [
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["returns"]),
        helper.make_node("Slice", ["returns", "zero", "one", "axis1"], ["r0"]),
        helper.make_node("Sigmoid", ["r0"], ["whale_probability"]),
        helper.make_node("ReduceSum", ["features", "axis1"], ["anomaly_score"], keepdims=0),
        helper.make_node("Cast", ["whale_probability"], ["threat_level"], to=TensorProto.INT64),
        helper.make_node("Identity", ["features"], ["feature_deviation"]),
    ]
    outputs = [
        helper.make_tensor_value_info("returns", TensorProto.FLOAT, [None, horizons]),
        helper.make_tensor_value_info("whale_probability", TensorProto.FLOAT, [None, 1]),
        helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [None]),
        helper.make_tensor_value_info("threat_level", TensorProto.INT64, [None, 1]),
        helper.make_tensor_value_info("feature_deviation", TensorProto.FLOAT, [None, n_features]),
    ]
    graph = helper.make_graph(
        nodes,
        "extra",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="kairos-test")
    model.ir_version = 8
    return model.SerializeToString()


def test_every_graph_output_gets_columns_even_those_the_manifest_omits(candles):
    fs = feature_spec("core27")
    manifest = make_manifest(fs, symbol="SYNTHUSDT")  # lists only "returns" (h1..h5)
    onnx_bytes = extra_outputs_onnx(len(fs.names), len(manifest.horizons))
    window = candles.iloc[:800].reset_index(drop=True)
    out = score_candles(window, onnx_bytes, manifest)
    F = len(fs.names)
    assert list(out.columns) == [
        "symbol",
        "open_time",
        "scored",
        *[f"returns_h{h}" for h in manifest.horizons],
        "whale_probability",
        "anomaly_score",
        "threat_level",
        *[f"feature_deviation_{i}" for i in range(F)],
    ]
    ok = out["scored"].to_numpy()
    feats = compute_features(window, "core27")[fs.names].to_numpy(np.float32).astype(np.float64)
    np.testing.assert_array_equal(
        out.loc[ok, [f"feature_deviation_{i}" for i in range(F)]].to_numpy(), feats[ok]
    )
    np.testing.assert_allclose(out.loc[ok, "anomaly_score"], feats[ok].sum(axis=1), rtol=1e-5)
    assert str(out["threat_level"].dtype) == "Int64"
    assert out.loc[~ok, "threat_level"].isna().all()
    assert (out.loc[ok, "threat_level"] == out.loc[ok, "whale_probability"].astype("int64")).all()
    assert out.loc[~ok, "whale_probability"].isna().all()

    only = score_candles(window, onnx_bytes, manifest, outputs=["anomaly_score"])
    assert list(only.columns) == ["symbol", "open_time", "scored", "anomaly_score"]
    with pytest.raises(Exception, match="no output"):
        score_candles(window, onnx_bytes, manifest, outputs=["nope"])


def test_output_column_names():
    per_h = OutputSpec("whale_probability", [None, 1], horizons=[15])
    assert output_columns("whale_probability", 1, per_h) == ["whale_probability_h15"]
    assert output_columns("anomaly_score", 1, None) == ["anomaly_score"]
    assert output_columns("log_variance", 3, OutputSpec("log_variance", [None, 3], horizons=[5, 15, 60])) == [
        "log_variance_h5",
        "log_variance_h15",
        "log_variance_h60",
    ]
    assert output_columns("feature_deviation", 3, None) == [
        "feature_deviation_0",
        "feature_deviation_1",
        "feature_deviation_2",
    ]
    # a width that is not the manifest's horizon count falls back to positions
    assert output_columns("q", 2, OutputSpec("q", [None, 5], horizons=[1, 2, 3, 4, 5])) == ["q_0", "q_1"]


def sequence_onnx(n_features: int, seq_len: int) -> bytes:
    """features (N, T, F) → first (N, 1) = sum of the window's first row, last (N, 1) = of its last row."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "i_first"),
        numpy_helper.from_array(np.array(seq_len - 1, dtype=np.int64), "i_last"),
        numpy_helper.from_array(np.ones((n_features, 1), dtype=np.float32), "ones"),
    ]
    nodes = [
        helper.make_node("Gather", ["features", "i_first"], ["x_first"], axis=1),
        helper.make_node("Gather", ["features", "i_last"], ["x_last"], axis=1),
        helper.make_node("MatMul", ["x_first", "ones"], ["first"]),
        helper.make_node("MatMul", ["x_last", "ones"], ["last"]),
    ]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, seq_len, n_features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in ("first", "last")],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="kairos-test")
    model.ir_version = 8
    return model.SerializeToString()


def test_sequence_models_get_windows_ending_at_each_row(candles):
    T = 8
    fs = feature_spec("core27")
    manifest = make_manifest(fs, symbol="SYNTHUSDT", seq_len=T, horizons=[1])
    manifest = dataclasses.replace(
        manifest, outputs=[OutputSpec("first", [None, 1]), OutputSpec("last", [None, 1])]
    )
    assert history_rows(manifest) == fs.warmup - 1 + T - 1
    window = candles.iloc[:900].reset_index(drop=True)
    out = score_candles(window, sequence_onnx(len(fs.names), T), manifest, batch_size=50)
    first_scored = fs.warmup - 1 + T - 1
    assert not out["scored"].iloc[:first_scored].any() and out["scored"].iloc[first_scored:].all()
    sums = compute_features(window, "core27")[fs.names].to_numpy(np.float32).sum(axis=1, dtype=np.float32)
    ok = out["scored"].to_numpy()
    rows = np.flatnonzero(ok)
    np.testing.assert_allclose(out.loc[ok, "last"], sums[rows], rtol=1e-5)
    np.testing.assert_allclose(out.loc[ok, "first"], sums[rows - (T - 1)], rtol=1e-5)

    seq_returns = make_manifest(fs, symbol="SYNTHUSDT", seq_len=T)  # predict_bundle takes the same windows
    seq_bytes = linear_onnx(len(fs.names), 5, bias=0.0, weight=1e-3, seq_len=T)
    a = score_candles(window, seq_bytes, seq_returns)
    b = predict_bundle(seq_bytes, seq_returns, window)
    np.testing.assert_array_equal(
        a.loc[a["scored"], [f"returns_h{h}" for h in range(1, 6)]], b[[f"h{h}" for h in range(1, 6)]]
    )

    short = score_candles(window.iloc[: T - 1], seq_bytes, seq_returns)
    assert len(short) == T - 1 and not short["scored"].any()


def test_non_finite_features_are_not_scored_unless_nullable(candles, monkeypatch):
    import pipelines.features as features

    fs = feature_spec("core27")
    bad_row, bad_feature = 700, fs.names[3]
    real = features.compute_features

    def with_a_hole(c, name, params=None):
        out = real(c, name, params)
        out.loc[out.index[bad_row], bad_feature] = np.nan
        return out

    monkeypatch.setattr(features, "compute_features", with_a_hole)
    window = candles.iloc[:800].reset_index(drop=True)
    onnx_bytes = linear_onnx(len(fs.names), 5, bias=0.5)
    strict = score_candles(window, onnx_bytes, make_manifest(fs, symbol="SYNTHUSDT"))
    assert strict["scored"].sum() == 800 - (fs.warmup - 1) - 1 and not strict["scored"].iloc[bad_row]
    nullable = dataclasses.replace(fs, nullable=[bad_feature])
    loose = score_candles(window, onnx_bytes, make_manifest(nullable, symbol="SYNTHUSDT"))
    assert loose["scored"].iloc[fs.warmup - 1 :].all()


def test_other_symbols_are_scored_under_their_own_name(returns_model):
    other = generate("SYNTHETH", n=1200, seed=11, start_price=2000.0)
    out = score_candles(other, returns_model.onnx_bytes, returns_model.manifest)
    assert (out["symbol"] == "SYNTHETH").all() and out["scored"].sum() == 1200 - (
        returns_model.manifest.feature_set.warmup - 1
    )
