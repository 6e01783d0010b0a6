"""Sequence classifiers (issue 13 item 3): a one-logit head on the zoo's networks, trained with its loop.

Sized for 2 busy CPU cores: tiny/small presets with T=20 on synthetic windows where positives (3 %)
carry a bump in one feature over their last 5 steps; a few epochs each. The `seed000` transformer
(~4.8M weights, T=60) is built, fitted 1 epoch on 256 windows and exported in a `slow` test.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx.external_data_helper import uses_external_data
from sklearn.metrics import roc_auc_score

from pipelines.config import load_model_preset
from pipelines.contracts.onnx import make_session, run_onnx
from pipelines.contracts.settings import get_settings
from pipelines.models.sequence import SEQUENCE_ARCHITECTURES
from pipelines.models.sequence.base import SequenceModelError
from pipelines.models.sequence.classifier import SequenceClassifier
from pipelines.models.sequence.losses import focal_loss, weighted_bce_loss

T, F = 20, 6
RATE = 0.03  # share of positive windows
BUMP_FEATURE = 2


def windows(n: int, seed: int, *, bump: float = 2.0, t: int = T, f: int = F) -> tuple[np.ndarray, np.ndarray]:
    """(W float32 (n, t, f), y (n,) 0/1): positives get +bump on one feature over their last 5 steps.

    Feature 0 sits on a large offset and scale (1000 ± 50): the in-graph normalisation must handle it.
    """
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, t, f)).astype(np.float32)
    y = (rng.random(n) < RATE).astype(np.int64)
    W[y == 1, -5:, BUMP_FEATURE] += bump
    W[:, :, 0] = W[:, :, 0] * 50 + 1000
    return W, y


TRAIN, VAL, TEST = windows(3000, 1), windows(600, 2), windows(2000, 3)
CASES = [  # (architecture, preset, overrides): epochs raised from the presets' 2 so the signal is learnt
    ("transformer", "tiny", {"max_epochs": 6}),
    ("transformer", "small", {"max_epochs": 5}),
    ("lstm_attention", "tiny", {"max_epochs": 6}),
    ("tft", "tiny", {"max_epochs": 6}),
    ("mamba", "tiny", {"max_epochs": 6}),
]
_FITTED: dict[tuple[str, str], SequenceClassifier] = {}


def fitted(arch: str, preset: str, overrides: dict) -> SequenceClassifier:
    """One classifier per (architecture, preset), fitted once per session on TRAIN with VAL for early stopping."""
    if (arch, preset) not in _FITTED:
        model = SequenceClassifier.from_preset(
            arch, F, preset, overrides={"sequence_length": T, **overrides}, num_threads=1
        )
        _FITTED[arch, preset] = model.fit(*TRAIN, W_val=VAL[0], y_val=VAL[1])
    return _FITTED[arch, preset]


def small_fit(**kwargs) -> SequenceClassifier:
    """A 2-epoch tiny transformer on 1,000 windows (for the option and reproducibility tests)."""
    model = SequenceClassifier.from_preset(
        "transformer", F, "tiny", overrides={"sequence_length": T, "max_epochs": 2}, **kwargs
    )
    return model.fit(TRAIN[0][:1000], TRAIN[1][:1000], W_val=VAL[0][:300], y_val=VAL[1][:300])


# -- learning, export, parity ----------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "preset", "overrides"), CASES, ids=[f"{a}-{p}" for a, p, _ in CASES])
def test_planted_signal_is_learnt_and_onnx_matches(arch, preset, overrides):
    model = fitted(arch, preset, overrides)
    W, y = TEST
    z = model.predict_logit(W)
    assert z.shape == (len(W),) and z.dtype == np.float64 and np.isfinite(z).all()
    assert roc_auc_score(y, z) > 0.8, f"{arch}/{preset}: ROC-AUC {roc_auc_score(y, z):.3f}"
    assert model.epochs_run_ <= overrides["max_epochs"] and 0 <= model.best_epoch_ < model.epochs_run_
    assert model.pos_weight_ == pytest.approx((len(TRAIN[1]) - TRAIN[1].sum()) / TRAIN[1].sum())

    onnx_bytes = model.to_onnx()
    graph = onnx.load_model_from_string(onnx_bytes)
    onnx.checker.check_model(graph, full_check=True)
    assert not [t for t in graph.graph.initializer if uses_external_data(t)]  # self-contained
    assert {o.domain: o.version for o in graph.opset_import}[""] == 15
    (inp,), (out,) = graph.graph.input, graph.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp), inp.type.tensor_type.elem_type) == ("features", ["N", T, F], 1)
    assert (out.name, dims(out), out.type.tensor_type.elem_type) == ("logit", ["N", 1], 1)
    z_onnx = run_onnx(onnx_bytes, W, output="logit")
    assert z_onnx.shape == (len(W), 1)
    assert np.max(np.abs(z_onnx[:, 0] - z)) <= model.parity_tolerance
    # single window, as serving runs it
    one = make_session(onnx_bytes).run(["logit"], {"features": W[-1:]})[0]
    assert abs(float(one[0, 0]) - z[-1]) <= model.parity_tolerance


def test_every_architecture_of_the_zoo_is_supported():
    assert {a for a, _, _ in CASES} == set(SEQUENCE_ARCHITECTURES)


def test_normalisation_from_training_windows_inside_the_graph():
    model = fitted(*CASES[0])
    last = TRAIN[0][:, -1, :].astype(np.float64)
    np.testing.assert_allclose(model.net_.x_mean.numpy(), last.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.net_.x_std.numpy(), last.std(0), rtol=1e-5)
    inits = {t.name for t in onnx.load_model_from_string(model.to_onnx()).graph.initializer}
    assert any("x_mean" in n for n in inits) and any("x_std" in n for n in inits)


def test_seed_reproducible_and_seed_sensitive():
    a, b, c = small_fit(seed=7), small_fit(seed=7), small_fit(seed=8)
    W = TEST[0][:300]
    np.testing.assert_array_equal(a.predict_logit(W), b.predict_logit(W))
    assert a.to_onnx() == b.to_onnx()
    assert not np.allclose(a.predict_logit(W), c.predict_logit(W))


def test_pos_weight_and_focal_variants():
    base = small_fit()
    n_pos = int(TRAIN[1][:1000].sum())
    assert base.pos_weight_ == pytest.approx((1000 - n_pos) / n_pos)
    assert float(base.net_.logit_offset) == pytest.approx(np.log(base.pos_weight_), rel=1e-6)
    assert base.get_params()["loss"] == "bce"

    unweighted = small_fit(pos_weight=1.0)
    assert unweighted.pos_weight_ == 1.0 and float(unweighted.net_.logit_offset) == 0.0
    focal = small_fit(focal_gamma=2.0)
    assert focal.get_params()["loss"] == "focal" and focal.get_params()["focal_gamma"] == 2.0
    for m in (unweighted, focal):
        z = m.predict_logit(TEST[0])
        assert np.isfinite(z).all() and not np.allclose(z, base.predict_logit(TEST[0]))
        assert np.max(np.abs(run_onnx(m.to_onnx(), TEST[0], output="logit")[:, 0] - z)) <= m.parity_tolerance
    # the prior correction: with pos_weight = n_neg/n_pos an uninformed logit sits near log(n_pos/n_neg)
    noise = np.random.default_rng(9).standard_normal((500, T, F)).astype(np.float32)
    noise[:, :, 0] = noise[:, :, 0] * 50 + 1000
    assert abs(np.median(base.predict_logit(noise)) - np.log(n_pos / (1000 - n_pos))) < 1.0


def test_losses():
    z = torch.tensor([[-3.0], [0.5], [4.0], [-1.0]])
    y = torch.tensor([[0.0], [1.0], [1.0], [1.0]])
    torch.testing.assert_close(focal_loss(z, y, 0.0, 3.0), weighted_bce_loss(z, y, 3.0))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    w = torch.where(y > 0, 3.0, 1.0)
    torch.testing.assert_close(weighted_bce_loss(z, y, 3.0), (w * bce).mean())
    # focal: confident right answers (rows 0, 2) are down-weighted far more than the wrong one (row 3)
    easy = focal_loss(z[[0, 2]], y[[0, 2]], 2.0) / weighted_bce_loss(z[[0, 2]], y[[0, 2]])
    hard = focal_loss(z[[3]], y[[3]], 2.0) / weighted_bce_loss(z[[3]], y[[3]])
    assert easy < 0.01 < 0.5 < hard
    assert torch.isfinite(focal_loss(torch.tensor([[80.0], [-80.0]]), torch.tensor([[0.0], [1.0]]), 2.0))


def test_holdout_when_no_validation_given():
    model = SequenceClassifier.from_preset(
        "lstm_attention", F, "tiny", overrides={"sequence_length": T, "max_epochs": 1}
    ).fit(*TRAIN)
    assert model.n_train_ == len(TRAIN[0]) - len(TRAIN[0]) // 10 - T and model.epochs_run_ == 1


# -- errors ---------------------------------------------------------------------------------------
def test_clear_errors():
    cfg = load_model_preset(get_settings().configs_dir, "transformer", "tiny", {"sequence_length": T})
    W, y = TRAIN[0][:500], TRAIN[1][:500]
    with pytest.raises(SequenceModelError, match="supported"):
        SequenceClassifier("gru", cfg, F)
    with pytest.raises(SequenceModelError, match="supported"):
        SequenceClassifier.from_preset("ensemble", F)
    with pytest.raises(SequenceModelError, match="transformer"):
        SequenceClassifier("mamba", cfg, F)
    with pytest.raises(SequenceModelError, match="pos_weight"):
        SequenceClassifier("transformer", cfg, F, pos_weight=0.0)
    with pytest.raises(SequenceModelError, match="focal_gamma"):
        SequenceClassifier("transformer", cfg, F, focal_gamma=-1.0)
    model = SequenceClassifier("transformer", cfg, F)
    with pytest.raises(SequenceModelError, match="not fitted"):
        model.predict_logit(W)
    with pytest.raises(SequenceModelError, match="not fitted"):
        model.to_onnx()
    for bad in (W[:, -1, :], W[:, 1:, :], W[:, :, 1:]):
        with pytest.raises(SequenceModelError, match=rf"\(N, {T}, {F}\)"):
            model.fit(bad, y)
    with pytest.raises(SequenceModelError, match="single class"):
        model.fit(W, np.zeros(len(W)))
    with pytest.raises(SequenceModelError, match="single class"):
        model.fit(W, np.ones(len(W)), W_val=W[:10], y_val=y[:10])
    with pytest.raises(SequenceModelError, match="0/1"):
        model.fit(W, np.where(y > 0, 2, 0))
    with pytest.raises(SequenceModelError, match="shape"):
        model.fit(W, y[:-1])
    with pytest.raises(SequenceModelError, match="both"):
        model.fit(W, y, W_val=W[:10])
    with pytest.raises(SequenceModelError, match="too few"):
        model.fit(W[:20], np.r_[1, np.zeros(19)])
    nan = W.copy()
    nan[3, 0, 1] = np.nan
    with pytest.raises(SequenceModelError, match="NaN"):
        model.fit(nan, y)
    with pytest.raises(SequenceModelError, match="NaN"):
        fitted(*CASES[0]).predict_logit(nan)
    with pytest.raises(SequenceModelError, match=r"\(N, 20, 6\)"):
        fitted(*CASES[0]).predict_logit(W[:, :, :3])


# -- the 000 seed's transformer -------------------------------------------------------------------
@pytest.mark.slow
def test_seed000_transformer_classifier_builds_trains_and_exports():
    W, y = windows(320, 5, t=60, f=13)
    y[:4] = 1
    model = SequenceClassifier.from_preset(
        "transformer", 13, "seed000", overrides={"max_epochs": 1}, num_threads=2
    ).fit(W[:256], y[:256], W_val=W[256:], y_val=y[256:])
    cfg = model.config
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.sequence_length) == (6, 8, 256, 60)
    assert 4.7e6 < model.n_weights < 4.9e6
    onnx_bytes = model.to_onnx()
    graph = onnx.load_model_from_string(onnx_bytes)
    assert not [t for t in graph.graph.initializer if uses_external_data(t)]
    assert [o.name for o in graph.graph.output] == ["logit"]
    z = model.predict_logit(W)
    assert np.max(np.abs(run_onnx(onnx_bytes, W, output="logit")[:, 0] - z)) <= model.parity_tolerance
