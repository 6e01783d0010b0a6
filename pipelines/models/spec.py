"""`ModelSpec`: everything the platform needs to know about a model family, so that nothing branches on one.

A family is ONE module exposing `SPEC = ModelSpec(...)` and ONE config `configs/models/<name>.yaml`:

    module: pipelines.models.sequence.mamba   # where SPEC lives (default: pipelines.models.<name>)
    default: small                            # the preset used when none is asked for (optional)
    presets:                                  # fields of the family's typed config (`config_class`)
      small: {d_model: 32, ...}
      tiny: {d_model: 16, ...}

Training (`make_model`), tuning (`pipelines.tuning.objective`) and `kairos train --model/--preset`
only talk to the spec: how its typed config is assembled (`config`), which tasks and training
objectives it honours, whether it reads rows or windows (`input_kind`), which config field takes the
tuner's thread count and how it is pruned inside a fold (`pruning`).

Pure Python + pydantic: importing this module imports neither LightGBM nor torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from pipelines.contracts.errors import ConfigError, KairosError

if TYPE_CHECKING:
    from pipelines.config import TrainingConfig

# Training losses a task may choose (a family maps them to its own). `direction`: a classifier of
# sign(label) with flat (0) labels excluded from the loss; its output is the log-odds that the label is > 0.
OBJECTIVES = ("l2", "huber", "quantile", "direction")


class ModelSpecError(KairosError):
    """A model family is unknown, cannot be loaded, or cannot do what was asked (task, objective)."""


@dataclass(frozen=True)
class ModelContext:
    """What a family may read besides its own config: the training config and the configs directory.

    LightGBM takes its defaults from `training.lightgbm` (the `lightgbm:` block of defaults.yaml) and
    its ONNX opset from `training.export`; the ensemble finds its members' presets in `configs_dir`.
    """

    training: TrainingConfig
    configs_dir: Path


@dataclass(frozen=True)
class PruningRequest:
    """What a family needs to build its in-fold pruning callbacks (see `ModelSpec.pruning`).

    `trial` and `loss_trial` are Optuna-trial stand-ins whose steps already sit in the fold's block:
    report a value to maximise through `trial`, a loss to minimise through `loss_trial` (it negates).
    `score(pred, actual)` is the tuning metric (higher is better) of (n,) forecasts of the tuned
    horizon, e.g. for a callback that scores the validation slice itself.
    """

    trial: Any
    loss_trial: Any
    metric: str
    score: Callable[[np.ndarray, np.ndarray], float]
    report_interval: int


@dataclass(frozen=True)
class ModelSpec:
    """One model family.

    Attributes:
        name: the name users type (`kairos train --model <name>`); also the config file's stem.
        factory: `factory(config, n_features, horizons, *, objective, context) -> unfitted model`, where
            `config` is an instance of `config_class` and `objective` one of `objectives`.
        config_class: the family's typed (pydantic) config; presets and tuned params are its fields.
        input_kind: "tabular" (rows [N, F]) or "sequence" (windows [N, T, F]).
        tasks: the tasks it can be trained for (any regression on labels supports returns and volatility).
        objectives: the training objectives it honours (`OBJECTIVES`); first = what it does by default.
        base_config: fields read from the training config before any preset (LightGBM: the `lightgbm:`
            block of defaults.yaml, so `kairos train` with no flags trains what it always trained);
            None = the preset file alone defines the config.
        threads_field: the config field the tuner sets to its per-trial thread count (None: none).
        untunable: config fields a search space may not name (identity, export and runtime settings).
        pruning: `pruning(request) -> callbacks` for the model's `fit(..., callbacks=...)`, reporting
            inside a fold (None: the tuner prunes between folds only).
    """

    name: str
    factory: Callable[..., Any]
    config_class: type[BaseModel]
    input_kind: Literal["tabular", "sequence"]
    tasks: tuple[str, ...] = ("returns", "volatility")
    objectives: tuple[str, ...] = ("l2",)
    base_config: Callable[[ModelContext], Mapping[str, Any]] | None = None
    threads_field: str | None = None
    untunable: frozenset[str] = field(default_factory=frozenset)
    pruning: Callable[[PruningRequest], list[Any]] | None = None

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or bad:
            raise ModelSpecError(
                f"model {self.name}: objectives {list(self.objectives)} must be a non-empty "
                f"subset of {list(OBJECTIVES)}"
            )
        if self.input_kind not in ("tabular", "sequence"):
            raise ModelSpecError(
                f"model {self.name}: input_kind {self.input_kind!r} must be 'tabular' or 'sequence'"
            )

    # ------------------------------------------------------------------ presets and config
    def config_path(self, configs_dir: Path) -> Path:
        return Path(configs_dir) / "models" / f"{self.name}.yaml"

    def preset_file(self, configs_dir: Path) -> tuple[str | None, dict[str, dict[str, Any]]]:
        """(default preset name or None, {preset: fields}) from `configs/models/<name>.yaml` (empty if absent)."""
        doc = read_model_file(configs_dir, self.name)
        presets = doc.get("presets") or {}
        path = self.config_path(configs_dir)
        if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
            raise ConfigError(f"{path}: `presets` must map preset names to mappings of config fields")
        default = doc.get("default")
        if default is not None and default not in presets:
            raise ConfigError(f"{path}: default preset {default!r} is not one of {sorted(presets)}")
        return default, presets

    def presets(self, configs_dir: Path) -> dict[str, dict[str, Any]]:
        """{preset name: fields} of `configs/models/<name>.yaml`."""
        return self.preset_file(configs_dir)[1]

    def config(
        self, context: ModelContext, preset: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> BaseModel:
        """The typed config: `base_config` fields, then the preset's (default: the file's `default`), then
        `overrides` (e.g. tuned params or `{"max_epochs": 1}`).

        Raises:
            ConfigError: unknown preset (naming the available ones), no preset for a family without
                `base_config`, or a field the config rejects (naming it and the file).
        """
        from pipelines.contracts.yamlio import parse_config

        path = self.config_path(context.configs_dir)
        default, presets = self.preset_file(context.configs_dir)
        fields: dict[str, Any] = dict(self.base_config(context)) if self.base_config else {}
        name = preset or default
        if name is not None:
            if name not in presets:
                raise ConfigError(f"{path}: no preset {name!r}; available: {sorted(presets)}")
            fields.update(presets[name])
        elif self.base_config is None:
            raise ConfigError(
                f"{path}: model {self.name} needs a preset; set `default:` there or pass --preset "
                f"(available: {sorted(presets)})"
            )
        fields.update(overrides or {})
        return parse_config(self.config_class, fields, path)

    def tunable_fields(self) -> list[str]:
        """Config fields a search space may name."""
        skip = set(self.untunable) | ({self.threads_field} if self.threads_field else set())
        return sorted(set(self.config_class.model_fields) - skip)

    # ------------------------------------------------------------------ checks and building
    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ModelSpecError(
                f"model {self.name} does not support task {task!r}; it supports {list(self.tasks)}"
            )

    def check_objective(self, objective: str) -> None:
        if objective not in self.objectives:
            raise ModelSpecError(
                f"model {self.name} cannot train with objective {objective!r}; it supports "
                f"{list(self.objectives)}"
            )

    def build(
        self,
        context: ModelContext,
        n_features: int,
        horizons: Sequence[int],
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        objective: str = "l2",
    ) -> Any:
        """An unfitted model: `config(context, preset, overrides)` handed to `factory`."""
        self.check_objective(objective)
        cfg = self.config(context, preset, overrides)
        return self.factory(cfg, int(n_features), list(horizons), objective=objective, context=context)


def read_model_file(configs_dir: Path, name: str) -> dict[str, Any]:
    """`configs/models/<name>.yaml` as a mapping ({} when the family has no file)."""
    from pipelines.contracts.yamlio import read_yaml

    path = Path(configs_dir) / "models" / f"{name}.yaml"
    if not path.exists():
        return {}
    doc = read_yaml(path)
    unknown = set(doc) - {"module", "default", "presets"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys {sorted(unknown)}; a model file holds module, default and presets"
        )
    return doc
