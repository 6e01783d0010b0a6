"""Model families behind one protocol (`base.ReturnsModel`), found by name through their `ModelSpec`.

A family is one module exposing `SPEC = ModelSpec(...)` (`pipelines.models.spec`) and one config
`configs/models/<name>.yaml` whose `module:` names that module (default `pipelines.models.<name>`), so
adding a family touches no code that already exists. `get_spec(name)` imports the module lazily:
importing `pipelines.models` pulls in neither LightGBM nor torch.

    make_model("lightgbm", cfg, n_features, horizons)                   # the defaults.yaml block
    make_model("mamba", cfg, n_features, horizons, preset="tiny", overrides={"max_epochs": 1})
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.models.spec import ModelContext, ModelSpec, ModelSpecError, PruningRequest, read_model_file

if TYPE_CHECKING:
    from pipelines.config import TrainingConfig

__all__ = [
    "ModelContext",
    "ModelSpec",
    "ModelSpecError",
    "PruningRequest",
    "available_models",
    "get_spec",
    "make_model",
    "register_spec",
]

# Specs registered in-process (tests, notebooks); the normal way in is a module + configs/models/<name>.yaml.
REGISTERED: dict[str, ModelSpec] = {}


def register_spec(spec: ModelSpec) -> ModelSpec:
    """Make `spec` findable by name in this process (it wins over a module of the same name)."""
    REGISTERED[spec.name] = spec
    return spec


def _configs_dir(configs_dir: Path | None) -> Path:
    if configs_dir is not None:
        return Path(configs_dir)
    from pipelines.contracts.settings import get_settings

    return get_settings().configs_dir


def available_models(configs_dir: Path | None = None) -> list[str]:
    """Families with a config file in `configs/models/`, plus those registered in-process."""
    folder = _configs_dir(configs_dir) / "models"
    return sorted({p.stem for p in folder.glob("*.yaml")} | set(REGISTERED))


def get_spec(name: str, configs_dir: Path | None = None) -> ModelSpec:
    """The `ModelSpec` of family `name`: `SPEC` of the module named by `configs/models/<name>.yaml`
    (key `module:`), or of `pipelines.models.<name>` when the file has none.

    Raises:
        ModelSpecError: unknown family (naming the known ones), or a module without a matching SPEC.
    """
    if name in REGISTERED:
        return REGISTERED[name]
    configs = _configs_dir(configs_dir)
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise ModelSpecError(f"unknown model {name!r}; known models: {available_models(configs)}")
    module_name = read_model_file(configs, name).get("module") or f"pipelines.models.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if module_name == e.name or module_name.startswith(f"{e.name}."):
            raise ModelSpecError(
                f"unknown model {name!r}; known models: {available_models(configs)} (a model family is a module "
                f"exposing SPEC + configs/models/<name>.yaml naming it under `module:`)"
            ) from None
        raise ModelSpecError(
            f"model {name!r} ({module_name}) cannot be loaded: {e}; install its dependencies "
            "or pick another model"
        ) from None
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, ModelSpec) or spec.name != name:
        raise ModelSpecError(
            f"{module_name} must define SPEC = ModelSpec(name={name!r}, ...) to be model {name!r}"
        )
    return spec


def make_model(
    model_type: str,
    cfg: TrainingConfig,
    n_features: int,
    horizons: Sequence[int],
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    objective: str = "l2",
    task: str | None = None,
    configs_dir: Path | None = None,
) -> Any:
    """An unfitted model of family `model_type` for `n_features` inputs and `horizons` outputs.

    Args:
        model_type: a family name (`available_models()`).
        cfg: the training config (LightGBM reads its `lightgbm:` block; the ensemble its LightGBM member).
        n_features: F.
        horizons: label horizons, one output column each.
        preset: a preset of `configs/models/<model_type>.yaml` (default: the file's `default`).
        overrides: config fields set last (tuned params, `{"max_epochs": 1}`, ...).
        objective: the training loss the task chooses ("l2", "huber", "quantile").
        task: when given, checked against the family's supported tasks.
        configs_dir: default `get_settings().configs_dir`.

    Raises:
        ModelSpecError: unknown family, unsupported task or objective (naming what is supported).
        ConfigError: unknown preset or a bad config field.
    """
    configs = _configs_dir(configs_dir)
    spec = get_spec(model_type, configs)
    if task is not None:
        spec.check_task(task)
    return spec.build(
        ModelContext(cfg, configs),
        n_features,
        horizons,
        preset=preset,
        overrides=overrides,
        objective=objective,
    )
