"""Deep sequence models: windows, losses, configs, training loop, behaviour, ONNX export and parity.

Sized for 2 busy CPU cores: tiny presets, T=16 on synthetic data, 1-3 epochs, a few thousand
windows. Real-data parity uses FILUSDT core27 windows of the contract length T=60.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from pipelines.config import SequenceModelConfig, load_model_preset
from pipelines.contracts.errors import ConfigError, KairosError
from pipelines.contracts.settings import get_settings
from pipelines.models.sequence import SEQUENCE_ARCHITECTURES, make_sequence_model
from pipelines.models.sequence.base import warmup_cosine
from pipelines.models.sequence.losses import direction_loss, quantile_loss, sharpe_loss
from pipelines.models.sequence.onnx_io import accelerated_session, onnx_predict, parity_max_abs, session
from pipelines.training.windows import WindowError, align_to_windows, sliding_windows, window_dataset
from tests.conftest import FIL_FILES, fil_core27_windows

ARCHS = list(SEQUENCE_ARCHITECTURES)
T = 16  # synthetic windows: short, so CI trains in seconds
H = (1, 2)
TINY = {"sequence_length": T, "max_epochs": 3, "num_threads": 1, "batch_size": 128}
N_TRAIN, N_VAL = 2000, 500


# -- synthetic data ------------------------------------------------------------------------------
def synthetic(n: int, *, planted: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows X (n, 4) = [return r_t, signal s_t, noise, noise]; labels Y (n, 2) = r summed over 1, 2 steps.

    Planted: r_{t+1} = s_t - s_{t-5} + noise. The signal needs the window (a lag-5 difference) and has
    no lag-1 autocorrelation in r, so always-up / persistence / reversal all stay near 50 %.
    """
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(n)
    r = rng.standard_normal(n)
    if planted:
        r[6:] += s[5:-1] - s[:-6]
    X = np.column_stack([r, s, rng.standard_normal((n, 2))]).astype(np.float32) * np.float32(1e-3)
    c = np.concatenate([[0.0], np.cumsum(r.astype(np.float64) * 1e-3)])  # c[k] = sum r[:k]
    Y = np.full((n, len(H)), np.nan)
    for j, h in enumerate(H):
        Y[: n - h, j] = c[np.arange(n - h) + 1 + h] - c[np.arange(n - h) + 1]  # sum r[t+1 .. t+h]
    return X, Y


def split(planted: bool, seed: int):
    X, Y = synthetic(N_TRAIN + N_VAL + 1500 + 2 * T, planted=planted, seed=seed)
    W, Yw, _ = window_dataset(X, Y, T)
    a, b = N_TRAIN, N_TRAIN + N_VAL
    return (W[:a], Yw[:a]), (W[a + 2 : b], Yw[a + 2 : b]), (W[b + 2 :], Yw[b + 2 :])  # 2-window purge


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    nz = y != 0
    return float(np.mean(np.sign(pred[nz]) == np.sign(y[nz])))


def best_baseline(W: np.ndarray, y: np.ndarray) -> float:
    last_r = W[:, -1, 0].astype(np.float64)
    return max(accuracy(np.ones_like(y), y), accuracy(last_r, y), accuracy(-last_r, y))


_FITTED: dict[tuple[str, bool], tuple] = {}


def fitted(arch: str, planted: bool):
    """(model, train, val, test) for one architecture, fitted once per session.

    Noise gets fewer windows and epochs: there is nothing to find, only CI time to spend.
    """
    if (arch, planted) not in _FITTED:
        tr, va, te = split(planted, seed=1 if planted else 2)
        if not planted:
            tr = (tr[0][:1200], tr[1][:1200])
        model = make_sequence_model(
            arch, 4, H, preset="tiny", overrides={**TINY, "max_epochs": 3 if planted else 2}
        )
        model.fit(*tr, X_val=va[0], Y_val=va[1])
        _FITTED[arch, planted] = (model, tr, va, te)
    return _FITTED[arch, planted]


# -- windows -------------------------------------------------------------------------------------
def test_sliding_windows_spec():
    X = np.arange(30, dtype=np.float32).reshape(10, 3)
    W = sliding_windows(X, 4)
    assert W.shape == (7, 4, 3)
    np.testing.assert_array_equal(W[2], X[2:6])  # window k = X[k : k+T], ends at row k+T-1
    np.testing.assert_array_equal(align_to_windows(np.arange(10), 4), np.arange(3, 10))
    assert np.shares_memory(W, X)  # a view, not ~GBs of copies
    with pytest.raises(WindowError, match="fewer than one window"):
        sliding_windows(X, 11)
    with pytest.raises(WindowError, match=r"\(N, F\)"):
        sliding_windows(X[0], 2)


def test_window_dataset_drops_nan_windows_and_labels():
    X = np.random.default_rng(0).standard_normal((20, 2)).astype(np.float32)
    X[2, 1] = np.nan  # a warm-up NaN poisons windows containing row 2
    Y = np.arange(20, dtype=np.float64)[:, None]
    Y[-2:] = np.nan  # unknown future labels
    W, Yw, end = window_dataset(X, Y, 5)
    np.testing.assert_array_equal(end, np.arange(7, 18))  # windows ending at 7..17
    np.testing.assert_array_equal(Yw[:, 0], end.astype(float))  # label of the window's last row
    np.testing.assert_array_equal(W[0], X[3:8])
    assert np.isfinite(W).all()


# -- losses, schedule, config --------------------------------------------------------------------
def test_direction_loss_penalises_wrong_sign_more_than_same_error():
    y = torch.tensor([[0.2]])
    right, wrong = torch.tensor([[0.7]]), torch.tensor([[-0.3]])  # both |error| = 0.5
    assert float(torch.nn.functional.mse_loss(right, y)) == pytest.approx(
        float(torch.nn.functional.mse_loss(wrong, y))
    )
    assert float(direction_loss(wrong, y, weight=1.0)) > float(direction_loss(right, y, weight=1.0))


def test_sharpe_loss_prefers_aligned_positions():
    y = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    assert float(sharpe_loss(y, y)) < -1.0 < 0 < float(sharpe_loss(-y, y))


def test_quantile_loss_minimised_at_true_quantiles():
    y = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    true_q = torch.tensor([-1.2816, 0.0, 1.2816])
    at_truth = quantile_loss(true_q.expand(20000, 1, 3), y)
    for shift in (-0.3, 0.3):
        assert float(at_truth) < float(quantile_loss((true_q + shift).expand(20000, 1, 3), y))


def test_warmup_then_cosine_schedule():
    f = [warmup_cosine(s, 100, 10, 0.05) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then monotone decay
    assert f[-1] == pytest.approx(0.05, abs=0.01)


def test_presets_and_config_errors():
    configs = get_settings().configs_dir
    seed000 = load_model_preset(configs, "transformer", "seed000")
    assert (
        seed000.n_layers,
        seed000.n_heads,
        seed000.d_model,
        seed000.ff_mult,
        seed000.dropout,
        seed000.sequence_length,
    ) == (6, 8, 256, 4, 0.1, 60)
    for arch in ARCHS:
        small = load_model_preset(configs, arch)  # the file's default preset
        assert small.architecture == arch and small.sequence_length == 60
    assert load_model_preset(configs, "ensemble").sequence_weight == 0.5
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        load_model_preset(configs, "mamba", "huge")
    with pytest.raises(ConfigError, match="tft trains with loss 'quantile'"):
        load_model_preset(configs, "tft", overrides={"loss": "mse"})
    with pytest.raises(ValueError, match="divisible"):
        SequenceModelConfig(architecture="transformer", d_model=30, n_heads=4)


def test_protocol_surface_and_input_errors():
    model = make_sequence_model("mamba", 4, H, preset="tiny", overrides=TINY)
    assert (model.model_type, model.input_kind, model.sequence_length, model.parity_tolerance) == (
        "mamba",
        "sequence",
        T,
        1e-4,
    )
    assert all(isinstance(v, (int, float, str, bool)) for v in model.get_params().values())
    with pytest.raises(KairosError, match="not fitted"):
        model.predict(np.zeros((2, T, 4), np.float32))
    with pytest.raises(KairosError, match=r"expected windows of shape \(N, 16, 4\)"):
        model.fit(np.zeros((500, T, 3), np.float32), np.zeros((500, 2)))
    bad = np.zeros((500, T, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(KairosError, match="non-finite"):
        model.fit(bad, np.zeros((500, 2)))


# -- behaviour -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_planted_signal_beats_naive_baselines(arch):
    model, _, _, (W, Y) = fitted(arch, planted=True)
    pred = model.predict(W)
    assert pred.shape == Y.shape and pred.dtype == np.float64
    acc, base = accuracy(pred[:, 0], Y[:, 0]), best_baseline(W, Y[:, 0])
    assert base < 0.55  # the naive rules see nothing here
    assert acc > base + 0.08 and acc > 0.62, f"{arch}: accuracy {acc:.3f} vs best baseline {base:.3f}"


@pytest.mark.parametrize("arch", ARCHS)
def test_pure_noise_is_not_predictable(arch):
    model, _, _, (W, Y) = fitted(arch, planted=False)
    acc, base = accuracy(model.predict(W)[:, 0], Y[:, 0]), best_baseline(W, Y[:, 0])
    assert 0.44 < acc < 0.56 and acc < base + 0.04, (
        f"{arch}: accuracy {acc:.3f} on noise (baseline {base:.3f})"
    )


def test_training_fold_normalisation_and_best_epoch_restored():
    model, (Wtr, _), (Wva, Yva), _ = fitted("transformer", planted=True)
    net = model.net_
    np.testing.assert_allclose(
        net.x_mean.numpy(), Wtr[:, -1, :].mean(0), rtol=1e-4, atol=1e-9
    )  # train fold only
    assert model.val_history_[model.best_epoch_] == min(model.val_history_)
    scaled = (model.predict(Wva) / net.y_scale.numpy() - Yva / net.y_scale.numpy()) ** 2
    assert float(scaled.mean()) == pytest.approx(min(model.val_history_), rel=1e-4)  # best weights, not last


def test_same_seed_same_predictions_other_seed_differs():
    tr, va, te = split(True, seed=3)
    small = {**TINY, "max_epochs": 1}
    preds = []
    for seed in (7, 7, 8):
        m = make_sequence_model("lstm_attention", 4, H, preset="tiny", overrides={**small, "seed": seed})
        preds.append(m.fit(tr[0][:800], tr[1][:800], X_val=va[0], Y_val=va[1]).predict(te[0]))
    np.testing.assert_array_equal(preds[0], preds[1])
    assert np.abs(preds[0] - preds[2]).max() > 1e-6


def test_swa_and_loss_options_train():
    tr, va, te = split(True, seed=4)
    for loss in ("huber", "direction", "sharpe"):
        m = make_sequence_model(
            "lstm_attention",
            4,
            H,
            preset="tiny",
            overrides={**TINY, "max_epochs": 2, "loss": loss, "swa": True, "swa_start_frac": 0.0},
        )
        m.fit(tr[0][:1000], tr[1][:1000], X_val=va[0], Y_val=va[1])
        assert isinstance(m.used_swa_, bool) and np.isfinite(m.predict(te[0])).all()
        assert accuracy(m.predict(te[0])[:, 0], te[1][:, 0]) > 0.55, loss


@pytest.mark.parametrize("arch", ARCHS)
def test_synthetic_export_outputs_and_confidence(arch):
    model, _, _, (W, _) = fitted(arch, planted=True)
    onnx_bytes = model.to_onnx()
    diff = parity_max_abs(model, onnx_bytes, W)
    assert diff["returns"] <= 1e-4 and diff["confidence"] <= 1e-3
    ret, conf = model.predict_with_confidence(W)
    assert ((conf >= 0) & (conf <= 1)).all() and conf.std() > 0.01
    # Larger predicted moves should come with higher confidence (sign certainty), on average.
    big = np.abs(ret[:, 0]) > np.median(np.abs(ret[:, 0]))
    assert conf[big, 0].mean() > conf[~big, 0].mean()


# -- real data: ONNX parity on FILUSDT core27 windows ---------------------------------------------
@pytest.fixture(scope="module")
def fil_windows(shared_data):
    W, Yw = fil_core27_windows(FIL_FILES[0], 4500)
    assert len(W) > 3000 and W.shape[1:] == (60, 27)
    return W, Yw


@pytest.mark.parametrize("arch", ARCHS)
def test_real_data_onnx_parity(arch, fil_windows):
    W, Y = fil_windows
    model = make_sequence_model(arch, 27, range(1, 6), preset="tiny", overrides={"max_epochs": 1})
    model.fit(W[:2000], Y[:2000], X_val=W[2010:2500], Y_val=Y[2010:2500])
    onnx_bytes = model.to_onnx()
    m = onnx.load_from_string(onnx_bytes)
    assert [i.name for i in m.graph.input] == ["features"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [60, 27]
    assert [o.name for o in m.graph.output] == ["returns", "confidence"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    readers = [n for n in m.graph.node if "features" in n.input]
    first = readers[0]  # normalisation is the only reader of the input, with the train-fold mean as constant
    assert len(readers) == 1 and first.op_type == "Sub" and first.input[0] == "features"
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    consts.update(
        {
            n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
            for n in m.graph.node
            if n.op_type == "Constant" and n.attribute[0].name == "value"
        }
    )
    np.testing.assert_allclose(
        consts[first.input[1]], W[:2000, -1, :].astype(np.float64).mean(0), rtol=1e-4, atol=1e-7
    )
    test = W[2500:]
    diff = parity_max_abs(model, onnx_bytes, test)
    assert diff["returns"] <= model.parity_tolerance, diff
    sess = session(onnx_bytes)
    for n in (1, 7):  # dynamic batch
        out = onnx_predict(sess, test[:n])
        assert out["returns"].shape == (n, 5) and out["confidence"].shape == (n, 5)


def test_accelerated_session_falls_back_to_cpu(fil_windows):
    """On a GPU host this runs CUDA/TensorRT with FP16; on CPU it must fall back and agree exactly."""
    W, Y = fil_windows
    model = make_sequence_model("transformer", 27, range(1, 6), preset="tiny", overrides={"max_epochs": 1})
    model.fit(W[:1000], Y[:1000], X_val=W[1010:1300], Y_val=Y[1010:1300])
    onnx_bytes = model.to_onnx()
    sess = accelerated_session(onnx_bytes, fp16=True)
    if "CUDAExecutionProvider" not in sess.get_providers():
        assert sess.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_array_equal(
            onnx_predict(sess, W[1300:1400])["returns"], onnx_predict(onnx_bytes, W[1300:1400])["returns"]
        )
    else:  # FP16: looser agreement with the float32 model
        got = onnx_predict(sess, W[1300:1400])["returns"]
        np.testing.assert_allclose(got, model.predict(W[1300:1400]), atol=5e-4)


# -- walk-forward + registry through pipelines.training.walk_forward (kairos train --model ...) -----------------
WF = {
    "walk_forward": {
        "train_size": 2000,
        "test_size": 500,
        "step": 500,
        "purge": 5,
        "max_folds": 1,
        "window": 2600,
    },
    "lightgbm": {"n_estimators": 30, "num_threads": 2},
    "export": {"parity_rows": 500},
}


@pytest.fixture(scope="module")
def registry_client(tmp_path_factory):
    from registry.client import make_client

    d = tmp_path_factory.mktemp("seq_registry")
    return make_client(f"sqlite:///{d / 'mlflow.db'}", d / "mlartifacts")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", [*ARCHS, "ensemble"])
def test_walk_forward_train_and_register_on_fil(
    model_type, monkeypatch, shared_data, registry_client, tmp_path
):
    from pipelines.config import TrainingConfig
    from pipelines.sources.binance_files import read_klines
    from pipelines.training.walk_forward import train_walk_forward
    from registry.bundles import download_bundle
    from registry.runs import log_training

    # The tiny preset (CI); `kairos train --model X` uses the same factory with the default preset.
    one_epoch = {"sequence_overrides": {"max_epochs": 1}} if model_type == "ensemble" else {"max_epochs": 1}
    candles = read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:3300].reset_index(drop=True)
    res = train_walk_forward(
        candles,
        symbol="FILUSDT",
        interval="1m",
        cfg=TrainingConfig.model_validate(WF),
        model_type=model_type,
        preset="tiny",
        model_overrides=one_epoch,
    )
    assert res.gates == {"parity": True} and res.parity_max_abs <= 1e-4
    assert res.manifest.input.shape == [None, 60, 27] and res.manifest.model_type == model_type
    assert [o.name for o in res.manifest.outputs] == ["returns", "confidence"]
    for who in ("model", "always_up", "persistence", "reversal"):  # same metrics, same rows as LightGBM
        assert res.summary_metrics[f"{who}.h1.n"] + res.summary_metrics[f"{who}.h1.n_flat"] == 500
    assert 0.35 < res.summary_metrics["model.h1.accuracy"] < 0.65
    reg = log_training(registry_client, res)
    bundle = download_bundle(registry_client, reg.name, version=reg.version, dst=tmp_path / "bundle")
    from pipelines.contracts.bundle import read_bundle

    onnx_bytes, manifest = read_bundle(bundle)
    assert manifest.sequence_length == 60 and onnx_bytes == res.onnx_bytes
    if model_type == "ensemble":  # each member and the blend side by side, on the last 300 labelled windows
        from pipelines.config import EvaluationConfig
        from pipelines.features import feature_matrix
        from pipelines.models.sequence.ensemble import evaluate_members
        from pipelines.tasks import get_task

        W = sliding_windows(feature_matrix(candles, "core27"), 60)[
            -305:-5
        ]  # windows ending at rows N-305..N-6
        logc = np.log(candles["close"].to_numpy(np.float64))
        Y = np.column_stack([logc[-305 + h : len(logc) - 5 + h] - logc[-305:-5] for h in range(1, 6)])
        last_r = logc[-305:-5] - logc[-306:-6]
        task = get_task("returns", (1, 2, 3, 4, 5))
        base = task.baseline_forecasts(None, last_r[:, None])
        side = evaluate_members(res.model, W, Y, base, task, interval="1m", cfg=EvaluationConfig())
        assert set(side) == {"sequence", "tabular", "ensemble"}
        # the walk-forward report itself carries each member beside the blend, on the blend's rows
        for member in ("member_sequence", "member_tabular"):
            assert res.report[member]["h1"]["n"] == res.report["model"]["h1"]["n"]
        assert all(side[w]["model.h1.n"] + side[w]["model.h1.n_flat"] == 300 for w in side)
