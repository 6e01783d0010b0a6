"""Export variants of the sequence models (issue 17): optimized / int8 / fp16 graphs behind a decision gate.

Small synthetic windows (T = 16) and tiny presets trained one epoch: the gate's job is to compare a
variant with the fp32 graph, which needs a fitted graph, not a good model. No timing assertions.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from pipelines.contracts.bundle import (
    FeatureSetSpec,
    Manifest,
    OutputSpec,
    TensorSpec,
    read_bundle,
    write_bundle,
)
from pipelines.contracts.errors import ParityError
from pipelines.models.sequence import make_sequence_model
from pipelines.models.sequence.onnx_io import onnx_predict
from pipelines.models.sequence.variants import (
    DEFAULT_TOLERANCES,
    META_GATE,
    VariantGateError,
    VariantTolerance,
    build_variant,
    fuse_attention,
    gate_variant,
    graph_variant,
    optimise_bundle,
    optimise_bundle_dir,
)
from pipelines.training.windows import window_dataset

T, F, H = 16, 4, (1, 2)


def _windows(n: int, seed: int, offset: float = 0.0, scale: float = 1.0):
    """Windows whose feature 0 is a return series (labels: its next 1, 2 sums); others noise."""
    rng = np.random.default_rng(seed)
    m = n + T + 3
    X = rng.standard_normal((m, F)).astype(np.float32)
    X[:, 0] *= 1e-3
    X[:, 1:] = (offset + scale * X[:, 1:]).astype(np.float32)
    c = np.concatenate([[0.0], np.cumsum(X[:, 0].astype(np.float64))])
    Y = np.full((m, len(H)), np.nan)
    for j, h in enumerate(H):
        Y[: m - h, j] = c[np.arange(m - h) + 1 + h] - c[np.arange(m - h) + 1]
    W, Yw, _ = window_dataset(X, Y, T)
    return np.ascontiguousarray(W[:n]), Yw[:n]


_MODELS: dict[tuple, tuple] = {}


def fitted(arch: str = "transformer", **overrides):
    """(model, fp32 graph, gate windows, gate labels), fitted once per session per setting."""
    key = (arch, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        offset = overrides.pop("offset", 0.0)
        scale = overrides.pop("scale", 1.0)
        W, Y = _windows(1600, seed=3, offset=offset, scale=scale)
        cfg = {"sequence_length": T, "max_epochs": 1, "num_threads": 1, "batch_size": 128, **overrides}
        model = make_sequence_model(arch, F, H, preset="tiny", overrides=cfg)
        model.fit(W[:1000], Y[:1000], X_val=W[1005:1200], Y_val=Y[1005:1200])
        _MODELS[key] = (model, model.to_onnx(), W[1200:], Y[1200:])
    return _MODELS[key]


# -- the transformer's inference path -----------------------------------------------------------
def test_transformer_inference_runs_the_last_block_for_the_newest_step_only():
    model, _, W, _ = fitted("transformer", n_layers=2)
    enc = model.net_.encoder
    x = torch.from_numpy(W[:64])
    with torch.no_grad():
        fast = enc((x - model.net_.x_mean) / model.net_.x_std)
        enc.newest_only = False
        try:
            full = enc((x - model.net_.x_mean) / model.net_.x_std)
        finally:
            enc.newest_only = True
    np.testing.assert_allclose(fast.numpy(), full.numpy(), atol=1e-5)
    assert not enc.training


# -- optimized ------------------------------------------------------------------------------------
def test_optimized_variant_fuses_attention_and_passes_its_gate():
    model, fp32, W, Y = fitted("transformer", n_layers=3)
    fused, n = fuse_attention(fp32)
    assert n == 2  # blocks 0 and 1; the last block runs for the newest step only (another pattern)
    ops = [nd.op_type for nd in onnx.load_model_from_string(fused).graph.node]
    assert ops.count("Attention") == 2 and "Softmax" in ops  # the last block keeps its plain softmax
    out = optimise_bundle(fp32, "optimized", W, labels=Y)
    assert graph_variant(out) == "optimized" and graph_variant(fp32) == "fp32"
    report = json.loads(
        next(p.value for p in onnx.load_model_from_string(out).metadata_props if p.key == META_GATE)
    )
    assert report["passed"] and report["sign_agreement"] == 1.0 and report["accuracy_drop_pp"] == 0.0
    got = onnx_predict(out, W)
    native_r, native_c = model.predict_with_confidence(W)
    np.testing.assert_allclose(
        got["returns"], native_r, atol=1e-6 * max(1e-12, np.abs(native_r).max()) + 1e-9
    )
    np.testing.assert_allclose(got["confidence"], native_c, atol=1e-4)


def test_models_without_the_pattern_come_back_unchanged():
    _, fp32, _, _ = fitted("lstm_attention")
    assert fuse_attention(fp32) == (fp32, 0)


# -- int8 -----------------------------------------------------------------------------------------
def test_int8_variant_passes_the_default_gate_with_a_message():
    _, fp32, W, Y = fitted("transformer", n_layers=3)
    int8 = build_variant(fp32, "int8")
    ops = {nd.op_type for nd in onnx.load_model_from_string(int8).graph.node}
    assert {"QAttention", "DynamicQuantizeLinear"} <= ops
    report = gate_variant(fp32, int8, W, DEFAULT_TOLERANCES["int8"], labels=Y, variant="int8")
    assert report.passed, report.message()
    assert 0 < report.max_abs_diff and report.sign_agreement >= 0.95
    assert report.message().startswith("int8 variant passed on 400 rows, output 'returns': max abs diff")
    out = optimise_bundle(fp32, "int8", W, labels=Y)
    assert graph_variant(out) == "int8" and len(out) < len(fp32)


def test_int8_variant_fails_a_deliberately_tight_tolerance_saying_by_how_much():
    _, fp32, W, Y = fitted("transformer", n_layers=3)
    tight = VariantTolerance(max_rel_diff=1e-6, min_sign_agreement=1.0, max_accuracy_drop_pp=0.0)
    with pytest.raises(VariantGateError) as e:
        optimise_bundle(fp32, "int8", W, tight, labels=Y)
    msg = str(e.value)
    assert msg.startswith("int8 variant rejected on 400 rows, output 'returns': max abs diff ")
    assert "x the spread of fp32 predictions" in msg and "> 1e-06" in msg
    assert "the fp32 export stays the bundle's model" in msg
    report = e.value.report
    assert not report.passed and report.rel_diff > 1e-6
    assert isinstance(e.value, ParityError)  # blocks registration like any parity failure


def test_a_graph_whose_decisions_flip_is_rejected():
    """A 'variant' that negates the prediction: every direction call flips, accuracy turns around."""
    _, fp32, W, Y = fitted("transformer", n_layers=3)
    model = onnx.load_model_from_string(fp32)
    for n in model.graph.node:
        n.output[:] = ["returns_raw" if o == "returns" else o for o in n.output]
        n.input[:] = ["returns_raw" if i == "returns" else i for i in n.input]
    model.graph.node.append(helper.make_node("Neg", ["returns_raw"], ["returns"], name="flip"))
    flipped = model.SerializeToString()
    report = gate_variant(fp32, flipped, W, DEFAULT_TOLERANCES["int8"], labels=Y, variant="flipped")
    assert not report.passed
    assert report.sign_agreement < 0.01 and report.flipped >= 0.99 * report.cells
    msg = report.message()
    assert msg.startswith("flipped variant rejected on 400 rows")
    assert "direction calls flipped" in msg and "x the spread of fp32 predictions" in msg
    if report.accuracy_drop_pp > DEFAULT_TOLERANCES["int8"].max_accuracy_drop_pp:
        assert "direction accuracy falls" in msg


# -- fp16 -----------------------------------------------------------------------------------------
def test_fp16_variant_keeps_raw_inputs_in_float32_before_normalising():
    """Raw features far from 0 with a small spread (prices): cast to float16 first, they lose every digit."""
    _, fp32, W, Y = fitted("mamba", offset=3000.0, scale=0.01)
    fp16 = build_variant(fp32, "fp16")
    model = onnx.load_model_from_string(fp16)
    first = [n for n in model.graph.node if "features" in n.input]
    assert first and all(n.op_type == "Sub" for n in first)  # the normalisation reads the float32 input
    report = gate_variant(fp32, fp16, W, DEFAULT_TOLERANCES["fp16"], labels=Y, variant="fp16")
    assert report.passed, report.message()
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)


# -- API edges -------------------------------------------------------------------------------------
def test_fp32_is_the_identity_and_unknown_variants_are_refused():
    _, fp32, W, _ = fitted("transformer", n_layers=3)
    assert optimise_bundle(fp32, "fp32", W) is fp32
    with pytest.raises(ValueError, match="unknown export variant 'bf16'"):
        optimise_bundle(fp32, "bf16", W)
    with pytest.raises(VariantGateError, match="0 rows"):
        optimise_bundle(fp32, "optimized", W[:0])


def test_optimise_bundle_dir_records_the_gate_in_the_manifest(tmp_path):
    _, fp32, W, Y = fitted("transformer", n_layers=3)
    manifest = Manifest(
        task="returns",
        model_name="returns-X-1m",
        model_type="transformer",
        symbol="X",
        interval="1m",
        feature_set=FeatureSetSpec("fake", 1, [f"f{i}" for i in range(F)], 0),
        input=TensorSpec("features", [None, T, F]),
        outputs=[
            OutputSpec("returns", [None, len(H)], horizons=list(H)),
            OutputSpec("confidence", [None, len(H)]),
        ],
        training={},
        metrics={},
        code_version="x",
        created_at="now",
    )
    src = write_bundle(tmp_path / "fp32", fp32, manifest)
    dst = optimise_bundle_dir(src, tmp_path / "int8", "int8", W, labels=Y)
    onnx_bytes, m = read_bundle(dst)
    assert graph_variant(onnx_bytes) == "int8"
    assert m.extra["export_variant"]["variant"] == "int8"
    assert m.extra["export_variant"]["gate"]["passed"] is True
    assert m.input == manifest.input and m.outputs == manifest.outputs
