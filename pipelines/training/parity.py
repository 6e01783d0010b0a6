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
    rtol: float = 0.0,
) -> float:
    """Max abs difference between ONNX (onnxruntime CPU) and `predict_fn` over X.

    A cell passes when |onnx - native| <= tolerance + rtol * |native|: the graph computes in float32,
    whose rounding grows with the magnitude of the output (a log variance near -15 carries ~2e-6 per
    ulp, a log return near 1e-3 ~1e-10), so outputs far from 0 need the relative term.

    Args:
        onnx_bytes: serialised model with one input and the output compared.
        predict_fn: the native model's predict, X → [N, H] (or [N]).
        X: real rows, float32 [N, F] or [N, T, F].
        tolerance: absolute part of the allowed difference.
        rtol: relative part of the allowed difference (of |native|).
        output: the graph output compared; None = its first output (the task's prediction).

    Returns:
        The max abs difference.

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
        raise ParityError(
            f"ONNX output shape {got.shape} differs from native {want.shape}; re-export the model"
        )
    diff = np.abs(got - want)
    if not np.isfinite(diff).all():
        raise ParityError(
            f"ONNX or native output has non-finite values on {int((~np.isfinite(diff)).sum())} cells"
        )
    max_abs = float(diff.max())
    excess = diff - (tolerance + rtol * np.abs(want))
    if (excess > 0).any():
        row, col = np.unravel_index(int(excess.argmax()), diff.shape)
        raise ParityError(
            f"ONNX export disagrees with the native model: abs diff {diff[row, col]:.3g} > tolerance "
            f"{tolerance:.3g} + rtol {rtol:.3g} x |{want[row, col]:.4g}| (row {row}, output {col}; max abs diff "
            f"{max_abs:.3g}); registration blocked - fix the export"
        )
    return max_abs
