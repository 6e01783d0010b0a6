"""Deep sequence models (issue 5): one shared training loop, one small encoder file per architecture.

Torch is imported only inside this package; serving and feature code never import it. Each
architecture module (`lstm_attention`, `transformer`, `tft`, `mamba`) and `ensemble` exposes
`SPEC` (`pipelines.models.spec.ModelSpec`) and has its presets in `configs/models/<name>.yaml`;
`pipelines.models.make_model` builds them like any other family.
`classifier.SequenceClassifier` puts a one-logit head (binary cross-entropy or focal loss) on the
same encoders and training loop, for event tasks (P(whale event in the next candles)).
`variants.optimise_bundle` turns an export into a faster variant (optimized / int8 / fp16) behind a
gate on its predictions and decisions; presets take `device: auto|cpu|cuda` for training.
"""

from __future__ import annotations

import os

# Idle OpenMP threads spin only briefly before they sleep. libgomp's default spin (300,000 rounds) is fast
# on an idle machine but, when the cores are busy with other work, a spinning thread waits for a
# descheduled peer: 2-thread training ran 5-20x slower there than with 1 thread. OMP_WAIT_POLICY=PASSIVE
# (no spin) avoids that but halves LSTM training on an idle machine; 1,000 rounds run at 0.88-1.12x of the
# default on an idle machine and 2.3-28x of it with 6 busy processes beside the fit
# (benchmarks/bench_train_throughput.py, results/train_throughput.json).
# libgomp reads this once, when torch first loads it, so it is set here, before torch is imported; an
# OMP_WAIT_POLICY or GOMP_SPINCOUNT already in the environment wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from pipelines.config import SEQUENCE_ARCHITECTURES, TrainingConfig  # noqa: E402
from pipelines.models.sequence.base import SequenceModelError, SequenceRegressor  # noqa: E402
from pipelines.models.sequence.classifier import SequenceClassifier  # noqa: E402

__all__ = [
    "SEQUENCE_ARCHITECTURES",
    "SequenceClassifier",
    "SequenceModelError",
    "SequenceRegressor",
    "make_sequence_model",
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
    objective: str = "l2",
) -> Any:
    """A fresh (unfitted) sequence model or ensemble from `configs/models/<model_type>.yaml`.

    A shorthand for `pipelines.models.make_model` with a default training config.

    Args:
        model_type: lstm_attention | transformer | tft | mamba | ensemble.
        n_features: F of the windows.
        horizons: label horizons in candles (H outputs).
        training: the training config (the ensemble's LightGBM member reads `training.lightgbm`).
        configs_dir: configs directory; default `get_settings().configs_dir`.
        preset: preset name in that file; default the file's `default`.
        overrides: flat field overrides of the preset, e.g. {"max_epochs": 2}.
        objective: the task's training objective (l2 keeps the preset's loss; huber).
    """
    from pipelines.models import make_model

    return make_model(
        model_type,
        training or TrainingConfig(),
        n_features,
        horizons,
        preset=preset,
        overrides=overrides,
        objective=objective,
        configs_dir=configs_dir,
    )
