"""ONNX-vs-native parity: the exported graph must reproduce the native model on real rows.

A failure raises `ParityError`, which blocks registration (the bundle would serve numbers the
evaluated model never produced).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipelines.contracts.errors import ParityError

OUTPUT_NAME = "returns"


def onnx_session(onnx_bytes: bytes, threads: int = 1):
    """A CPU onnxruntime session with an explicit thread count (no oversubscription)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(onnx_bytes: bytes, X: np.ndarray, *, batch_size: int = 4096, threads: int = 1) -> np.ndarray:
    """Output `returns` of the graph for X (float32 [N, F] or [N, T, F]) as float64 [N, H], in batches."""
    sess = onnx_session(onnx_bytes, threads)
    input_name = sess.get_inputs()[0].name
    X = np.ascontiguousarray(X, dtype=np.float32)
    outs = [
        sess.run([OUTPUT_NAME], {input_name: X[i : i + batch_size]})[0]
        for i in range(0, X.shape[0], batch_size)
    ]
    return np.concatenate(outs, axis=0).astype(np.float64)


def check_parity(
    onnx_bytes: bytes, predict_fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray, tolerance: float
) -> float:
    """Max abs difference between ONNX (onnxruntime CPU) and `predict_fn` over X.

    Args:
        onnx_bytes: serialised model with input "features" and output "returns".
        predict_fn: the native model's predict, X → [N, H].
        X: real rows, float32 [N, F] or [N, T, F].
        tolerance: largest allowed max abs difference.

    Returns:
        The max abs difference (<= tolerance).

    Raises:
        ParityError: naming the max difference, the tolerance and where it occurred.
    """
    if X.shape[0] == 0:
        raise ParityError("parity check got 0 rows; pass real feature rows (export.parity_rows > 0)")
    got = run_onnx(onnx_bytes, X)
    want = np.asarray(predict_fn(X), dtype=np.float64)
    if want.ndim == 1:
        want = want[:, None]
    if got.shape != want.shape:
        raise ParityError(f"ONNX output shape {got.shape} differs from native {want.shape}; re-export the model")
    diff = np.abs(got - want)
    if not np.isfinite(diff).all():
        raise ParityError(f"ONNX or native output has non-finite values on {int((~np.isfinite(diff)).sum())} cells")
    max_abs = float(diff.max())
    if max_abs > tolerance:
        row, col = np.unravel_index(int(diff.argmax()), diff.shape)
        raise ParityError(
            f"ONNX export disagrees with the native model: max abs diff {max_abs:.3g} > tolerance {tolerance:.3g} "
            f"(row {row}, output {col}); registration blocked - fix the export"
        )
    return max_abs
