"""The shared model protocol: every returns model (LightGBM, deep, ensemble) implements it.

Estimator contract (scikit-learn style): `__init__` only stores parameters; `fit` validates its
inputs, sets learned attributes ending in `_` and returns `self`; `predict` checks it is fitted.
`pipelines.training.walk_forward` only talks to models through this protocol, so it stays model-agnostic.
A family whose `ModelSpec` declares `pruning` also takes `fit(..., callbacks=...)` (the callbacks that
spec builds); `pipelines.training.fit.fit_fold` passes the keyword only when there are callbacks.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np

from pipelines.contracts.errors import KairosError

INPUT_NAME = "features"  # ONNX input: float32 [N, F] (tabular) or [N, T, F] (sequence), dynamic N
OUTPUT_NAME = "returns"  # ONNX output: float32 [N, H], predicted ln(close[t+h]/close[t])
CONFIDENCE_NAME = "confidence"  # optional ONNX output: float32 [N, H]
OUTPUT_MEANING = "predicted log return ln(close[t+h]/close[t])"


class ModelError(KairosError):
    """A model got inputs of the wrong shape/dtype, or was used before `fit`."""


@runtime_checkable
class ReturnsModel(Protocol):
    """What training, export and the ensemble need from a returns model."""

    model_type: str  # "lightgbm", "lstm_attention", "transformer", "tft", "mamba", "ensemble"
    input_kind: Literal["tabular", "sequence"]
    sequence_length: int | None  # T for sequence models, None for tabular
    parity_tolerance: float  # max abs ONNX-vs-native allowed (1e-5 LightGBM, 1e-4 deep)

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        Y_val: np.ndarray | None = None,
    ) -> Self:
        """X float32 [N, F] or [N, T, F]; Y float64 [N, H] log returns (no NaN); X_val/Y_val purged slice."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float64 [N, H]."""
        ...

    def to_onnx(self) -> bytes:
        """Self-contained ONNX: input "features", output "returns" float32 [N, H] (+ optional "confidence")."""
        ...

    def get_params(self) -> dict[str, Any]:
        """Flat hyperparameters, for MLflow."""
        ...


def check_X(X: np.ndarray, *, n_dims: int, n_features: int | None = None, who: str = "model") -> np.ndarray:
    """Return X as C-contiguous float32 after checking its rank and feature count.

    Raises:
        ModelError: naming the expected and actual shape.
    """
    X = np.asarray(X)
    if X.ndim != n_dims:
        want = "[N, F]" if n_dims == 2 else "[N, T, F]"
        raise ModelError(f"{who}: X has shape {X.shape}; expected {want}")
    if n_features is not None and X.shape[-1] != n_features:
        raise ModelError(f"{who}: X has {X.shape[-1]} features; the model was fitted on {n_features}")
    return np.ascontiguousarray(X, dtype=np.float32)


def check_Y(Y: np.ndarray, n_rows: int, n_horizons: int, *, who: str = "model") -> np.ndarray:
    """Return Y as float64 [n_rows, n_horizons] after checking shape and finiteness."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1 and n_horizons == 1:
        Y = Y[:, None]
    if Y.shape != (n_rows, n_horizons):
        raise ModelError(f"{who}: Y has shape {Y.shape}; expected ({n_rows}, {n_horizons}) (rows, horizons)")
    if not np.isfinite(Y).all():
        raise ModelError(
            f"{who}: Y has {int((~np.isfinite(Y)).sum())} non-finite labels; drop those rows before fit"
        )
    return Y


def check_fitted(model: Any, attribute: str) -> None:
    """Raise ModelError when `model` lacks the learned `attribute` (i.e. `fit` was not called)."""
    if getattr(model, attribute, None) is None:
        raise ModelError(f"{type(model).__name__} is not fitted; call fit(X, Y) first")
