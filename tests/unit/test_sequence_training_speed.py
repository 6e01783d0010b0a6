"""Training at practical speed (issue 17): OpenMP threads that spin only briefly, bf16 autocast on the
CPU, early stopping that stops, and `export.variant` gated on walk-forward accuracy.

Tiny presets, 1 epoch, synthetic windows (T = 16) or 3,300 real FILUSDT candles (one fold): the tests
check decisions and numbers, never timings (those are in benchmarks/bench_train_throughput.py and
benchmarks/report_deep_presets.py).
"""

from __future__ import annotations

import importlib
import logging
import os

import numpy as np
import pytest

import pipelines.models.sequence as sequence_pkg
from pipelines.models.sequence import base as seq_base
from pipelines.models.sequence import make_sequence_model
from pipelines.models.sequence.base import amp_precision, cpu_bf16_supported
from pipelines.training.windows import window_dataset

T, F, H = 16, 4, (1, 2)


def _windows(n: int, seed: int = 0, planted: bool = True):
    """Rows [r, s, noise, noise] with r_{t+1} = s_t - s_{t-5} + noise; labels r summed over 1, 2 steps."""
    rng = np.random.default_rng(seed)
    m = n + T + 3
    s, r = rng.standard_normal(m), rng.standard_normal(m)
    if planted:
        r[6:] += s[5:-1] - s[:-6]
    X = (np.column_stack([r, s, rng.standard_normal((m, 2))]) * 1e-3).astype(np.float32)
    c = np.concatenate([[0.0], np.cumsum(X[:, 0].astype(np.float64))])
    Y = np.full((m, len(H)), np.nan)
    for j, h in enumerate(H):
        Y[: m - h, j] = c[np.arange(m - h) + 1 + h] - c[np.arange(m - h) + 1]
    W, Yw, _ = window_dataset(X, Y, T)
    return W[:n], Yw[:n]


def _model(arch: str = "lstm_attention", **overrides):
    over = {"sequence_length": T, "max_epochs": 1, "num_threads": 1, "batch_size": 128, **overrides}
    return make_sequence_model(arch, F, H, preset="tiny", overrides=over)


# -- OpenMP wait policy ---------------------------------------------------------------------------
def test_the_sequence_package_makes_idle_openmp_threads_spin_briefly_unless_told_otherwise(monkeypatch):
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    importlib.reload(sequence_pkg)
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")  # an explicit setting wins ...
    importlib.reload(sequence_pkg)
    assert os.environ["GOMP_SPINCOUNT"] == "5"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # ... and so does an explicit wait policy
    importlib.reload(sequence_pkg)
    assert "GOMP_SPINCOUNT" not in os.environ


# -- bf16 autocast on the CPU ---------------------------------------------------------------------
def test_cpu_bf16_precision_only_where_the_cpu_has_native_bf16(monkeypatch, caplog):
    assert amp_precision("cpu", True) == "32-true"  # the default stays float32
    monkeypatch.setattr(seq_base, "cpu_bf16_supported", lambda: True)
    assert amp_precision("cpu", True, cpu_bf16=True) == "bf16-mixed"
    assert amp_precision("cpu", False, cpu_bf16=True) == "bf16-mixed"  # mixed_precision is CUDA's switch
    monkeypatch.setattr(seq_base, "cpu_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="kairos.models.sequence"):
        assert amp_precision("cpu", True, cpu_bf16=True) == "32-true"
    assert "no native bfloat16; training in float32" in caplog.text


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bfloat16")
def test_a_bf16_fit_keeps_float32_weights_learns_and_exports_with_parity():
    from pipelines.models.sequence.onnx_io import onnx_predict

    W, Y = _windows(1700)
    fp32, bf16 = _model(max_epochs=3), _model(max_epochs=3, cpu_bf16=True)
    for m in (fp32, bf16):
        m.fit(W[:1200], Y[:1200], X_val=W[1205:1400], Y_val=Y[1205:1400])
    assert {p.dtype for p in bf16.net_.parameters()} == {fp32.net_.parameters().__next__().dtype}
    p32, p16 = fp32.predict(W[1405:]), bf16.predict(W[1405:])
    assert not np.array_equal(p32, p16)  # bf16 really trained differently ...
    y = Y[1405:]
    acc = [float(np.mean(np.sign(p[:, 0]) == np.sign(y[:, 0]))) for p in (p32, p16)]
    assert acc[1] > 0.6 and abs(acc[0] - acc[1]) < 0.05, acc  # ... and learnt the planted signal as well
    got = onnx_predict(bf16.to_onnx(), W[1405:])["returns"]
    np.testing.assert_allclose(got, p16, atol=1e-4 * np.abs(p16).max())


# -- early stopping that stops ---------------------------------------------------------------------
def test_min_delta_stops_fits_whose_validation_loss_only_creeps_down():
    W, Y = _windows(1400, planted=False)
    runs = {}
    for min_delta in (0.0, 0.5):
        m = _model(max_epochs=6, patience=1, min_delta=min_delta)
        m.fit(W[:1000], Y[:1000], X_val=W[1005:], Y_val=Y[1005:])
        runs[min_delta] = m
    # an improvement smaller than 0.5 (in RMS-scaled loss units) never counts: patience 1 → 2 epochs
    assert runs[0.5].epochs_run_ == 2
    assert runs[0.0].epochs_run_ >= runs[0.5].epochs_run_
    # the best-validation weights are still the ones kept
    assert runs[0.5].best_epoch_ == int(np.argmin(runs[0.5].val_history_))


# -- export.variant, gated on walk-forward accuracy -----------------------------------------------
def _walk_forward(variant: str, max_drop_pp: float | None):
    from pipelines.config import TrainingConfig
    from pipelines.sources.binance_files import read_klines
    from pipelines.training.walk_forward import train_walk_forward
    from tests.conftest import FIL_FILES

    cfg = {
        "walk_forward": {
            "train_size": 2000,
            "test_size": 500,
            "step": 500,
            "purge": 5,
            "max_folds": 1,
            "window": 2600,
        },
        "export": {"parity_rows": 500, "variant": variant, "variant_max_accuracy_drop_pp": max_drop_pp},
    }
    candles = read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:3300].reset_index(drop=True)
    return train_walk_forward(
        candles,
        symbol="FILUSDT",
        interval="1m",
        cfg=TrainingConfig.model_validate(cfg),
        model_type="transformer",
        preset="tiny",
        model_overrides={"max_epochs": 1, "num_threads": 1},
    )


@pytest.mark.slow
def test_export_variant_that_keeps_every_walk_forward_call_ships(shared_data):
    from pipelines.models.sequence.variants import graph_variant

    res = _walk_forward("optimized", 0.0)  # even a zero tolerance: the optimised graph is the same model
    record = res.manifest.extra["export_variant"]
    assert record["variant"] == "optimized" and graph_variant(res.onnx_bytes) == "optimized"
    wf = record["gates"]["walk_forward"]
    assert wf["rows"] == 500 and wf["accuracy_drop_pp"] == 0.0 and wf["sign_agreement"] == 1.0
    assert record["gates"]["export"]["passed"] and res.run_tags == {"kairos.export_variant": "optimized"}
    assert res.gates == {"parity": True}


@pytest.mark.slow
def test_export_variant_that_costs_walk_forward_accuracy_is_rejected_with_the_numbers(shared_data, caplog):
    from pipelines.models.sequence.variants import graph_variant

    with caplog.at_level(logging.WARNING, logger="kairos.models.sequence"):
        res = _walk_forward("int8", 0.0)
    record = res.manifest.extra["export_variant"]
    wf = record["gates"]["walk_forward"]
    assert wf["accuracy_drop_pp"] > 0 and not wf["passed"], wf  # int8 flips some out-of-sample calls
    assert record["variant"] == "fp32" and record["requested"] == "int8"
    assert graph_variant(res.onnx_bytes) == "fp32" and res.run_tags == {"kairos.export_variant": "fp32"}
    msg = record["rejected"]
    assert msg.startswith("walk-forward gate (newest fold, out-of-sample): int8 variant rejected on 500 rows")
    assert f"direction accuracy falls {wf['accuracy_drop_pp']:.2f} pp" in msg and "> 0 pp" in msg
    assert msg.endswith("the fp32 export stays the bundle's model")
    assert msg in caplog.text
    assert res.gates == {"parity": True}  # the model itself is fine: only its variant was refused
