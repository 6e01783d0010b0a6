"""The one way a model is fitted on a fold, shared by walk-forward training and the tuner.

`fit_fold` fits on `[train_start, train_end)` minus a purged validation slice at its end
(`splits.validation_split`): the model sees the slice only for early stopping (deep models) or for
in-fold pruning callbacks (tuning). `model_inputs` turns feature rows into what a model reads,
so the tuner feeds every family exactly as training does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def fit_fold(
    model: Any,
    X: np.ndarray,
    Y: np.ndarray,
    train_start: int,
    train_end: int,
    purge: int,
    callbacks: Sequence[Any] | None = None,
) -> Any:
    """Fit `model` on rows [train_start, fit_end) and hand it the purged validation slice [val_start, train_end).

    Args:
        model: an unfitted model (`pipelines.models.base.ReturnsModel`).
        X: model inputs aligned with Y row for row: (n, F) rows or (n, T, F) windows.
        Y: (n, H) training targets.
        train_start, train_end: the fold's training range (end exclusive).
        purge: rows dropped between the fit rows and the validation slice (>= the longest horizon).
        callbacks: passed to `model.fit(..., callbacks=...)` when given (e.g. pruning callbacks from
            `ModelSpec.pruning`); models that take none are called without the keyword.

    Returns:
        The fitted model.
    """
    from pipelines.training.splits import validation_split

    fit_end, val_start = validation_split(train_start, train_end, purge)
    extra = {"callbacks": list(callbacks)} if callbacks else {}
    return model.fit(
        X[train_start:fit_end],
        Y[train_start:fit_end],
        X_val=X[val_start:train_end],
        Y_val=Y[val_start:train_end],
        **extra,
    )


def model_inputs(rows: np.ndarray, model: Any) -> tuple[np.ndarray, int]:
    """What `model` reads for each feature row, and the index of the first row that has an input.

    Tabular models read the rows themselves (offset 0); sequence models read the window of
    `model.sequence_length` rows ending on each row, so the first T-1 rows have none (offset T-1):
    input k belongs to row k + offset.

    Args:
        rows: float32 (n, F) feature rows, oldest first.
        model: a model whose `input_kind` is "tabular" or "sequence".
    """
    if getattr(model, "input_kind", "tabular") != "sequence":
        return rows, 0
    from pipelines.training.windows import sliding_windows

    T = int(model.sequence_length)
    return sliding_windows(rows, T), T - 1
