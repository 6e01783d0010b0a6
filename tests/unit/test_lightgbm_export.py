"""LightGBM returns model, its one-graph ONNX export, parity, the model factory and bundle scoring."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper, numpy_helper

from pipelines.config import LightGBMConfig, TrainingConfig
from pipelines.contracts.bundle import FeatureSetSpec, Manifest, OutputSpec, TensorSpec
from pipelines.contracts.errors import KairosError, ParityError
from pipelines.models import REGISTERED, ModelSpec, make_model
from pipelines.models.base import ModelError, ReturnsModel
from pipelines.models.lightgbm import LightGBMReturns
from validation.parity import check_parity, onnx_session, run_onnx

F, H = 27, [1, 2, 3, 4, 5]
CFG = LightGBMConfig(n_estimators=30, num_leaves=15, min_child_samples=20, num_threads=1)


def synthetic_xy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X float32 (n, 27); Y (n, 5) log-return-sized targets that depend on a few features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    X[:, 3] = np.round(X[:, 3], 1)  # repeated values: thresholds sit exactly between float32 values
    signal = 1e-3 * (X[:, [0]] - 0.5 * X[:, [1]] + 0.3 * X[:, [3]])
    Y = signal * np.arange(1, 6) + rng.normal(0, 5e-4, size=(n, 5))
    return X, Y


@pytest.fixture(scope="module")
def fitted() -> tuple[LightGBMReturns, np.ndarray, np.ndarray]:
    X, Y = synthetic_xy(4000)
    return LightGBMReturns(CFG, H).fit(X, Y), X, Y


@pytest.fixture(scope="module")
def onnx_bytes(fitted) -> bytes:
    return fitted[0].to_onnx()


def add_constant(onnx_bytes: bytes, value: float = 1e-3) -> bytes:
    """A deliberately broken export: `returns` + value."""
    m = onnx.load_model_from_string(onnx_bytes)
    g = m.graph
    for node in g.node:
        node.output[:] = ["returns_raw" if o == "returns" else o for o in node.output]
    g.initializer.append(numpy_helper.from_array(np.array([value], np.float32), "bias"))
    g.node.append(helper.make_node("Add", ["returns_raw", "bias"], ["returns"]))
    return m.SerializeToString()


def test_fit_predict_shapes_learns_and_is_deterministic(fitted):
    model, X, Y = fitted
    assert isinstance(model, ReturnsModel)
    Xt, Yt = synthetic_xy(1000, seed=1)
    pred = model.predict(Xt)
    assert pred.shape == (1000, 5) and pred.dtype == np.float64
    for j in range(5):  # the signal is learned for every horizon
        assert np.corrcoef(pred[:, j], Yt[:, j])[0, 1] > 0.5
    again = LightGBMReturns(CFG, H).fit(X, Y).predict(Xt)
    np.testing.assert_array_equal(pred, again)
    np.testing.assert_array_equal(model.predict(Xt[:3]), pred[:3])  # 1-thread small-batch path agrees
    params = model.get_params()
    assert params["n_estimators"] == 30 and params["horizons"] == "1,2,3,4,5"


def test_model_input_errors(fitted):
    model, X, Y = fitted
    with pytest.raises(ModelError, match="not fitted"):
        LightGBMReturns(CFG, H).predict(X)
    with pytest.raises(ModelError, match="26 features"):
        model.predict(X[:, :26])
    with pytest.raises(ModelError, match="expected \\(4000, 5\\)"):
        LightGBMReturns(CFG, H).fit(X, Y[:, :4])
    Ybad = Y.copy()
    Ybad[0, 0] = np.nan
    with pytest.raises(ModelError, match="non-finite"):
        LightGBMReturns(CFG, H).fit(X, Ybad)


def test_onnx_is_one_self_contained_graph(onnx_bytes):
    m = onnx.load_model_from_string(onnx_bytes)
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["features"]
    assert [o.name for o in m.graph.output] == ["returns"]
    dims = lambda vi: [d.dim_value or None for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(m.graph.input[0]) == [None, F]
    assert dims(m.graph.output[0]) == [None, 5]
    assert sum(n.op_type == "TreeEnsembleRegressor" for n in m.graph.node) == 5
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert {o.domain: o.version for o in m.opset_import}[""] <= 15


def test_parity_within_1e5_for_any_batch_size(fitted, onnx_bytes):
    model, X, _ = fitted
    Xt, _ = synthetic_xy(3000, seed=2)
    both = np.vstack([X[:2000], Xt])  # training rows (values at split thresholds) and fresh rows
    assert check_parity(onnx_bytes, model.predict, both, 1e-5) <= 1e-5
    one = run_onnx(onnx_bytes, Xt[:1])
    assert one.shape == (1, 5)
    np.testing.assert_allclose(one, model.predict(Xt[:1]), atol=1e-5)


def test_broken_export_raises_parity_error(fitted, onnx_bytes):
    model, X, _ = fitted
    broken = add_constant(onnx_bytes, 1e-3)
    with pytest.raises(ParityError, match=r"abs diff 0\.001 > tolerance 1e-05.*max abs diff 0\.001"):
        check_parity(broken, model.predict, X[:100], 1e-5)
    with pytest.raises(ParityError, match="0 rows"):
        check_parity(onnx_bytes, model.predict, X[:0], 1e-5)


def test_make_model_dispatch(monkeypatch):
    model = make_model("lightgbm", TrainingConfig(), F, H)
    assert isinstance(model, LightGBMReturns) and model.input_kind == "tabular"
    assert model.cfg == TrainingConfig().lightgbm  # no flags: the defaults.yaml block, nothing else
    assert model.booster_params()["objective"] == "regression"
    with pytest.raises(KairosError, match="unknown model 'xgboost'.*'lightgbm'"):
        make_model("xgboost", TrainingConfig(), F, H)
    tiny = ModelSpec(
        name="tiny_lgbm",
        factory=lambda cfg, nf, hs, **kw: LightGBMReturns(cfg, hs),
        config_class=LightGBMConfig,
        input_kind="tabular",
        base_config=lambda ctx: CFG.model_dump(),
    )
    monkeypatch.setitem(REGISTERED, "tiny_lgbm", tiny)
    built = make_model("tiny_lgbm", TrainingConfig(), F, [1], overrides={"num_leaves": 5})
    assert built.horizons == [1] and built.cfg == CFG.model_copy(update={"num_leaves": 5})


@pytest.mark.parametrize(
    "objective, params",
    [
        ("l2", {"objective": "regression"}),
        ("huber", {"objective": "huber"}),
        ("quantile", {"objective": "quantile", "alpha": 0.5}),
    ],
)
def test_task_objective_maps_to_lightgbm_and_exports_with_parity(objective, params):
    model = make_model("lightgbm", TrainingConfig(lightgbm=CFG), F, H, objective=objective)
    assert {k: model.booster_params()[k] for k in params} == params
    X, Y = synthetic_xy(1500)
    model.fit(X, Y)
    assert check_parity(model.to_onnx(), model.predict, X[:300], 1e-5) <= 1e-5
    with pytest.raises(KairosError, match="cannot train with objective 'pinball'.*'huber'"):
        make_model("lightgbm", TrainingConfig(), F, H, objective="pinball")


def test_validation_callbacks_see_every_horizon_and_leave_the_model_unchanged():
    """Callbacks (e.g. tuning's pruning) read the validation slice; the boosters are identical without them."""
    from pipelines.models.lightgbm import ValidationCallback

    X, Y = synthetic_xy(1500)
    seen: list[tuple[str, int]] = []

    def feval(preds, data):
        return "corr", float(np.corrcoef(preds, data.get_label())[0, 1]), True

    def record(env):
        seen.extend((name, env.iteration) for _, name, _, _ in env.evaluation_result_list)

    plain = LightGBMReturns(CFG, H).fit(X[:1200], Y[:1200])
    watched = LightGBMReturns(CFG, H).fit(
        X[:1200], Y[:1200], X_val=X[1300:], Y_val=Y[1300:], callbacks=[ValidationCallback(record, feval)]
    )
    assert len(seen) == CFG.n_estimators * len(H) and {n for n, _ in seen} == {"corr"}
    np.testing.assert_array_equal(plain.predict(X[1300:]), watched.predict(X[1300:]))


def _fake_features(monkeypatch, n_names: int = F, warmup: int = 3):
    """A stand-in `pipelines.features` whose features are simple functions of close (NaN in warm-up)."""
    names = [f"f{i}" for i in range(n_names)]

    def compute_features(candles: pd.DataFrame, name: str, params: object = None) -> pd.DataFrame:
        c = candles["close"].to_numpy(float)
        cols = {n: np.sin(c * (i + 1)) for i, n in enumerate(names)}
        df = pd.DataFrame(cols)
        df.iloc[:warmup] = np.nan
        return df

    mod = types.ModuleType("pipelines.features")
    mod.compute_features = compute_features
    monkeypatch.setitem(sys.modules, "pipelines.features", mod)
    return names, compute_features


def test_predict_bundle_tabular_skips_warmup(monkeypatch, fitted, onnx_bytes):
    from pipelines.training.predict import predict_bundle

    model = fitted[0]
    names, compute = _fake_features(monkeypatch)
    candles = pd.DataFrame(
        {
            "open_time": pd.date_range("2023-08-01", periods=50, freq="1min", tz="UTC"),
            "close": np.linspace(1.0, 2.0, 50),
        }
    )
    manifest = Manifest(
        task="returns",
        model_name="returns-X-1m",
        model_type="lightgbm",
        symbol="X",
        interval="1m",
        feature_set=FeatureSetSpec("fake", 1, names, 3),
        input=TensorSpec("features", [None, F]),
        outputs=[OutputSpec("returns", [None, 5], horizons=H)],
        training={},
        metrics={},
        code_version="x",
        created_at="now",
    )
    out = predict_bundle(onnx_bytes, manifest, candles)
    assert list(out.columns) == ["open_time", "h1", "h2", "h3", "h4", "h5"]
    assert len(out) == 47 and out["open_time"].iloc[0] == candles["open_time"].iloc[3]
    X = compute(candles, "fake").to_numpy(np.float32)[3:]
    np.testing.assert_allclose(out[["h1", "h2", "h3", "h4", "h5"]].to_numpy(), model.predict(X), atol=1e-5)


def test_predict_bundle_sequence_windows(monkeypatch):
    from pipelines.training.predict import predict_bundle

    T, nf = 4, 3
    names, compute = _fake_features(monkeypatch, n_names=nf, warmup=2)
    W = np.arange(nf * 5, dtype=np.float32).reshape(nf, 5) / 10
    graph = helper.make_graph(  # returns = mean over the window's T rows @ W
        [
            helper.make_node("ReduceMean", ["features"], ["m"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["m", "W"], ["returns"]),
        ],
        "seq",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, T, nf])],
        [helper.make_tensor_value_info("returns", onnx.TensorProto.FLOAT, [None, 5])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    seq_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    seq_model.ir_version = 8  # loadable by any current onnxruntime
    seq_bytes = seq_model.SerializeToString()
    candles = pd.DataFrame(
        {
            "open_time": pd.date_range("2023-08-01", periods=20, freq="1min", tz="UTC"),
            "close": np.linspace(1.0, 2.0, 20),
        }
    )
    manifest = Manifest(
        task="returns",
        model_name="returns-X-1m",
        model_type="lstm_attention",
        symbol="X",
        interval="1m",
        feature_set=FeatureSetSpec("fake", 1, names, 2),
        input=TensorSpec("features", [None, T, nf]),
        outputs=[OutputSpec("returns", [None, 5], horizons=H)],
        training={},
        metrics={},
        code_version="x",
        created_at="now",
    )
    out = predict_bundle(seq_bytes, manifest, candles)
    # first exact window covers rows 2..5, so predictions start at row 2 + T - 1 = 5
    assert len(out) == 20 - 5 and out["open_time"].iloc[0] == candles["open_time"].iloc[5]
    X = compute(candles, "fake").to_numpy(np.float32)
    want = np.stack([X[k - T + 1 : k + 1].mean(axis=0) for k in range(5, 20)]) @ W
    np.testing.assert_allclose(out[["h1", "h2", "h3", "h4", "h5"]].to_numpy(), want, rtol=1e-5)


def test_thresholds_between_adjacent_float32_values_keep_parity():
    """LightGBM splits at the double midpoint of two adjacent float32 values; nearest-float32
    rounding of that threshold would send the upper value down the wrong branch."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(3)
    a = np.nextafter(np.float32(1.0), np.float32(2.0))  # odd mantissa: the midpoint rounds up to b
    b = np.nextafter(a, np.float32(2.0))
    X = rng.normal(size=(2000, F)).astype(np.float32)
    X[:, 0] = np.where(rng.random(2000) < 0.5, a, b)
    Y = np.where(X[:, [0]] == b, 1e-3, -1e-3) * np.ones((1, 5)) + rng.normal(0, 1e-5, (2000, 5))
    model = LightGBMReturns(CFG, H).fit(X, Y)
    native = model.predict(X)
    assert np.abs(native[X[:, 0] == b, 0] - native[X[:, 0] == a, 0].mean()).min() > 1e-3  # split learned
    raw = onnxmltools.convert_lightgbm(
        model.boosters_[0], initial_types=[("features", FloatTensorType([None, F]))], target_opset=15
    )
    sess = onnx_session(raw.SerializeToString())  # onnxmltools as is: nearest-float32 thresholds
    raw_out = sess.run(None, {"features": X})[0]
    assert np.abs(raw_out[:, 0] - native[:, 0]).max() > 1e-4  # the hazard is real in this data
    assert check_parity(model.to_onnx(), model.predict, X, 1e-5) <= 1e-5


def test_direction_objective_exports_the_log_odds_and_ignores_flat_rows():
    """A sign classifier: flat labels carry no weight, and the graph computes the booster's margin."""
    import numpy as np

    from pipelines.config import LightGBMConfig
    from pipelines.models.lightgbm import LightGBMReturns
    from pipelines.training.parity import check_parity

    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 5)).astype(np.float32)
    y = 1e-3 * (X[:, 0] + 0.5 * rng.normal(size=4000))
    flat = rng.random(4000) < 0.3
    y[flat] = 0.0
    X[flat, 1] = 5.0  # flat rows sit apart: if they counted (as "not up") the trees would learn X1=5 -> down
    cfg = LightGBMConfig(n_estimators=40, num_threads=1, min_child_samples=20)
    m = LightGBMReturns(cfg, [1], objective="direction").fit(X, y[:, None])
    margin = m.predict(X)[:, 0]
    assert ((margin > 0) == (y > 0))[~flat].mean() > 0.75
    assert check_parity(m.to_onnx(), m.predict, X, 1e-5, rtol=1e-6) < 1e-5
    probe = np.zeros((1, 5), np.float32)
    probe[0, 0], probe[0, 1] = 1.5, 5.0  # clearly "up" by X0, in the flat rows' region of X1
    assert m.predict(probe)[0, 0] > 0


def test_huber_delta_follows_the_label_scale():
    """Huber at LightGBM's default delta (0.9) on 1e-3-sized returns is exactly l2; scaled, it is not."""
    import numpy as np

    from pipelines.config import LightGBMConfig
    from pipelines.models.lightgbm import LightGBMReturns, huber_delta

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4)).astype(np.float32)
    y = 1e-3 * (0.3 * X[:, 0] + rng.standard_t(2, size=3000))  # fat tails
    assert huber_delta(np.r_[y, np.zeros(50)]) == np.median(np.abs(y))
    cfg = LightGBMConfig(n_estimators=30, num_threads=1, min_child_samples=20)
    l2 = LightGBMReturns(cfg, [1]).fit(X, y[:, None]).predict(X)
    hub = LightGBMReturns(cfg, [1], objective="huber").fit(X, y[:, None]).predict(X)
    assert np.abs(hub - l2).max() > 1e-5
