"""ONNX export of a fitted `SequenceNet`, onnxruntime inference, and the parity check.

Export uses the TorchScript-based exporter (`dynamo=False`): it unrolls the Mamba scan loop over
the fixed T into plain ops and handles nn.LSTM, at a standard opset. The batch axis N is dynamic;
T and F are fixed by the window contract ([N, 60, F]).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pipelines.contracts.errors import ParityError
from pipelines.contracts.onnx import make_session
from pipelines.models.sequence.net import OnnxGraph, SequenceNet

INPUT_NAME = "features"
OUTPUT_NAMES = ("returns", "confidence")


def export_onnx(
    net: SequenceNet, sequence_length: int, n_features: int, opset: int, num_threads: int = 1
) -> bytes:
    """Trace `net` (eval mode, on CPU) into self-contained ONNX bytes (weights embedded, no .data file).

    Args:
        net: fitted network; its normalisation buffers become the graph's first constants.
        sequence_length: T of the input window.
        n_features: F.
        opset: ONNX opset (17 default; 15 when composed with LightGBM).
        num_threads: torch threads while tracing.
    """
    return export_module(OnnxGraph(net), sequence_length, n_features, opset, OUTPUT_NAMES, num_threads)


def export_module(
    graph: torch.nn.Module,
    sequence_length: int,
    n_features: int,
    opset: int,
    output_names: Sequence[str],
    num_threads: int = 1,
) -> bytes:
    """Trace any module `graph(features [N, T, F]) -> outputs` into self-contained ONNX bytes.

    The input is named "features"; outputs take `output_names` in order; the batch axis N is dynamic.
    The graph is checked with onnx.checker before it is returned.
    """
    graph = graph.cpu().eval()
    dummy = torch.zeros(2, sequence_length, n_features, dtype=torch.float32)
    buf = io.BytesIO()
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter warns about its deprecation and about shape-dependent Python ints
            # (T, K) becoming constants: both expected, since T and K are fixed by contract.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (dummy,),
                buf,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes={INPUT_NAME: {0: "N"}, **{o: {0: "N"} for o in output_names}},
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        torch.set_num_threads(before)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session(
    onnx_bytes: bytes, threads: int = 1, providers: Sequence[Any] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """An onnxruntime session with explicit thread counts (1 for single-window latency)."""
    return make_session(onnx_bytes, threads=threads, providers=providers)


def onnx_predict(
    onnx_bytes: bytes | ort.InferenceSession, X: np.ndarray, batch: int = 4096
) -> dict[str, np.ndarray]:
    """Run the graph over X (N, T, F) in chunks; returns {output name: float32 array (N, H)}."""
    sess = onnx_bytes if isinstance(onnx_bytes, ort.InferenceSession) else session(onnx_bytes)
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(X), batch):
        out = sess.run(names, {INPUT_NAME: np.ascontiguousarray(X[i : i + batch], dtype=np.float32)})
        for n, v in zip(names, out):
            parts[n].append(v)
    return {n: np.concatenate(v) for n, v in parts.items()}


def parity_max_abs(model, onnx_bytes: bytes, X: np.ndarray) -> dict[str, float]:
    """Max abs difference ONNX vs the native model (eval mode) per output on windows X.

    `model` needs `predict_with_confidence(X) -> (returns, confidence)`.
    """
    native_r, native_c = model.predict_with_confidence(X)
    got = onnx_predict(onnx_bytes, X)
    return {
        "returns": float(np.max(np.abs(got["returns"] - native_r))),
        "confidence": float(np.max(np.abs(got["confidence"] - native_c))),
    }


def check_parity(model, onnx_bytes: bytes, X: np.ndarray, tolerance: float) -> float:
    """Raise ParityError when "returns" differ by more than `tolerance`; returns the max abs diff."""
    diff = parity_max_abs(model, onnx_bytes, X)["returns"]
    if not diff <= tolerance:
        raise ParityError(
            f"ONNX parity failed for {getattr(model, 'model_type', 'model')}: max abs diff {diff:.3g} > "
            f"{tolerance:g} on {len(X)} windows; the export is not registered (check opset / unsupported ops)"
        )
    return diff


def accelerated_session(onnx_bytes: bytes, *, fp16: bool = True, threads: int = 1) -> ort.InferenceSession:
    """The fastest available provider for the same graph: TensorRT (FP16 engine) > CUDA > CPU.

    - TensorRT: the float32 graph with `trt_fp16_enable` (TensorRT picks FP16 kernels itself).
    - CUDA: with `fp16`, weights and activations converted to float16 while the graph's inputs and
      outputs stay float32 (`keep_io_types`), so callers and the manifest see the same contract.
    - CPU: the float32 graph unchanged (the fallback tested on CPU-only hosts).
    """
    available = set(ort.get_available_providers())
    if "TensorrtExecutionProvider" in available:
        providers = [
            ("TensorrtExecutionProvider", {"trt_fp16_enable": fp16}),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
        return session(onnx_bytes, threads, providers)
    if "CUDAExecutionProvider" in available:
        if fp16:
            from pipelines.models.sequence.variants import convert_fp16

            onnx_bytes = convert_fp16(onnx_bytes)
        return session(onnx_bytes, threads, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    return session(onnx_bytes, threads)
