"""Outcomes: join the prediction log with the realised outcomes from the candle store.

A log record made at candle t (its `open_time`) predicts, per horizon h, the task's label (for
returns ln(close[t+h] / close[t]); `pipelines.tasks.<task>.realised`). Its outcome is known once
candle t+h has closed and is in the store. Each (record, horizon) lands in exactly one of three frames:

- `resolved`: the realised return is known;
- `pending`: candle t+h has not closed yet, or the store has not caught up with it: the row is kept
  (the log is append-only and every review re-joins the whole log), so the next review resolves it;
- `missing`: the horizon has elapsed and the store covers that time, but candle t or t+h is absent
  (a gap): reported, so someone can backfill the store; a later review picks it up once filled.

The review is therefore a pure function of (log, store): nothing is ever dropped or marked done.
Pure pandas/numpy; no I/O (the flow reads the log and loads the candles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.contracts.errors import KairosError
from pipelines.contracts.schema import interval_delta
from pipelines.review.arms import ArmData
from pipelines.tasks import DEFAULT_TASK, Task, get_task

# Columns of the long (record x horizon) frames.
LONG_COLUMNS = [
    "request_id",
    "time",
    "time_ms",
    "open_time",
    "arm",
    "version",
    "served",
    "mode",
    "horizon",
    "prediction",
    "target_time",
    "realised",
]
_LOG_REQUIRED = [
    "request_id",
    "time",
    "symbol",
    "interval",
    "open_time",
    "arm",
    "version",
    "horizons",
    "predictions",
]


class OutcomeError(KairosError):
    """The prediction log or the candles cannot be joined (wrong columns, mixed symbols)."""


@dataclass(frozen=True)
class Outcomes:
    """Result of `join_outcomes`: long frames with `LONG_COLUMNS` (realised NaN where unknown).

    Attributes:
        resolved: rows with a realised return.
        pending: rows whose horizon has not elapsed or whose target candle the store lacks yet.
        missing: rows whose base or target candle is absent inside the store's covered range.
        known_until: open_time (UTC) of the newest candle whose close is known (store and clock).
    """

    resolved: pd.DataFrame
    pending: pd.DataFrame
    missing: pd.DataFrame
    known_until: pd.Timestamp | None

    def counts(self) -> dict[str, int]:
        """Rows (record x horizon) per state, for the report and MLflow."""
        return {"resolved": len(self.resolved), "pending": len(self.pending), "missing": len(self.missing)}


def _to_ms(times: pd.Series) -> np.ndarray:
    """tz-aware datetimes → int64 epoch milliseconds."""
    return pd.to_datetime(times, utc=True).astype("datetime64[ms, UTC]").astype("int64").to_numpy()


def _check_log(log: pd.DataFrame) -> None:
    missing = [c for c in _LOG_REQUIRED if c not in log.columns]
    if missing:
        raise OutcomeError(
            f"prediction log frame lacks columns {missing}; "
            "read it with pipelines.contracts.predlog.read_prediction_log"
        )
    values = sorted(set(log["interval"].astype(str)))
    if len(values) > 1:
        raise OutcomeError(
            f"prediction log mixes intervals {values}; review one registered model (one interval)"
        )


def explode_log(log: pd.DataFrame) -> pd.DataFrame:
    """One row per (record, horizon): the log's list columns `horizons`/`predictions` unrolled.

    Returns a frame with the `LONG_COLUMNS` except `target_time`/`realised`, sorted by request time.
    """
    _check_log(log)
    if log.empty:
        return pd.DataFrame({c: [] for c in LONG_COLUMNS if c not in ("target_time", "realised")})
    df = log.loc[:, [c for c in log.columns if c in (*_LOG_REQUIRED, "served", "mode")]].copy()
    bad = df["horizons"].map(len) != df["predictions"].map(len)
    if bad.any():
        raise OutcomeError(
            f"{int(bad.sum())} log record(s) have different numbers of horizons and predictions; "
            "the log is corrupt: check the serving version that wrote it"
        )
    df = df.explode(["horizons", "predictions"], ignore_index=True)
    out = pd.DataFrame(
        {
            "request_id": df["request_id"].astype(str),
            "time": pd.to_datetime(df["time"], utc=True),
            "time_ms": _to_ms(df["time"]),
            "open_time": df["open_time"].astype("int64"),
            "arm": df["arm"].astype(str),
            "version": df["version"].astype(str),
            "served": df["served"].astype(bool) if "served" in df else True,
            "mode": df["mode"].astype(str) if "mode" in df else "unknown",
            "horizon": df["horizons"].astype("int64"),
            "prediction": df["predictions"].astype("float64"),
        }
    )
    return out.sort_values(["time_ms", "request_id", "arm", "horizon"], kind="mergesort", ignore_index=True)


def join_outcomes(
    log: pd.DataFrame,
    candles: pd.DataFrame,
    *,
    interval: str,
    now: pd.Timestamp | None = None,
    store_last: pd.Timestamp | None = None,
    task: Task | None = None,
) -> Outcomes:
    """Attach the realised outcome (the task's label, e.g. ln(close[t+h]/close[t])) to every (record,
    horizon) it is known for.

    Args:
        log: the prediction log (`pipelines.contracts.predlog.read_prediction_log`), one model.
        candles: candle frame of the log's symbol(s) at its interval covering [min open_time - the task's
            outcome lookback, max open_time + max h] (extra rows are fine), with the task's
            `outcome_columns` (e.g. trade minutes joined for whale); `open_time` tz-aware UTC. A log of
            several symbols (a model over a universe) is joined symbol by symbol (`candles` then has
            a `symbol` column).
        interval: candle interval, e.g. "1m" (sets the candle length Δ: target = t + h·Δ).
        now: the review's clock (UTC); default the current time. A candle opened at s is closed
            once now >= s + Δ.
        store_last: open_time of the store's newest candle of the series (per symbol: a dict); default
            the newest in `candles`. Targets after it are pending (the store has not caught up), not missing.
        task: the model's task (`Task.realised` reads the candle grid); default returns.

    Returns:
        Outcomes with resolved / pending / missing long frames (`LONG_COLUMNS`).

    Raises:
        OutcomeError: the log lacks columns or mixes symbols/intervals.
    """
    _check_log(log)
    task = task or get_task(DEFAULT_TASK, (1,))
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    symbols = sorted(set(log["symbol"].astype(str))) if len(log) else []
    if len(symbols) > 1:  # a model over a universe: each symbol against its own candles
        parts = []
        for sym in symbols:
            mine = candles[candles["symbol"].astype(str) == sym] if "symbol" in candles else candles
            last = store_last.get(sym) if isinstance(store_last, dict) else store_last
            parts.append(
                join_outcomes(
                    log[log["symbol"].astype(str) == sym],
                    mine,
                    interval=interval,
                    now=now,
                    store_last=last,
                    task=task,
                )
            )
        cat = [
            pd.concat([getattr(p, k) for p in parts], ignore_index=True).sort_values(
                ["time_ms", "request_id", "arm", "horizon"], kind="mergesort", ignore_index=True
            )
            for k in ("resolved", "pending", "missing")
        ]
        known = [p.known_until for p in parts if p.known_until is not None]
        return Outcomes(*cat, min(known) if known else None)
    if isinstance(store_last, dict):
        store_last = store_last.get(symbols[0]) if symbols else None
    delta = interval_delta(interval)
    delta_ms = int(delta / pd.Timedelta(milliseconds=1))
    rows = explode_log(log)
    cols = list(task.outcome_columns)
    lacking = [c for c in cols if c not in candles.columns]
    if lacking and not candles.empty:
        raise OutcomeError(
            f"task {task.name} realises outcomes from {cols}; the candle frame lacks {lacking} "
            "(join the store's trade minutes: kairos ingest trades)"
        )
    if candles.empty:
        values = pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
    else:
        values = pd.DataFrame(
            {c: candles[c].to_numpy(np.float64) for c in cols}, index=_to_ms(candles["open_time"])
        )
        values = values[~values.index.duplicated(keep="last")]
    if store_last is None and len(values):
        store_last = pd.Timestamp(int(values.index.max()), unit="ms", tz="UTC")
    last_closed = now - delta  # open_time of the newest candle whose close is final
    known_until = last_closed if store_last is None else min(last_closed, pd.Timestamp(store_last))
    known_ms = int((known_until - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(milliseconds=1))

    rows["target_time"] = rows["open_time"].to_numpy(np.int64) + rows["horizon"].to_numpy(np.int64) * delta_ms
    realised = _realise(task, values, rows, delta_ms)
    rows["realised"] = realised
    if store_last is None:  # an empty store: nothing can be known yet
        elapsed = np.zeros(len(rows), dtype=bool)
    else:
        elapsed = rows["target_time"].to_numpy() <= known_ms
    have = np.isfinite(realised)
    resolved = rows[elapsed & have].reset_index(drop=True)
    pending = rows[~elapsed].assign(realised=np.nan).reset_index(drop=True)
    missing = rows[elapsed & ~have].assign(realised=np.nan).reset_index(drop=True)
    return Outcomes(resolved[LONG_COLUMNS], pending[LONG_COLUMNS], missing[LONG_COLUMNS], known_until)


def _realise(task: Task, values: pd.DataFrame, rows: pd.DataFrame, delta_ms: int) -> np.ndarray:
    """The task's realised value per (record, horizon), NaN where a candle it reads is absent.

    `values` (epoch ms → the task's outcome columns) is laid on a regular grid of step Δ (NaN where a
    candle is missing), so a task reads any candles between t and t + h (volatility needs every one of
    them, returns two, whale the event minutes of all h).
    """
    out = np.full(len(rows), np.nan)
    if values.empty or rows.empty:
        return out
    t0 = int(values.index.min())
    offsets = values.index.to_numpy(np.int64) - t0
    on_grid = offsets % delta_ms == 0
    grid = {}
    for c in values.columns:
        g = np.full(int(offsets.max() // delta_ms) + 1, np.nan)
        g[offsets[on_grid] // delta_ms] = values[c].to_numpy(np.float64)[on_grid]
        grid[c] = g
    rel = rows["open_time"].to_numpy(np.int64) - t0
    base = np.where((rel >= 0) & (rel % delta_ms == 0), rel // delta_ms, -1)
    horizons = rows["horizon"].to_numpy(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for h in np.unique(horizons):
            m = horizons == h
            out[m] = task.realised_grid(grid, base[m], int(h))
    return out


@dataclass(frozen=True)
class Experiment:
    """One horizon of a champion-vs-challenger experiment, ready for `pipelines.review.abstats.compare_arms`."""

    horizon: int
    champion: ArmData
    challenger: ArmData
    paired: bool  # shadow traffic: both arms on the same requests


def experiment_arms(
    resolved: pd.DataFrame, champion_version: str, challenger_version: str, horizon: int
) -> Experiment:
    """Select one horizon's rows of (champion, version C) and (challenger, version K) as two arms.

    When requests were scored by both arms (shadow), only those requests are used, paired on the
    request id, and both arms get the champion's request time (the two records of one shadow
    request are stamped microseconds apart). Otherwise (split) each arm keeps its own rows.

    Args:
        resolved: `Outcomes.resolved`.
        champion_version: registry version that served as champion.
        challenger_version: registry version of the challenger.
        horizon: candles ahead.

    Returns:
        Experiment (arms may be empty; `compare_arms` then refuses with a clear message).
    """
    h = resolved[resolved["horizon"] == horizon]
    a = h[(h["arm"] == "champion") & (h["version"] == str(champion_version))]
    b = h[(h["arm"] == "challenger") & (h["version"] == str(challenger_version))]
    both = np.intersect1d(a["request_id"].to_numpy(str), b["request_id"].to_numpy(str))
    paired = both.size > 0
    if paired:
        a = a[a["request_id"].isin(both)].drop_duplicates("request_id")
        b = b[b["request_id"].isin(both)].drop_duplicates("request_id")
        j = a.merge(b, on="request_id", suffixes=("_a", "_b"))
        j = j.sort_values(["time_ms_a", "request_id"], kind="mergesort")
        t, real = j["time_ms_a"].to_numpy(np.int64), j["realised_a"].to_numpy(np.float64)
        pa, pb = j["prediction_a"].to_numpy(np.float64), j["prediction_b"].to_numpy(np.float64)
        champ = ArmData(f"champion v{champion_version}", pa, real, t, horizon)
        chall = ArmData(f"challenger v{challenger_version}", pb, real, t, horizon)
        return Experiment(horizon, champ, chall, True)

    def arm(df: pd.DataFrame, name: str) -> ArmData:
        df = df.sort_values(["time_ms", "request_id"], kind="mergesort")
        return ArmData(
            name,
            df["prediction"].to_numpy(np.float64),
            df["realised"].to_numpy(np.float64),
            df["time_ms"].to_numpy(np.int64),
            horizon,
        )

    return Experiment(
        horizon, arm(a, f"champion v{champion_version}"), arm(b, f"challenger v{challenger_version}"), False
    )


def log_time_range(
    log: pd.DataFrame, interval: str, lookback: int = 0
) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The candle range a join needs: [min open_time - lookback · Δ, max open_time + max horizon · Δ]
    (`lookback`: the task's `outcome_lookback`); None if empty."""
    if log.empty:
        return None
    delta = interval_delta(interval)
    max_h = max((max(hs) for hs in log["horizons"] if len(hs)), default=0)
    start = pd.Timestamp(int(log["open_time"].min()), unit="ms", tz="UTC") - lookback * delta
    end = pd.Timestamp(int(log["open_time"].max()), unit="ms", tz="UTC") + max_h * delta
    return start, end
