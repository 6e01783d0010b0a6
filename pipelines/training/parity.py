"""ONNX-vs-native parity: the exported graph must reproduce the native model on real rows.

A failure raises `ParityError`, which blocks registration (the bundle would serve numbers the
evaluated model never produced). Training calls this before a bundle is built; `validation.parity`
re-exports it for the validation suites.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipelines.contracts.errors import ParityError
from pipelines.contracts.onnx import run_onnx


def check_parity(
    onnx_bytes: bytes,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    tolerance: float,
    *,
    output: str | None = None,
) -> float:
    """Max abs difference between ONNX (onnxruntime CPU) and `predict_fn` over X.

    Args:
        onnx_bytes: serialised model with one input and the output compared.
        predict_fn: the native model's predict, X → [N, H] (or [N]).
        X: real rows, float32 [N, F] or [N, T, F].
        tolerance: largest allowed max abs difference.
        output: the graph output compared; None = its first output (the task's prediction).

    Returns:
        The max abs difference (<= tolerance).

    Raises:
        ParityError: naming the max difference, the tolerance and where it occurred.
    """
    if X.shape[0] == 0:
        raise ParityError("parity check got 0 rows; pass real feature rows (export.parity_rows > 0)")
    got = run_onnx(onnx_bytes, X, output=output)
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
