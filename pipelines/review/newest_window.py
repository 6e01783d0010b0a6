"""Champion vs challenger on the same rows: the comparison the promotion policy reads.

The challenger's predictions on its newest test window are out-of-sample (walk-forward). The champion
was trained earlier; its predictions are out-of-sample only on rows after its training window ended, so
both are compared on exactly those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.training.walk_forward import NewestWindow


@dataclass(frozen=True)
class WindowComparison:
    horizon: int
    rows: int  # rows compared (both out-of-sample, realised return != 0)
    challenger_accuracy: float
    champion_accuracy: float | None
    start: pd.Timestamp | None
    end: pd.Timestamp | None


def direction_hits(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Boolean hits on rows with a non-zero realised return (flat candles have no direction)."""
    keep = np.isfinite(pred) & np.isfinite(actual) & (actual != 0)
    return (np.sign(pred[keep]) == np.sign(actual[keep]))


def compare_on_newest_window(
    newest: NewestWindow,
    horizons: list[int],
    horizon: int,
    champion_predictions: pd.DataFrame | None,
    champion_train_end: pd.Timestamp | None,
) -> WindowComparison:
    """Accuracy of challenger and champion at `horizon` on the newest-window rows both saw out-of-sample.

    Args:
        newest: the challenger's newest test window (open_times epoch ms, predictions/actuals [n, H]).
        horizons: the challenger's horizons (columns of predictions/actuals).
        horizon: the horizon the policy decides on.
        champion_predictions: frame with `open_time` (UTC) and `h{horizon}` columns from the champion bundle,
            or None when there is no champion yet.
        champion_train_end: last open_time of the champion's training window (rows after it are fresh).
    """
    if horizon not in horizons:
        raise ValueError(f"policy horizon {horizon} is not among the model's horizons {horizons}")
    j = horizons.index(horizon)
    times = pd.to_datetime(np.asarray(newest.open_times, dtype="int64"), unit="ms", utc=True)
    mask = np.ones(len(times), dtype=bool)
    if champion_train_end is not None:
        mask &= np.asarray(times > champion_train_end)
    pred_c, actual = newest.predictions[mask, j], newest.actuals[mask, j]
    champ_acc = None
    if champion_predictions is not None:
        champ = champion_predictions.set_index("open_time")[f"h{horizon}"]
        pred_champ = champ.reindex(times[mask]).to_numpy(dtype=float)
        both = np.isfinite(pred_champ)
        pred_c, actual, pred_champ = pred_c[both], actual[both], pred_champ[both]
        hits_champ = direction_hits(pred_champ, actual)
        champ_acc = float(hits_champ.mean()) if hits_champ.size else float("nan")
    hits = direction_hits(pred_c, actual)
    sel = times[mask]
    return WindowComparison(
        horizon=horizon,
        rows=int(hits.size),
        challenger_accuracy=float(hits.mean()) if hits.size else float("nan"),
        champion_accuracy=champ_acc,
        start=sel.min() if len(sel) else None,
        end=sel.max() if len(sel) else None,
    )
