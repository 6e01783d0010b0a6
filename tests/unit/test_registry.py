"""Registry against a real MLflow (SQLite in tmp_path): run logging, model versions, bundle download.

The TrainResult is built by hand: a tiny LightGBM regressor on random data → onnxmltools ONNX.
"""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
import onnxmltools
import onnxruntime as ort
import pytest
from onnxmltools.convert.common.data_types import FloatTensorType

from pipelines.contracts.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    BundleError,
    FeatureSetSpec,
    Manifest,
    OutputSpec,
    TensorSpec,
    read_bundle,
)
from pipelines.training.walk_forward import NewestWindow, TrainResult
from registry.bundles import download_bundle
from registry.client import RegistryError, make_client, model_name
from registry.runs import log_training

N_FEATURES = 4
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def make_result(
    seed: int = 0, *, symbol: str = "FILUSDT", synthetic: bool = True
) -> tuple[TrainResult, lgb.LGBMRegressor, np.ndarray]:
    """A tiny TrainResult (one horizon) plus its native model and feature rows to predict on."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, N_FEATURES)).astype(np.float32)  # (rows, features)
    y = 0.1 * X[:, 0] + 0.01 * rng.normal(size=300)  # log returns, h=1
    params = dict(
        n_estimators=8,
        num_leaves=7,
        min_child_samples=10,
        learning_rate=0.2,
        num_threads=1,
        seed=seed,
        verbose=-1,
    )
    model = lgb.LGBMRegressor(**params).fit(X, y)
    initial = [("features", FloatTensorType([None, N_FEATURES]))]
    onx = onnxmltools.convert_lightgbm(model, initial_types=initial, target_opset=15)
    out_name = onx.graph.output[0].name
    data_window = {
        "start": "2023-08-01T00:00:00+00:00",
        "end": f"2023-08-0{2 + seed}T00:00:00+00:00",
        "rows": 300,
        "data_hash": f"hash{seed}",
    }
    manifest = Manifest(
        task="returns",
        model_name=model_name(symbol, "1m"),
        model_type="lightgbm",
        symbol=symbol,
        interval="1m",
        feature_set=FeatureSetSpec(name="test4", version=1, names=FEATURES, warmup=0),
        input=TensorSpec(name="features", shape=[None, N_FEATURES]),
        outputs=[OutputSpec(name=out_name, shape=[None, 1], horizons=[1], meaning="log return")],
        training=data_window,
        metrics={"model.h1.accuracy": 0.55},
        code_version="test",
        created_at="2023-08-02T00:00:00+00:00",
        synthetic=synthetic,
    )
    newest_pred = model.predict(X[-100:]).reshape(-1, 1)
    from pipelines.tasks import get_task

    newest_actual = y[-100:].reshape(-1, 1)
    acc = get_task("returns", (1,)).score(newest_pred, newest_actual, "accuracy", 1, interval="1m", cfg=None)
    n_dir = int(get_task("returns", (1,)).score(newest_pred, newest_actual, "n", 1, interval="1m", cfg=None))
    result = TrainResult(
        task="returns",
        newest_metric="accuracy",
        newest_scores={1: (acc, n_dir)},
        model_type="lightgbm",
        symbol=symbol,
        interval="1m",
        feature_names=FEATURES,
        horizons=[1],
        params=params,
        fold_metrics=[{"model.h1.accuracy": 0.5 + 0.01 * i, "reversal.h1.accuracy": 0.52} for i in range(3)],
        summary_metrics={"model.h1.accuracy": 0.51, "reversal.h1.accuracy": 0.52},
        report={"model": {"h1": {"accuracy": 0.51}}},
        newest_window=NewestWindow(
            open_times=np.arange(100, dtype=np.int64) * 60_000,
            predictions=newest_pred,
            actuals=y[-100:].reshape(-1, 1),
        ),
        data_window=data_window,
        onnx_bytes=onx.SerializeToString(),
        manifest=manifest,
        parity_max_abs=1e-7,
        gates={"parity": True},
    )
    return result, model, X


@pytest.fixture(scope="module")
def trained():
    return make_result(0)


def _onnx_predict(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # 2 shared cores
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"features": X})[0]


def test_model_name_and_bad_symbol():
    assert model_name("FILUSDT", "1m") == "returns-FILUSDT-1m"
    assert model_name("BTCUSDT", "1h", task="direction") == "direction-BTCUSDT-1h"
    with pytest.raises(RegistryError, match="characters"):
        model_name("FIL/USDT", "1m")


def test_log_training_run_version_and_artifacts(client, trained, tmp_path, capfd):
    result, _, _ = trained
    reg = log_training(client, result, tags={"trigger": "test"})
    assert (reg.name, reg.version) == ("returns-FILUSDT-1m", "1")
    assert capfd.readouterr().out == ""  # MLflow kept quiet on stdout

    run = client.get_run(reg.run_id)
    artifacts_root = (tmp_path / "home" / "mlartifacts").resolve()
    assert run.info.artifact_uri.startswith(artifacts_root.as_uri())  # not ./mlruns
    assert run.data.tags["synthetic"] == "true" and run.data.tags["trigger"] == "test"
    assert run.data.tags["gate.parity"] == "passed"
    p = run.data.params
    assert p["num_leaves"] == "7" and p["data.data_hash"] == "hash0"
    assert json.loads(p["feature_names"]) == FEATURES
    assert run.data.metrics["model.h1.accuracy"] == pytest.approx(0.51)
    assert run.data.metrics["parity_max_abs"] == pytest.approx(1e-7)
    fold = client.get_metric_history(reg.run_id, "fold.model.h1.accuracy")
    assert sorted((m.step, round(m.value, 6)) for m in fold) == [(0, 0.5), (1, 0.51), (2, 0.52)]
    acc, n = run.data.metrics["newest.h1.accuracy"], run.data.metrics["newest.h1.rows"]
    assert 0.5 < acc <= 1.0 and n == 100  # the fitted model on its own rows: well above chance

    top = {a.path for a in client.list_artifacts(reg.run_id)}
    assert top == {"bundle", "newest_window.npz", "report.json", "feature_names.json"}
    bundle = {a.path for a in client.list_artifacts(reg.run_id, "bundle")}
    assert bundle == {"bundle/model.onnx", "bundle/manifest.json"}

    mv = client.get_model_version(reg.name, reg.version)
    assert mv.run_id == reg.run_id and mv.source.endswith("/bundle")
    assert mv.tags["synthetic"] == "true" and mv.tags["data_hash"] == "hash0"
    assert mv.tags["model_type"] == "lightgbm" and mv.tags["data_end"].startswith("2023-08-02")
    assert float(mv.tags["newest_window.h1.accuracy"]) == pytest.approx(acc, abs=1e-6)

    reg2 = log_training(client, result)
    assert reg2.version == "2" and reg2.run_id != reg.run_id


def test_downloaded_bundle_alone_predicts_like_the_trained_model(client, trained, tmp_path):
    result, model, X = trained
    reg = log_training(client, result)
    client.set_registered_model_alias(reg.name, "champion", reg.version)
    targets = [
        ({"version": reg.version}, tmp_path / "by_version"),
        ({"alias": "champion"}, tmp_path / "by_alias"),
    ]
    for kw, dst in targets:
        out = download_bundle(client, reg.name, dst=dst, **kw)
        assert out == dst and sorted(p.name for p in dst.iterdir()) == sorted([MODEL_FILE, MANIFEST_FILE])
        onnx_bytes, manifest = read_bundle(dst)
        assert manifest == result.manifest
        got = _onnx_predict(onnx_bytes, X)[:, 0]
        want = _onnx_predict(result.onnx_bytes, X)[:, 0]
        assert np.max(np.abs(got - want)) <= 1e-5
        assert np.max(np.abs(got - model.predict(X))) <= 1e-5  # and matches native LightGBM


def test_download_bundle_errors(client, trained, tmp_path):
    result, _, _ = trained
    reg = log_training(client, result)
    with pytest.raises(RegistryError, match="not both"):
        download_bundle(client, reg.name, version="1", alias="champion", dst=tmp_path / "a")
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        download_bundle(client, reg.name, dst=tmp_path / "b")  # no alias set yet
    with pytest.raises(RegistryError, match="no version 9"):
        download_bundle(client, reg.name, version="9", dst=tmp_path / "c")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep me")
    with pytest.raises(RegistryError, match="not an empty directory"):
        download_bundle(client, reg.name, version="1", dst=busy)
    assert (busy / "x.txt").read_text() == "keep me"


def test_external_data_onnx_is_rejected(client, trained):
    result, _, _ = trained
    w = onnx.numpy_helper.from_array(np.ones((N_FEATURES, 1), dtype=np.float32), name="w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["features", "w"], ["returns"])],
        "linear",
        [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, N_FEATURES])],
        [onnx.helper.make_tensor_value_info("returns", onnx.TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = onnx.helper.make_model(graph)
    # Weights moved to a side file, as mlflow.onnx.log_model does by default.
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.data", size_threshold=0)
    bad = TrainResult(**{**result.__dict__, "onnx_bytes": model.SerializeToString()})
    with pytest.raises(BundleError, match="external weight"):
        log_training(client, bad)
    assert client.search_registered_models() == []  # nothing registered


def test_make_client_http_uri_leaves_artifacts_to_server(tmp_path):
    c = make_client("http://127.0.0.1:9", tmp_path / "unused")
    assert c.artifacts_dir is None and not (tmp_path / "unused").exists()
