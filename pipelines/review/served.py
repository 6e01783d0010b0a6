"""Which version served as champion when, with its live metrics: the table of `kairos history`.

Pure: the served intervals come from the registry's alias history (`registry.history.served_intervals`),
the champion's records from the prediction log, their outcomes from `pipelines.review.outcomes`;
`flows.review.served_history` wires the three.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipelines.review.arms import ArmData, arm_metrics

COLUMNS = [
    "version",
    "start",
    "end",
    "actor",
    "reason",
    "requests",
    "resolved",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "ic",
    "pnl_total_return",
    "metric",  # the task's promotion metric ...
    "value",  # ... on the live outcomes
]


class Interval(Protocol):
    """A version's time holding `champion`: [start, end); end None = still serving."""

    version: str
    start: datetime
    end: datetime | None
    reason: str
    actor: str


def live_metrics(rows: pd.DataFrame, horizon: int, fee_bps: float, task: Any = None) -> dict[str, Any]:
    """The task's promotion metric (`metric`, `value`) of resolved outcome rows at `horizon`, and for
    signed-return tasks direction accuracy (with CI), IC and fee-aware P&L."""
    r = rows[rows["horizon"] == horizon].sort_values("time_ms", kind="mergesort")
    if len(r) < 2:
        return {"resolved": float(len(r))}
    out: dict[str, Any] = {}
    if task is not None:
        out = {
            "metric": task.promotion_metric,
            "value": task.score(
                r["prediction"].to_numpy(np.float64),
                r["realised"].to_numpy(np.float64),
                task.promotion_metric,
                horizon,
                interval="1m",
                cfg=None,
            ),
        }
        if not task.directional:
            return {"resolved": float(len(r)), **out}
    arm = ArmData(
        "live",
        r["prediction"].to_numpy(np.float64),
        r["realised"].to_numpy(np.float64),
        r["time_ms"].to_numpy(np.int64),
        horizon,
    )
    m = arm_metrics(arm, fee_bps=fee_bps)
    return {
        **out,
        "resolved": float(m.n),
        "accuracy": m.accuracy,
        "accuracy_ci_low": m.accuracy_ci[0],
        "accuracy_ci_high": m.accuracy_ci[1],
        "ic": m.ic,
        "pnl_total_return": m.pnl_total_return,
    }


def served_table(
    intervals: Iterable[Interval],
    log: pd.DataFrame,
    resolved: pd.DataFrame | None,
    *,
    horizon: int = 1,
    fee_bps: float = 1.0,
    task: Any = None,
) -> pd.DataFrame:
    """One row per champion interval with the live metrics of the records it served.

    Args:
        intervals: the champion's served intervals, oldest first.
        log: the prediction log's champion records (`pipelines.contracts.predlog.read_prediction_log`).
        resolved: `join_outcomes(log, ...).resolved` (None when the log is empty).
        horizon: horizon of the live metrics.
        fee_bps: fee for the P&L.
        task: the model's task (`pipelines.tasks`): its promotion metric fills `metric` / `value`.

    Returns:
        Columns `COLUMNS`: version, start, end (NaT = still serving), actor, reason, requests
        (champion records served), resolved, accuracy, accuracy_ci_low/high, ic, pnl_total_return
        (NaN where no outcome is known yet).
    """
    rows = []
    for iv in intervals:
        row = {
            "version": iv.version,
            "start": pd.Timestamp(iv.start),
            "actor": iv.actor,
            "reason": iv.reason,
            "end": pd.Timestamp(iv.end) if iv.end else pd.NaT,
            "requests": 0,
            "resolved": 0.0,
        }
        if len(log) and resolved is not None:
            t = log["time"]
            sel = (log["version"].astype(str) == iv.version) & (t >= row["start"])
            if iv.end is not None:
                sel &= t < row["end"]
            row["requests"] = int(sel.sum())
            ids = set(log.loc[sel, "request_id"].astype(str))
            row.update(live_metrics(resolved[resolved["request_id"].isin(ids)], horizon, fee_bps, task))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
