"""Typed configs, one per component, parsed from `configs/*.yaml` once at the entry point.

Each step receives only its own part (e.g. `WalkForwardConfig`), never the whole file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureConfig(_Frozen):
    feature_set: str = "core27"


class LabelConfig(_Frozen):
    horizons: tuple[int, ...] = (1, 2, 3, 4, 5)

    @model_validator(mode="after")
    def _check(self) -> "LabelConfig":
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive candle counts, got {self.horizons}")
        if list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError(f"horizons must be strictly increasing, got {self.horizons}")
        return self


class WalkForwardConfig(_Frozen):
    train_size: int = Field(20160, gt=0)
    test_size: int = Field(2880, gt=0)
    step: int = Field(2880, gt=0)
    scheme: Literal["rolling", "expanding"] = "rolling"
    purge: int = Field(5, ge=0)
    max_folds: int = Field(6, ge=0)
    window: int = Field(43200, ge=0)


class EvaluationConfig(_Frozen):
    fee_bps: float = Field(1.0, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)


class LightGBMConfig(_Frozen):
    num_leaves: int = Field(31, ge=2)
    learning_rate: float = Field(0.05, gt=0)
    n_estimators: int = Field(200, ge=1)
    min_child_samples: int = Field(200, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    subsample_freq: int = Field(1, ge=0)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    num_threads: int = Field(2, ge=1)
    seed: int = 42


class ExportConfig(_Frozen):
    target_opset: int = Field(15, ge=9, le=15)
    parity_tolerance: float = Field(1e-5, gt=0)
    parity_rows: int = Field(5000, ge=1)


class TrainingConfig(_Frozen):
    """Everything `kairos train` needs, assembled from configs/defaults.yaml."""

    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    lightgbm: LightGBMConfig = LightGBMConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _purge_covers_horizon(self) -> "TrainingConfig":
        if self.walk_forward.purge < max(self.labels.horizons):
            raise ValueError(
                f"walk_forward.purge={self.walk_forward.purge} is shorter than the longest horizon "
                f"{max(self.labels.horizons)}: labels of the last training rows would overlap the test "
                "window; set purge >= max(horizons)"
            )
        return self


class PromotionPolicy(_Frozen):
    min_lift_pp: float = Field(0.5, ge=0)
    horizon: int = Field(1, ge=1)
    require_beats_baselines: bool = False
    min_samples: int = Field(500, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _parse(model: type[BaseModel], data: dict, source: Path):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None


def load_training_config(configs_dir: Path, overrides: dict | None = None) -> TrainingConfig:
    """Parse `defaults.yaml` (plus nested `overrides`, e.g. tuned LightGBM params) into TrainingConfig."""
    path = configs_dir / "defaults.yaml"
    data = _read_yaml(path)
    for key, val in (overrides or {}).items():
        data[key] = {**data.get(key, {}), **val}
    return _parse(TrainingConfig, data, path)


def load_promotion_policy(configs_dir: Path) -> PromotionPolicy:
    path = configs_dir / "promotion.yaml"
    return _parse(PromotionPolicy, _read_yaml(path), path)
