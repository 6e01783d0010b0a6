"""Ensemble: sequence model + LightGBM blended in ONE ONNX graph over [N, T, F] windows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from pipelines.config import LightGBMConfig, TrainingConfig, load_model_preset
from pipelines.contracts.errors import KairosError
from pipelines.contracts.settings import get_settings
from pipelines.models.lightgbm import LightGBMReturns
from pipelines.models.sequence import SequenceRegressor, make_sequence_model
from pipelines.models.sequence.ensemble import EnsembleRegressor
from pipelines.models.sequence.onnx_io import onnx_predict, parity_max_abs
from tests.conftest import FIL_FILES, fil_core27_windows
from tests.unit.test_sequence_models import TINY, H, accuracy, best_baseline, split

LGBM = LightGBMConfig(n_estimators=40, num_leaves=15, min_child_samples=50, num_threads=1)


def make_ensemble(weights: tuple[float, float] = (0.5, 0.5), n_features: int = 4, T: int = 16, horizons=H):
    cfg = load_model_preset(
        get_settings().configs_dir, "lstm_attention", "tiny", {**TINY, "sequence_length": T, "opset": 15}
    )
    return EnsembleRegressor(
        SequenceRegressor(cfg, n_features, horizons),
        LightGBMReturns(LGBM, horizons),
        sequence_weight=weights[0],
        tabular_weight=weights[1],
    )


@pytest.fixture(scope="module")
def planted_ensemble():
    tr, va, te = split(True, seed=11)
    ens = make_ensemble((0.7, 0.3)).fit(*tr, X_val=va[0], Y_val=va[1])
    return ens, te


def test_blend_is_weighted_members_and_agreement_confidence(planted_ensemble):
    ens, (W, Y) = planted_ensemble
    m = ens.predict_members(W)
    assert ens.weights == pytest.approx((0.7, 0.3))
    np.testing.assert_allclose(m["ensemble"], 0.7 * m["sequence"] + 0.3 * m["tabular"])
    np.testing.assert_allclose(
        m["tabular"], ens.tabular.predict(np.ascontiguousarray(W[:, -1, :]))
    )  # last row
    ret, conf = ens.predict_with_confidence(W)
    agree = np.sign(m["sequence"]) == np.sign(m["tabular"])
    np.testing.assert_allclose(conf[agree], 1.0, atol=1e-9)
    assert (conf[~agree] < 1).all() and (conf >= 0).all()


def test_planted_signal_blend_beats_baselines_and_members_side_by_side(planted_ensemble):
    """r_{t+1} = s_t - s_{t-5} + noise: the tree sees s_t in the last row, the window also sees s_{t-5}."""
    ens, (W, Y) = planted_ensemble
    acc = {k: accuracy(v[:, 0], Y[:, 0]) for k, v in ens.predict_members(W).items()}
    base = best_baseline(W, Y[:, 0])
    assert acc["ensemble"] > base + 0.08, (acc, base)
    assert acc["ensemble"] > min(acc["sequence"], acc["tabular"]) - 0.01, acc  # blending costs nothing here


def test_pure_noise_blend_is_not_predictable():
    tr, va, te = split(False, seed=12)
    ens = make_ensemble().fit(tr[0][:1500], tr[1][:1500], X_val=va[0], Y_val=va[1])
    acc, base = accuracy(ens.predict(te[0])[:, 0], te[1][:, 0]), best_baseline(te[0], te[1][:, 0])
    assert 0.44 < acc < 0.56 and acc < base + 0.04, (acc, base)


def test_one_onnx_graph_with_parity(planted_ensemble):
    ens, (W, _) = planted_ensemble
    onnx_bytes = ens.to_onnx()
    model = onnx.load_from_string(onnx_bytes)
    assert [i.name for i in model.graph.input] == ["features"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [16, 4]
    assert [o.name for o in model.graph.output] == ["returns", "confidence"]
    ops = {n.op_type for n in model.graph.node}
    assert {"TreeEnsembleRegressor", "Gather", "LSTM"} <= ops  # both members inside one graph
    diff = parity_max_abs(ens, onnx_bytes, W)
    assert diff["returns"] <= ens.parity_tolerance and diff["confidence"] <= 1e-3, diff
    assert onnx_predict(onnx_bytes, W[:1])["returns"].shape == (1, len(H))


def test_config_factory_is_mamba_and_lightgbm_half_half():
    ens = make_sequence_model("ensemble", 27, range(1, 6), training=TrainingConfig())
    assert isinstance(ens, EnsembleRegressor)
    assert ens.sequence.model_type == "mamba" and ens.tabular.model_type == "lightgbm"
    assert ens.weights == (0.5, 0.5) and ens.sequence_length == 60 and ens.input_kind == "sequence"
    params = ens.get_params()
    assert params["sequence.architecture"] == "mamba" and "tabular.num_leaves" in params
    with pytest.raises(KairosError, match="not fitted"):
        ens.predict(np.zeros((1, 60, 27), np.float32))


def test_real_data_ensemble_parity(shared_data):
    W, Yw = fil_core27_windows(FIL_FILES[1], 3500)
    ens = make_ensemble(n_features=27, T=60, horizons=range(1, 6))
    ens.sequence.config = ens.sequence.config.model_copy(update={"max_epochs": 1})
    ens.fit(W[:2000], Yw[:2000], X_val=W[2010:2500], Y_val=Yw[2010:2500])
    diff = parity_max_abs(ens, ens.to_onnx(), W[2500:])
    assert diff["returns"] <= 1e-4, diff
