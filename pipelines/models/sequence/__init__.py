"""Deep sequence models (issue 5): one shared training loop, one small encoder file per model.

Torch is imported only inside this package; serving and feature code never import it.
`pipelines.models.MODEL_FACTORIES` points at the `build_*` factories below (signature
`(cfg: TrainingConfig, n_features, horizons) -> model`); each reads the default preset of
`configs/models/<model_type>.yaml`. `sequence_factory(model_type, preset=..., overrides=...)` makes a
factory for another preset (CI uses "tiny").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.config import SEQUENCE_ARCHITECTURES, TrainingConfig, load_model_preset
from pipelines.models.sequence.base import SequenceModelError, SequenceRegressor

__all__ = [
    "SEQUENCE_ARCHITECTURES", "SequenceModelError", "SequenceRegressor", "make_sequence_model",
    "sequence_factory", "build_lstm_attention", "build_transformer", "build_tft", "build_mamba", "build_ensemble",
]


def make_sequence_model(
    model_type: str,
    n_features: int,
    horizons: Sequence[int],
    *,
    training: TrainingConfig | None = None,
    configs_dir: Path | None = None,
    preset: str | None = None,
    overrides: dict | None = None,
) -> Any:
    """A fresh (unfitted) sequence model or ensemble from `configs/models/<model_type>.yaml`.

    Args:
        model_type: lstm_attention | transformer | tft | mamba | ensemble.
        n_features: F of the windows.
        horizons: label horizons in candles (H outputs).
        training: the training config (the ensemble's LightGBM member reads `training.lightgbm`).
        configs_dir: configs directory; default `get_settings().configs_dir`.
        preset: preset name in that file; default the file's `default`.
        overrides: flat field overrides of the preset, e.g. {"max_epochs": 2}.
    """
    if configs_dir is None:
        from pipelines.contracts.settings import get_settings

        configs_dir = get_settings().configs_dir
    cfg = load_model_preset(configs_dir, model_type, preset, overrides)
    if model_type == "ensemble":
        from pipelines.models.sequence.ensemble import EnsembleRegressor

        return EnsembleRegressor.from_config(cfg, n_features, horizons, training=training, configs_dir=configs_dir)
    return SequenceRegressor(cfg, n_features, horizons)


def sequence_factory(
    model_type: str, preset: str | None = None, overrides: dict | None = None, configs_dir: Path | None = None
) -> Callable[[TrainingConfig, int, Sequence[int]], Any]:
    """A `make_model` factory for one preset, e.g. `register_model("mamba", sequence_factory("mamba", "tiny"))`."""

    def build(cfg: TrainingConfig, n_features: int, horizons: Sequence[int]) -> Any:
        return make_sequence_model(model_type, n_features, horizons, training=cfg, configs_dir=configs_dir,
                                   preset=preset, overrides=overrides)

    build.__name__ = f"build_{model_type}"
    return build


build_lstm_attention = sequence_factory("lstm_attention")
build_transformer = sequence_factory("transformer")
build_tft = sequence_factory("tft")
build_mamba = sequence_factory("mamba")
build_ensemble = sequence_factory("ensemble")
