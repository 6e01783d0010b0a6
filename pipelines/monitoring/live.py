"""Live performance of a serving model: its task's metric on the latest outcomes, beside its backtest and
the naive baselines on the same rows; latency-budget violations per hour; how old the newest data is.

The outcomes come from the A/B review's join (`pipelines.review.outcomes.join_outcomes`, wired in
`flows.review.log_outcomes`), so `kairos monitor`, `kairos review` and `kairos history` judge a
prediction by the same realised value. Pure pandas/numpy: the flow loads the log, the candles and the
manifest.

Two comparisons, each made so that noise alone rarely fires it:
- live vs backtest: the live metric's own interval (direction accuracy: Wilson on the HAC effective
  sample size, as the review's `arm_metrics`) against the walk-forward interval in the manifest; the
  check fires only when the two do not overlap (the whole live interval on the wrong side);
- live vs the best naive rule on the same rows: a one-sided Diebold–Mariano test on the task's per-row
  loss (HAC variance), since a 24 h window of per-minute rows leaves the point estimates ±2–3 pp apart
  by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contracts.schema import interval_delta
from pipelines.review.fixed import diebold_mariano
from pipelines.review.served import live_metrics

HOUR_MS = 3_600_000
BASELINE_FIT_CANDLES = 1440  # candles before the live window that learning baselines (HAR-RV) fit on


@dataclass(frozen=True)
class LivePerformance:
    """One model version at one horizon over the live window.

    Attributes:
        version: registry version.
        horizon: candles ahead.
        metric: the task's promotion metric ("accuracy", "qlike", ...).
        name: the metric over the window, e.g. "accuracy_24h".
        higher_is_better: the metric's direction.
        rows: resolved outcomes judged.
        value: the metric on those rows (NaN below 2 rows).
        ci: its interval where the task has one (direction accuracy), else None.
        backtest: the walk-forward metric from the manifest (None when not recorded).
        backtest_ci: its interval (None when not recorded).
        baseline: the best naive rule on the same rows (None when no baseline could be scored).
        baseline_value: its metric on those rows.
        baseline_rows: rows both the model and the rule were judged on.
        p_worse: one-sided Diebold–Mariano p-value of "the model's loss exceeds the rule's" (NaN if untested).
    """

    version: str
    horizon: int
    metric: str
    name: str
    higher_is_better: bool
    rows: int
    value: float
    ci: tuple[float, float] | None
    backtest: float | None
    backtest_ci: tuple[float, float] | None
    baseline: str | None
    baseline_value: float
    baseline_rows: int
    p_worse: float

    @property
    def gap(self) -> float:
        """live - backtest, in metric units (NaN when either is unknown)."""
        return math.nan if self.backtest is None else self.value - self.backtest

    @property
    def beats_baseline(self) -> bool | None:
        """The point estimate beats the best naive rule on the same rows (None when none was scored)."""
        if self.baseline is None or not math.isfinite(self.baseline_value) or not math.isfinite(self.value):
            return None
        sign = 1.0 if self.higher_is_better else -1.0
        return sign * (self.value - self.baseline_value) > 0


def window_label(seconds: float) -> str:
    """24 h → "24h", 90 min → "90m", 2 d → "2d": the suffix of `accuracy_24h`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and not (unit == "d" and seconds == 86400):
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _ms(t: pd.Timestamp) -> int:
    return int(pd.Timestamp(t).value // 1_000_000)


def _backtest(
    metrics: dict[str, Any], h: int, metric: str
) -> tuple[float | None, tuple[float, float] | None]:
    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    value = num(f"model.h{h}.{metric}")
    lo, hi = num(f"model.h{h}.{metric}_lo"), num(f"model.h{h}.{metric}_hi")
    return value, (lo, hi) if lo is not None and hi is not None else None


def baseline_state(task: Any, candles: pd.DataFrame, before: pd.Timestamp) -> Any:
    """The task's baselines fitted on the candles whose labels were known before `before` (the live
    window's start): rolling rules need nothing, HAR-RV / the whale rules learn their coefficients."""
    if candles.empty:
        return task.fit_baselines(np.empty((0, 1)), np.empty((0, len(task.horizons))))
    A = np.asarray(task.frame_baseline_inputs(candles), float)
    Y = np.asarray(task.frame_labels(candles), float)
    t = pd.to_datetime(candles["open_time"], utc=True)
    known = (t + max(task.horizons) * interval_delta(str(candles["interval"].iloc[0]))) < before
    rows = known.to_numpy() & np.isfinite(A).all(axis=1) & np.isfinite(Y).all(axis=1)
    return task.fit_baselines(A[rows], Y[rows])


def _baseline_rows(
    task: Any, candles: pd.DataFrame, open_time_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index of each row's candle in `candles` (-1 where absent) and the baseline inputs of `candles`."""
    if candles.empty:
        return np.full(open_time_ms.size, -1), np.empty((0, 1))
    times = pd.to_datetime(candles["open_time"], utc=True).astype("datetime64[ms, UTC]").astype("int64")
    pos = pd.Index(times.to_numpy()).get_indexer(open_time_ms)
    return pos, np.asarray(task.frame_baseline_inputs(candles), float)


def _one_sided_worse(loss_model: np.ndarray, loss_base: np.ndarray, horizon: int) -> float:
    """P-value of H1 "the model's mean loss exceeds the rule's" (DM with HAC variance, HLN-corrected)."""
    if loss_model.size < 3:
        return math.nan
    dm = diebold_mariano(loss_model, loss_base, horizon=horizon)
    if not math.isfinite(dm.p_value):
        return 1.0 if dm.mean_diff <= 0 else 0.0
    return dm.p_value / 2 if dm.dm_hln > 0 else 1.0 - dm.p_value / 2


def _aligned_loss(task: Any, pred: np.ndarray, realised: np.ndarray) -> np.ndarray:
    """The task's per-row loss laid back on all n rows (NaN where the loss is undefined)."""
    loss, keep = task.row_loss(pred, realised)
    out = np.full(realised.size, np.nan)
    out[np.asarray(keep, bool)] = np.asarray(loss, float)
    return out


def live_performance(
    resolved: pd.DataFrame,
    candles: pd.DataFrame,
    *,
    task: Any,
    version: str,
    manifest_metrics: dict[str, Any],
    start: pd.Timestamp,
    end: pd.Timestamp,
    fee_bps: float = 1.0,
    baselines: Any = None,
) -> list[LivePerformance]:
    """The version's live metric per horizon over the predictions made in [start, end).

    Args:
        resolved: `Outcomes.resolved` of the prediction log (`pipelines.review.outcomes.LONG_COLUMNS`).
        candles: stored candles covering the window's prediction candles (baselines read them).
        task: the model's task at the manifest's horizons.
        version: the registry version judged (its rows, any arm).
        manifest_metrics: `Manifest.metrics` of that version (the walk-forward summary).
        start, end: the live window (request times), UTC.
        fee_bps: fee of the P&L figures `live_metrics` also reports.
        baselines: `baseline_state(...)` (default: fitted on `candles` before `start`).

    Returns:
        One LivePerformance per horizon of the task.
    """
    metric, sign = task.promotion_metric, 1.0 if task.higher_is_better else -1.0
    name = f"{metric}_{window_label((end - start).total_seconds())}"
    state = baseline_state(task, candles, start) if baselines is None else baselines
    lo_ms, hi_ms = _ms(start), _ms(end)
    mine = resolved[
        (resolved["version"].astype(str) == str(version))
        & (resolved["time_ms"] >= lo_ms)
        & (resolved["time_ms"] < hi_ms)
    ]
    out = []
    for j, h in enumerate(task.horizons):
        rows = (
            mine[mine["horizon"] == h]
            .drop_duplicates("request_id")
            .sort_values(["time_ms", "request_id"], kind="mergesort")
        )
        m = live_metrics(rows, h, fee_bps, task)
        value = float(m.get("value", math.nan))
        ci = None
        if metric == "accuracy" and "accuracy_ci_low" in m:
            ci = (float(m["accuracy_ci_low"]), float(m["accuracy_ci_high"]))
        bt, bt_ci = _backtest(manifest_metrics, h, metric)
        best, best_value, both, p = None, math.nan, 0, math.nan
        if len(rows) >= 2:
            pred = rows["prediction"].to_numpy(np.float64)
            real = rows["realised"].to_numpy(np.float64)
            pos, A = _baseline_rows(task, candles, rows["open_time"].to_numpy(np.int64))
            ok = pos >= 0
            if ok.any():
                ok[ok] = np.isfinite(A[pos[ok]]).all(axis=1)
            if ok.sum() >= 2:
                forecasts = task.baseline_forecasts(state, A[pos[ok]])
                scored = []
                for who in task.baselines:
                    col = task.baseline_column(forecasts[who], j, metric)
                    v = task.score(col, real[ok], metric, h, interval="1m", cfg=None)
                    if math.isfinite(v):
                        scored.append((v, who))
                if scored:
                    best_value, best = max(scored, key=lambda vw: sign * vw[0])
                    col = task.baseline_column(forecasts[best], j, task.review_loss)
                    lm = _aligned_loss(task, pred[ok], real[ok])
                    lb = _aligned_loss(task, col, real[ok])
                    keep = np.isfinite(lm) & np.isfinite(lb)
                    both = int(keep.sum())
                    p = _one_sided_worse(lm[keep], lb[keep], h)
        out.append(
            LivePerformance(
                version=str(version),
                horizon=int(h),
                metric=metric,
                name=name,
                higher_is_better=bool(task.higher_is_better),
                rows=int(len(rows)),
                value=value,
                ci=ci,
                backtest=bt,
                backtest_ci=bt_ci,
                baseline=best,
                baseline_value=float(best_value),
                baseline_rows=both,
                p_worse=float(p),
            )
        )
    return out


def latency_by_hour(log: pd.DataFrame, budget_us: float, end: pd.Timestamp, hours: int) -> pd.DataFrame:
    """Predictions and latency-budget violations (`latency_us` > budget) in each of the `hours` hours
    before `end` (sliding hours ending at `end`, oldest first).

    Returns:
        Columns hour_start (UTC), predictions, violations, p99_us (NaN for an empty hour).
    """
    end_ms = _ms(end)
    starts = [end_ms - k * HOUR_MS for k in range(hours, 0, -1)]
    if log.empty or "latency_us" not in log:
        t = np.empty(0, np.int64)
        lat = np.empty(0)
    else:
        t = pd.to_datetime(log["time"], utc=True).astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        lat = pd.to_numeric(log["latency_us"], errors="coerce").to_numpy(np.float64)
    rows = []
    for s in starts:
        sel = (t >= s) & (t < s + HOUR_MS)
        x = lat[sel]
        x = x[np.isfinite(x)]
        rows.append(
            {
                "hour_start": pd.Timestamp(s, unit="ms", tz="UTC"),
                "predictions": int(sel.sum()),
                "violations": int((x > budget_us).sum()),
                "p99_us": float(np.quantile(x, 0.99)) if x.size else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["hour_start", "predictions", "violations", "p99_us"])


def prediction_age_s(log: pd.DataFrame, now: pd.Timestamp) -> float:
    """Seconds since the newest prediction in `log` (inf when there is none)."""
    if log.empty:
        return math.inf
    return float((pd.Timestamp(now) - pd.to_datetime(log["time"], utc=True).max()).total_seconds())


def data_age_s(last_open_time: pd.Timestamp | None, interval: str, now: pd.Timestamp) -> float:
    """Seconds since the newest stored candle closed (inf when nothing is stored)."""
    if last_open_time is None:
        return math.inf
    closed = pd.Timestamp(last_open_time) + interval_delta(interval)
    return float((pd.Timestamp(now) - closed).total_seconds())
