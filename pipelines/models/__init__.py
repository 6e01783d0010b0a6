"""Returns models behind one protocol (`base.ReturnsModel`) and one factory (`make_model`).

Each model type maps to a `module:factory` imported lazily, so importing `pipelines.models` pulls
in neither LightGBM nor torch. A factory has the signature
`build(cfg: TrainingConfig, n_features: int, horizons: Sequence[int]) -> ReturnsModel`.
Deep models plug in by adding a line to `MODEL_FACTORIES` (or `register_model` at runtime).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.contracts.errors import KairosError

if TYPE_CHECKING:
    from pipelines.config import TrainingConfig
    from pipelines.models.base import ReturnsModel

ModelFactory = Callable[["TrainingConfig", int, Sequence[int]], "ReturnsModel"]

# model_type -> "module:callable"; deep-model modules are owned by the deep-model engineer.
MODEL_FACTORIES: dict[str, str | ModelFactory] = {
    "lightgbm": "pipelines.models.lightgbm:build",
    "lstm_attention": "pipelines.models.sequence:build_lstm_attention",
    "transformer": "pipelines.models.sequence:build_transformer",
    "tft": "pipelines.models.sequence:build_tft",
    "mamba": "pipelines.models.sequence:build_mamba",
    "ensemble": "pipelines.models.sequence:build_ensemble",
}


def register_model(model_type: str, factory: str | ModelFactory) -> None:
    """Add or replace a model type (a `module:callable` path or the callable itself)."""
    MODEL_FACTORIES[model_type] = factory


def _resolve(model_type: str, ref: str | ModelFactory) -> ModelFactory:
    if callable(ref):
        return ref
    module_name, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise KairosError(
            f"model type {model_type!r} is declared as {ref!r} but cannot be loaded ({e}); "
            "install its dependencies or pick another model_type"
        ) from None


def make_model(model_type: str, cfg: "TrainingConfig", n_features: int, horizons: Sequence[int]) -> Any:
    """Build an unfitted model of `model_type` for `n_features` inputs and `horizons` outputs.

    Raises:
        KairosError: naming the known model types when `model_type` is unknown.
    """
    ref = MODEL_FACTORIES.get(model_type)
    if ref is None:
        raise KairosError(f"unknown model_type {model_type!r}; known types: {sorted(MODEL_FACTORIES)}")
    return _resolve(model_type, ref)(cfg, n_features, list(horizons))
