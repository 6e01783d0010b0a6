"""The A/B review as a Prefect flow: log → outcomes → statistics → report → MLflow → policy.

`ab_review(model)` reviews the current champion vs challenger of one registered model (its hourly
deployment is in prefect.yaml). Flows only wire steps: outcomes (`pipelines.review.outcomes`), statistics
(`pipelines.review.abstats.compare_arms`), the report (`pipelines.review.report`), MLflow and the policy
(`registry.reviews`), alias moves (`registry.promotion.promote`, recorded like every move).
Retries are on I/O tasks only, for transient errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task

from flows.runtime import IO, PURE, Runtime
from pipelines.contracts.aliases import CHALLENGER, CHAMPION


@dataclass
class Statistics:
    """Per-horizon arms and results of one review; `skipped` holds horizon → why compare_arms refused."""

    arms: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    results: dict[int, Any] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)


def default_predlog_dir(rt: Runtime) -> Path:
    """Where `kairos serve` writes the prediction log: configs/serving.yaml, else $KAIROS_HOME/predictions."""
    from pipelines.contracts.predlog import default_log_dir

    return default_log_dir(rt.settings.configs_dir, rt.settings.home_abs)


@task(name="read-prediction-log", **IO)
def read_log(predlog_dir: str, name: str) -> pd.DataFrame:
    """The model's whole log; only records appended since the last review are parsed (the rest come from
    the columnar copies next to the log: `pipelines.review.watermark`)."""
    from prefect import get_run_logger

    from pipelines.review.watermark import read_log_incremental

    read = read_log_incremental(Path(predlog_dir), name)
    get_run_logger().info(
        "prediction log of %s: %d new records parsed, %d from the cache",
        name,
        read.records_parsed,
        read.records_cached,
    )
    return read.log


@task(name="registry-state", **IO)
def registry_state(name: str) -> dict[str, str]:
    from registry.history import sync_external_moves
    from registry.promotion import current_aliases

    client = Runtime.from_env().mlflow
    sync_external_moves(client, name)  # a champion moved in the MLflow UI is the champion reviewed
    return current_aliases(client, name)


@task(name="past-review-times", **IO)
def past_looks(name: str, champion: str, challenger: str) -> list[int]:
    from registry.reviews import past_review_times

    return past_review_times(Runtime.from_env().mlflow, name, champion, challenger)


def candles_with_minutes(store, symbols, interval: str, start: pd.Timestamp, end: pd.Timestamp):
    """The stored candles of `symbols` in [start, end], each joined with its trade minutes where stored
    (the whale task's outcomes read them), and the newest stored open_time per symbol."""
    frames, last = [], {}
    for sym in symbols:
        c = store.load(sym, interval, start=start, end=end)
        m = store.load_trade_minutes(sym, interval, start=start, end=end)
        frames.append(c.merge(m, on="open_time", how="left") if len(m) else c)
        last[sym] = store.last_open_time(sym, interval)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), last


def log_outcomes(log: pd.DataFrame, store, task_, now: pd.Timestamp | None = None):
    """Records of the prediction log joined with their realised outcomes from the candle store: the one
    join `kairos history` and the monitor's live performance share (the review runs the same steps as
    Prefect tasks). `log` holds one model's records (non-empty); returns `pipelines.review.outcomes.Outcomes`."""
    from pipelines.review.outcomes import join_outcomes, log_time_range

    interval = str(log["interval"].iloc[0])
    start, end = log_time_range(log, interval, task_.outcome_lookback)
    symbols = sorted(set(log["symbol"].astype(str)))
    candles, last = candles_with_minutes(store, symbols, interval, start, end)
    return join_outcomes(log, candles, interval=interval, now=now, store_last=last, task=task_)


@task(name="load-outcome-candles", **IO)
def load_candles(symbols: list[str], interval: str, start: pd.Timestamp, end: pd.Timestamp):
    return candles_with_minutes(Runtime.from_env().store(), symbols, interval, start, end)


@task(name="join-outcomes", **PURE)
def outcomes(
    log: pd.DataFrame, candles: pd.DataFrame, interval: str, now, store_last, task_name: str = "returns"
):
    from pipelines.review.outcomes import join_outcomes

    return join_outcomes(
        log,
        candles,
        interval=interval,
        now=now,
        store_last=store_last,
        task=Runtime.from_env().task(task_name),
    )


@task(name="ab-statistics", **PURE)
def statistics(
    resolved: pd.DataFrame,
    champion: str,
    challenger: str,
    horizons: list[int],
    looks: list[int],
    fee_bps: float,
    alpha: float,
    min_samples: int,
    task_name: str = "returns",
) -> Statistics:
    from pipelines.review.abstats import ABDataError, compare_arms
    from pipelines.review.outcomes import experiment_arms

    task_ = Runtime.from_env().task(task_name)
    out = Statistics()
    for h in horizons:
        exp = experiment_arms(resolved, champion, challenger, h)
        out.arms[h] = (exp.champion, exp.challenger)
        try:
            out.results[h] = compare_arms(
                exp.champion,
                exp.challenger,
                paired=exp.paired,
                fee_bps=fee_bps,
                alpha=alpha,
                looks=looks or None,
                loss=task_.row_loss,
                loss_name=task_.review_loss,
                min_samples=min_samples,
            )
        except ABDataError as e:
            out.skipped[h] = str(e)
    out.arms = {h: a for h, a in out.arms.items() if h in out.results}  # plot only what was tested
    return out


@task(name="baseline-gate", **PURE)
def baseline_gate(
    resolved: pd.DataFrame,
    log: pd.DataFrame,
    candles: pd.DataFrame,
    challenger: str,
    horizon: int,
    alpha: float,
    task_name: str = "returns",
):
    """The best naive baseline against the challenger on its reviewed rows (gate b): ((name, PairedTest) or
    None, why None)."""
    from pipelines.review.gates import best_baseline_test, review_baseline_losses
    from pipelines.tasks import TaskError

    task_ = Runtime.from_env().task(task_name)
    try:
        loss, base = review_baseline_losses(
            resolved, log, candles, task=task_, challenger_version=challenger, horizon=horizon
        )
    except TaskError as e:
        return None, str(e)
    best = best_baseline_test(task_, loss, base, horizon=horizon, alpha=alpha)
    return best, "" if best else f"no resolved challenger rows with a baseline forecast at h{horizon}"


@task(name="record-review-decision", **IO)
def record_decision(name: str, champion: str, challenger: str, decision, run_id: str, actor: str) -> str:
    """Record the review's decision, promoted or not, on the challenger version and in the decision history."""
    from registry.decisions import record

    facts = {**decision.record(), "review_run": run_id}
    client = Runtime.from_env().mlflow
    rec = record(client, name, challenger, facts, source="review", champion_version=champion, actor=actor)
    return rec.record_id


@task(name="write-review-report", **PURE)
def report(
    out_dir: str,
    name: str,
    champion: str,
    challenger: str,
    stats: Statistics,
    decision: str,
    counts: dict[str, int],
    fee_bps: float,
    missing_note: str,
    task_name: str = "returns",
):
    from pipelines.review.report import write_review_report

    task_ = Runtime.from_env().task(task_name)
    return write_review_report(
        Path(out_dir),
        model=name,
        champion_version=champion,
        challenger_version=challenger,
        arms=stats.arms,
        results=stats.results,
        decision=decision,
        counts=counts,
        fee_bps=fee_bps,
        missing_note=missing_note,
        loss=task_.row_loss,
        directional=task_.directional,
    )


@task(name="log-review", **IO)
def log_to_mlflow(
    name: str,
    champion: str,
    challenger: str,
    review_ms: int,
    report_dir: str,
    stats: Statistics,
    decision,
    counts: dict[str, int],
) -> str:
    from pipelines.tasks import task_of_model
    from registry.reviews import log_review

    rt = Runtime.from_env()
    return log_review(
        rt.mlflow,
        name=name,
        champion_version=champion,
        challenger_version=challenger,
        review_time_ms=review_ms,
        report_dir=Path(report_dir),
        results=stats.results,
        decision=decision,
        policy=rt.policy(task_of_model(name)),
        counts=counts,
    )


@task(name="apply-review-decision", **IO)
def apply(name: str, challenger: str, decision, run_id: str, actor: str) -> list[str]:
    """Move `champion` to the challenger (recorded; `challenger` alias cleared). Idempotent on retry."""
    from registry.promotion import promote
    from registry.reviews import tag_decision

    client = Runtime.from_env().mlflow
    moves = promote(client, name, challenger, reason=f"A/B review {run_id}: {decision.reason}", actor=actor)
    tag_decision(client, run_id, [m.record_id for m in moves if m.record_id])
    return [m.describe() for m in moves]


def _missing_note(missing: pd.DataFrame) -> str:
    if missing.empty:
        return ""
    first = pd.to_datetime(missing["target_time"].min(), unit="ms", utc=True)
    return f"(first missing candle near {first:%Y-%m-%d %H:%M} UTC: backfill the store)"


@flow(name="ab_review")
def ab_review(
    model: str,
    predlog_dir: str | None = None,
    apply_decision: bool = True,
    actor: str = "kairos-review",
    now: str | None = None,
) -> dict[str, Any]:
    """Review champion vs challenger of `model` and apply configs/promotion.yaml.

    Args:
        model: registered model name, e.g. "returns-FILUSDT-1m".
        predlog_dir: prediction-log directory (default: serving's, see `default_predlog_dir`).
        apply_decision: False = report only, never move an alias.
        actor: recorded on any alias move.
        now: the review clock (ISO-8601 UTC; default now): outcomes later than it are pending.

    Returns:
        {"champion", "challenger", "decision" (ReviewDecision), "report" (path), "run_id",
         "verdicts" (horizon → summary), "skipped", "counts", "moves" (descriptions)}.
    """
    from pipelines.review.decision import decide_review
    from pipelines.review.outcomes import log_time_range
    from pipelines.tasks import task_of_model

    rt = Runtime.from_env()
    task_name = task_of_model(model)
    loss = rt.task(task_name).review_loss
    policy, fee_bps = rt.policy(task_name), rt.training_config(task=task_name).evaluation.fee_bps
    clock = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    clock = clock.tz_localize("UTC") if clock.tzinfo is None else clock
    review_ms = int(clock.value // 1_000_000)
    aliases = registry_state(model)
    champ, chall = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    base = {
        "champion": champ,
        "challenger": chall,
        "report": None,
        "run_id": None,
        "verdicts": {},
        "skipped": {},
        "counts": {},
        "moves": [],
    }
    if champ is None or chall is None or champ == chall:
        decision = decide_review(policy, None, loss=loss)
        why = (
            f"{model} has no challenger next to its champion (aliases {aliases or 'none'}): nothing to review"
        )
        return {**base, "decision": replace(decision, reason=why)}
    log = read_log(str(predlog_dir or default_predlog_dir(rt)), model)
    pair = (
        log[
            ((log["arm"] == CHAMPION) & (log["version"].astype(str) == champ))
            | ((log["arm"] == CHALLENGER) & (log["version"].astype(str) == chall))
        ]
        if len(log)
        else log
    )
    # the outcomes read `outcome_lookback` candles before a request; the naive baselines `warmup`
    lookback = max(rt.task(task_name).outcome_lookback, rt.task(task_name).warmup)
    span = log_time_range(pair, str(pair["interval"].iloc[0]), lookback) if len(pair) else None
    if span is None:
        decision = decide_review(policy, None, loss=loss)
        why = f"no predictions of champion v{champ} / challenger v{chall} in the log yet; nothing to review"
        return {**base, "decision": replace(decision, reason=why)}
    symbols, interval = sorted(set(pair["symbol"].astype(str))), str(pair["interval"].iloc[0])
    candles, store_last = load_candles(symbols, interval, *span)
    oc = outcomes(pair, candles, interval, clock, store_last, task_name)
    horizons = sorted(set(int(h) for hs in pair["horizons"] for h in hs))
    looks = past_looks(model, champ, chall)
    stats = statistics(
        oc.resolved, champ, chall, horizons, looks, fee_bps, policy.alpha, policy.min_samples, task_name
    )
    vs_base, base_note = (None, "")
    if policy.require_beats_baselines and policy.horizon in stats.results:
        vs_base, base_note = baseline_gate(
            oc.resolved, pair, candles, chall, policy.horizon, policy.alpha, task_name
        )
    decision = decide_review(
        policy, stats.results.get(policy.horizon), loss=loss, baseline=vs_base, baseline_note=base_note
    )
    out_dir = rt.settings.home_abs / "reviews" / model / clock.strftime("%Y%m%dT%H%M%SZ")
    rep = report(
        str(out_dir),
        model,
        champ,
        chall,
        stats,
        decision.reason,
        oc.counts(),
        fee_bps,
        _missing_note(oc.missing),
        task_name,
    )
    run_id = log_to_mlflow(model, champ, chall, review_ms, str(out_dir), stats, decision, oc.counts())
    if decision.verdict != "no experiment":  # every decision on a real comparison is recorded
        record_decision(model, champ, chall, decision, run_id, actor)
    moves = apply(model, chall, decision, run_id, actor) if (decision.promote and apply_decision) else []
    return {
        **base,
        "decision": decision,
        "report": str(rep.html),
        "run_id": run_id,
        "counts": oc.counts(),
        "verdicts": {h: r.summary() for h, r in stats.results.items()},
        "skipped": stats.skipped,
        "moves": moves,
    }


def served_history(
    client,
    name: str,
    predlog_dir: Path,
    store=None,
    *,
    horizon: int | None = None,
    fee_bps: float = 1.0,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Which version served as champion when, with its live metrics from the prediction log.

    Wires the alias history (`registry.history.served_intervals`; call `sync_external_moves` first to
    include moves made in the MLflow UI), the prediction log, the outcomes from the candle store and
    the table (`pipelines.review.served.served_table`). A plain function, not a flow: `kairos history`
    is a read-only look-up.

    Args:
        client: MLflow client.
        name: registered model name.
        predlog_dir: the serving prediction-log directory.
        store: a `CandleStore` for the outcomes; default the store of `KAIROS_HOME`.
        horizon: horizon of the live metrics (default: the task's promotion horizon).
        fee_bps: fee for the P&L.
        now: the clock for pending outcomes (default now).

    Returns:
        One row per champion interval (columns `pipelines.review.served.COLUMNS`).
    """
    from pipelines.contracts.predlog import read_prediction_log
    from pipelines.review.served import served_table
    from pipelines.tasks import task_of_model
    from registry.history import served_intervals

    rt = Runtime.from_env()
    task_name = task_of_model(name)
    task_ = rt.task(task_name)
    horizon = horizon or rt.policy(task_name).horizon
    intervals = served_intervals(client, name, CHAMPION)
    log = read_prediction_log(Path(predlog_dir), name)
    log = log[log["arm"] == CHAMPION] if len(log) else log
    resolved = None
    if len(log):
        oc = log_outcomes(log, store if store is not None else rt.store(), task_, now)
        resolved = oc.resolved
    return served_table(intervals, log, resolved, horizon=horizon, fee_bps=fee_bps, task=task_)
