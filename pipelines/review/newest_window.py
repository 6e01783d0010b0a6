"""Champion vs challenger on the same rows: the comparison the promotion policy reads.

The challenger's predictions on its newest test window are out-of-sample (walk-forward). The champion
was trained earlier; its predictions are out-of-sample only on rows after its training window ended, so
both are compared on exactly those rows, with the task's promotion metric (the point estimates) and a
paired one-sided test on the task's per-row loss (`pipelines.review.gates`): challenger against champion
(gate a) and against the best naive baseline (gate b), all on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.review.gates import PairedTest, best_baseline_test, paired_test, row_losses
from pipelines.tasks import Task
from pipelines.training.walk_forward import NewestWindow


@dataclass(frozen=True)
class WindowComparison:
    horizon: int
    metric: str  # the task's promotion metric, e.g. "accuracy" (returns) or "qlike" (volatility)
    higher_is_better: bool
    rows: int  # rows compared (both out-of-sample, realised label finite)
    challenger_score: float
    champion_score: float | None
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    baseline_score: float | None = None  # the best of the task's naive baselines on the same rows
    baseline_name: str | None = None
    # paired one-sided tests on the task's per-row loss over the same rows (None where there is no
    # champion / no baseline): champion loss - challenger loss, and best baseline loss - challenger loss
    test: PairedTest | None = None
    baseline_test: PairedTest | None = None


def compare_on_newest_window(
    newest: NewestWindow,
    horizons: list[int],
    horizon: int,
    champion_predictions: pd.DataFrame | None,
    champion_train_end: pd.Timestamp | None,
    *,
    task: Task,
    interval: str = "1m",
    cfg: Any = None,
    alpha: float = 0.05,
) -> WindowComparison:
    """The task's promotion metric for challenger and champion at `horizon`, on the newest-window rows
    both saw out-of-sample.

    Args:
        newest: the challenger's newest test window (open_times epoch ms, predictions/actuals [n, H]).
        horizons: the challenger's horizons (columns of predictions/actuals).
        horizon: the horizon the policy decides on.
        champion_predictions: frame with `open_time` (UTC) and `h{horizon}` columns from the champion bundle,
            or None when there is no champion yet.
        champion_train_end: last open_time of the champion's training window (rows after it are fresh).
        task: the registered model's task (its `promotion_metric` and `score`).
        interval, cfg: candle interval and `EvaluationConfig`, for metrics that need them.
        alpha: the policy's level (`PromotionPolicy.alpha`) for the paired tests' intervals.
    """
    if horizon not in horizons:
        raise ValueError(f"policy horizon {horizon} is not among the model's horizons {horizons}")
    j = horizons.index(horizon)
    times = pd.to_datetime(np.asarray(newest.open_times, dtype="int64"), unit="ms", utc=True)
    mask = np.isfinite(newest.actuals[:, j])
    if champion_train_end is not None:
        mask &= np.asarray(times > champion_train_end)
    pred_c, actual = newest.predictions[mask, j], newest.actuals[mask, j]
    sel = times[mask]

    def score(pred: np.ndarray) -> float:
        return (
            float(task.score(pred, actual, task.promotion_metric, horizon, interval=interval, cfg=cfg))
            if actual.size
            else float("nan")
        )

    champ_score, pred_champ = None, None
    if champion_predictions is not None:
        champ = champion_predictions.set_index("open_time")[f"h{horizon}"]
        pred_champ = champ.reindex(sel).to_numpy(dtype=float)
        both = np.isfinite(pred_champ)
        pred_c, actual, pred_champ, sel = pred_c[both], actual[both], pred_champ[both], sel[both]
        champ_score = score(pred_champ)
    rows = int(task.score(pred_c, actual, "n", horizon, interval=interval, cfg=cfg)) if actual.size else 0
    best_name, best = None, None
    keep = np.flatnonzero(mask)
    if champion_predictions is not None:
        keep = keep[both]
    base_losses = {}
    for who, fc in newest.baselines.items():
        value = score(task.baseline_column(np.asarray(fc)[keep], j, task.promotion_metric))
        if np.isfinite(value) and (best is None or (value > best) == task.higher_is_better):
            best_name, best = who, value
        base_losses[who] = row_losses(
            task, task.baseline_column(np.asarray(fc)[keep], j, task.review_loss), actual
        )
    loss_c = row_losses(task, pred_c, actual)
    test = (
        paired_test(
            row_losses(task, pred_champ, actual), loss_c, horizon=horizon, alpha=alpha, loss=task.review_loss
        )
        if pred_champ is not None
        else None
    )
    vs_base = (
        best_baseline_test(task, loss_c, base_losses, horizon=horizon, alpha=alpha, best=best_name)
        if best_name is not None
        else None
    )
    return WindowComparison(
        horizon=horizon,
        metric=task.promotion_metric,
        higher_is_better=task.higher_is_better,
        rows=rows,
        challenger_score=score(pred_c),
        champion_score=champ_score,
        baseline_score=best,
        baseline_name=best_name,
        test=test,
        baseline_test=vs_base[1] if vs_base else None,
        start=sel.min() if len(sel) else None,
        end=sel.max() if len(sel) else None,
    )


def training_end(manifest: Any) -> pd.Timestamp:
    """The last open_time (UTC) of a bundle's training window: its predictions after it are out-of-sample."""
    end = pd.Timestamp(manifest.training["end"])
    return end.tz_localize("UTC") if end.tzinfo is None else end


def champion_candle_range(
    newest: NewestWindow, manifest: Any, interval: str
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Candles a bundle needs to predict every newest-window row: its warm-up (+ window length) before the
    first row, through the last row."""
    from pipelines.contracts.schema import interval_delta

    times = pd.to_datetime(np.asarray(newest.open_times, dtype="int64"), unit="ms", utc=True)
    history = interval_delta(interval) * (manifest.feature_set.warmup + (manifest.sequence_length or 1) + 5)
    return times.min() - history, times.max()
