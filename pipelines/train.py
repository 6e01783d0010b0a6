"""Walk-forward training of one model for one symbol: the pure core of `kairos train`.

`train_walk_forward(candles, cfg)` → features + labels → folds (purged) → per-fold fit/predict →
metrics beside naive baselines → final fit on the newest window → ONNX export → parity check →
`TrainResult` (everything the registry logs, and the bundle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.bundle import Manifest


@dataclass
class NewestWindow:
    """The newest test window: what the promotion policy compares champion and challenger on."""

    open_times: np.ndarray  # int64 epoch ms of the rows, shape (n,)
    predictions: np.ndarray  # float, (n, H): the model's out-of-sample predictions
    actuals: np.ndarray  # float, (n, H): realised log returns


@dataclass
class TrainResult:
    model_type: str
    symbol: str
    interval: str
    feature_names: list[str]
    horizons: list[int]
    params: dict[str, Any]  # model hyperparameters, flat
    fold_metrics: list[dict[str, float]]  # per fold, flat "{who}.h{h}.{metric}" (who: model|always_up|persistence|reversal)
    summary_metrics: dict[str, float]  # overall (all test rows pooled), same flat keys
    report: dict[str, Any]  # nested: {who: {"h1": {metric: value, ...}}} for tables
    newest_window: NewestWindow
    data_window: dict[str, Any]  # {"start": iso, "end": iso, "rows": int, "data_hash": sha256}
    onnx_bytes: bytes
    manifest: Manifest
    parity_max_abs: float
    gates: dict[str, bool] = field(default_factory=dict)  # {"parity": True, ...}
