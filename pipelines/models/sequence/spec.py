"""The `ModelSpec` every sequence architecture shares: `SPEC = sequence_spec("<architecture>")` in its module.

The architecture module (e.g. `mamba.py`) holds the encoder (`build_encoder`) and its SPEC; its presets
live in `configs/models/<architecture>.yaml` (parsed into `ZooConfig`: `SequenceModelConfig` plus the
training `device`). Training goes through `SequenceRegressor` (base.py), the shared loop; torch is
imported only when a model is built.

Objectives. The task's objective maps onto `SequenceModelConfig.loss`: "huber" → loss "huber";
"l2" (the default) keeps the preset's loss, which is mse unless the preset refines it (direction,
sharpe, huber). tft always trains with the pinball loss over its quantiles and serves their median,
so it takes "l2" and "quantile" and no other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from pipelines.config import SequenceModelConfig
from pipelines.models.spec import ModelContext, ModelSpec, PruningRequest

# Fields that are identity, export or runtime settings rather than hyperparameters.
UNTUNABLE = frozenset(
    {"seed", "architecture", "opset", "parity_tolerance", "mixed_precision", "device", "cpu_bf16"}
)


class ZooConfig(SequenceModelConfig):
    """A zoo preset: `SequenceModelConfig` plus where it trains (the presets in configs/models/*.yaml).

    device: "auto" (CUDA when torch sees a GPU, else CPU), "cpu", or "cuda" (falls back to the CPU
    with one log line when there is no CUDA); see `pipelines.models.sequence.base.resolve_device`.
    cpu_bf16: train under bfloat16 autocast when the fit runs on a CPU with native bf16 arithmetic
    (AVX512-BF16 / AMX; float32 elsewhere, after one log line). The weights, the export and inference
    stay float32; benchmarks/bench_train_throughput.py measured where it pays (lstm_attention,
    transformer) and where it does not (tft, mamba).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_bf16: bool = False
    min_delta: float = Field(
        0.0,
        ge=0,
        description="early stopping: an epoch improves only if its validation loss beats the best by more "
        "than this (losses are O(1): labels are RMS-scaled); stops fits whose loss creeps down by noise",
    )


def with_objective(cfg: SequenceModelConfig, objective: str) -> SequenceModelConfig:
    """The config whose `loss` carries the task's objective (see the module docstring)."""
    if objective == "huber" and cfg.loss != "huber":
        return cfg.model_copy(update={"loss": "huber"})
    return cfg


def _pruning(req: PruningRequest) -> list[Any]:
    """Optuna's Lightning callback on each epoch's val_loss (a loss: reported negated)."""
    from optuna_integration import PyTorchLightningPruningCallback

    return [PyTorchLightningPruningCallback(req.loss_trial, "val_loss")]


def _build(
    cfg: SequenceModelConfig,
    n_features: int,
    horizons: Sequence[int],
    *,
    objective: str,
    context: ModelContext,
) -> Any:
    from pipelines.models.sequence.base import SequenceRegressor

    return SequenceRegressor(with_objective(cfg, objective), n_features, horizons)


def sequence_spec(architecture: str, objectives: tuple[str, ...] = ("l2", "huber")) -> ModelSpec:
    """The spec of one architecture (its presets: `configs/models/<architecture>.yaml`)."""
    return ModelSpec(
        name=architecture,
        factory=_build,
        config_class=ZooConfig,
        input_kind="sequence",
        tasks=("returns", "volatility"),
        objectives=objectives,
        threads_field="num_threads",
        untunable=UNTUNABLE,
        pruning=_pruning,
    )
