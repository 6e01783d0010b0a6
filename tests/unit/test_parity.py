"""The parity gate: absolute tolerance plus a relative term for outputs far from 0 (float32 rounding)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipelines.contracts.errors import ParityError
from pipelines.training.parity import check_parity


def _sum_graph(n_terms: int) -> bytes:
    """features [N, 1] → returns [N, 1] = x + Σ small float32 constants (a tree ensemble's running sum)."""
    nodes, inits, prev = [], [], "features"
    for k in range(n_terms):
        c = f"c{k}"
        inits.append(numpy_helper.from_array(np.array([[0.01 * ((-1) ** k) + 1e-4 * k]], np.float32), c))
        out = "returns" if k == n_terms - 1 else f"s{k}"
        nodes.append(helper.make_node("Add", [prev, c], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "sum",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("returns", TensorProto.FLOAT, [None, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8  # what onnxruntime reads (the onnx package writes newer by default)
    return model.SerializeToString()


def _native(n_terms: int):
    consts = np.array([0.01 * ((-1) ** k) + 1e-4 * k for k in range(n_terms)], np.float32).astype(np.float64)
    return lambda X: X.astype(np.float64) + consts.sum()


def test_large_magnitude_outputs_need_the_relative_term():
    """A log variance near -15 summed in float32 misses 1e-5 absolute; 1e-6 relative covers it."""
    onnx_bytes, native = _sum_graph(200), _native(200)
    X = np.random.default_rng(0).uniform(-16, -14, size=(2000, 1)).astype(np.float32)
    with pytest.raises(ParityError, match="rtol 0"):
        check_parity(onnx_bytes, native, X, 1e-7)
    assert check_parity(onnx_bytes, native, X, 1e-7, rtol=1e-6) <= 1e-6 * 16 + 1e-7


def test_small_outputs_still_held_to_the_absolute_tolerance():
    onnx_bytes = _sum_graph(3)
    X = np.zeros((10, 1), np.float32)
    bad = lambda X: _native(3)(X) + 2e-5  # noqa: E731 - a native model that really differs
    with pytest.raises(ParityError, match="registration blocked"):
        check_parity(onnx_bytes, bad, X, 1e-5, rtol=1e-6)
    assert onnx.load_model_from_string(onnx_bytes).graph.output[0].name == "returns"
