"""A/B reviews in MLflow: the review decision (pure), one run per review, past looks, served history.

Each review is one run in the experiment `kairos-reviews` with
- tags `kairos.kind=ab-review`, `kairos.model`, `review.champion_version`, `review.challenger_version`,
  `review.time_ms` (the review's clock, epoch ms: the time axis of the prediction log's `time`);
- params: mode, horizons, policy, decision and reason; metrics: `h{h}.<ABResult.metrics()>` and
  outcome counts; artifacts: `review/report.html` and its PNG figures.
Later reviews of the same (champion, challenger) pair pass the earlier review times to
`compare_arms(looks=...)`, so the always-valid sequential test knows every look taken.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from pipelines.review.compare import ABResult
from pipelines.config import PromotionPolicy
from registry.client import CHAMPION, RegistryError, ensure_experiment
from registry.history import served_intervals

REVIEW_EXPERIMENT = "kairos-reviews"
REPORT_PATH = "review"


@dataclass(frozen=True)
class ReviewDecision:
    """What the policy makes of one review; `reason` states the numbers in one line."""

    promote: bool
    reason: str
    horizon: int
    verdict: str  # ABResult.verdict at `horizon`, or "no experiment"
    lift_pp: float | None  # challenger - champion direction accuracy, percentage points
    p_value: float | None  # always-valid p-value
    n: int  # rows per arm with a known outcome at `horizon`


def decide_review(policy: PromotionPolicy, result: ABResult | None) -> ReviewDecision:
    """Apply configs/promotion.yaml to one review (pure).

    Promote only when, at `policy.horizon`, (1) each arm has >= `policy.min_samples` resolved rows,
    (2) the always-valid sequential test on the direction loss says "challenger better" at level
    `policy.alpha` (valid however many hourly reviews came before), and (3) the point estimate of
    the accuracy lift is >= `policy.min_lift_pp`. A significant lift below the minimum keeps the
    champion: the switch would not pay for itself.

    Args:
        policy: the promotion policy.
        result: `compare_arms(..., loss="direction", alpha=policy.alpha, min_samples=policy.min_samples)`
            at `policy.horizon`, or None when there is nothing to compare.
    """
    h = policy.horizon
    if result is None:
        return ReviewDecision(False, f"no champion/challenger outcomes at horizon {h} yet; nothing to decide",
                              h, "no experiment", None, None, 0)  # fmt: skip
    if result.horizon != h:
        raise RegistryError(
            f"decide_review got the horizon-{result.horizon} result; the policy decides at horizon {h}"
        )
    if result.loss != "direction":
        raise RegistryError(f"the promotion policy compares direction accuracy; got loss={result.loss!r}")
    n = int(result.sequential.n[-1])
    lift, p = float(result.accuracy_lift_pp), float(result.p_value)
    base = dict(horizon=h, verdict=result.verdict, lift_pp=lift, p_value=p, n=n)
    lo, hi = (100 * x for x in result.ci)
    level = f"{100 * (1 - policy.alpha):.0f}%"
    stats = f"lift {lift:+.2f} pp (always-valid {level} CI {lo:+.2f}..{hi:+.2f} pp, p={p:.3g}, n={n:,})"
    if n < policy.min_samples:
        return ReviewDecision(False, f"only {n:,} resolved rows per arm < min_samples {policy.min_samples:,}; "
                              "champion kept, review again later", **base)  # fmt: skip
    if result.verdict != "challenger better":
        why = "champion is better" if result.verdict == "champion better" else "no significant difference yet"
        return ReviewDecision(False, f"{why} at h{h}: {stats}; champion kept", **base)
    if lift < policy.min_lift_pp - 1e-9:
        return ReviewDecision(False, f"challenger significantly better at h{h} but {stats} < min lift "
                              f"{policy.min_lift_pp:.2f} pp; champion kept", **base)  # fmt: skip
    return ReviewDecision(True, f"challenger better at h{h}: {stats} >= min lift {policy.min_lift_pp:.2f} pp "
                          f"at alpha {policy.alpha}", **base)  # fmt: skip


def past_review_times(
    client: MlflowClient, name: str, champion_version: str, challenger_version: str
) -> list[int]:
    """Epoch-ms times of earlier reviews of this (champion, challenger) pair, oldest first."""
    exp = client.get_experiment_by_name(REVIEW_EXPERIMENT)
    if exp is None:
        return []
    if "'" in name:
        raise RegistryError(f"model name {name!r} contains a quote; use model_name() to build names")
    flt = (
        f"tags.`kairos.model` = '{name}' and tags.`review.champion_version` = '{champion_version}' "
        f"and tags.`review.challenger_version` = '{challenger_version}'"
    )
    out, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000, page_token=token)
        out += [int(r.data.tags["review.time_ms"]) for r in page if "review.time_ms" in r.data.tags]
        token = page.token
        if not token:
            return sorted(out)


def log_review(
    client: MlflowClient,
    *,
    name: str,
    champion_version: str,
    challenger_version: str,
    review_time_ms: int,
    report_dir: Path,
    results: dict[int, ABResult],
    decision: ReviewDecision,
    policy: PromotionPolicy,
    counts: dict[str, int],
) -> str:
    """Log one review as a run of `kairos-reviews` (report + figures as artifacts); returns the run id."""
    exp_id = ensure_experiment(client, REVIEW_EXPERIMENT)
    tags = {
        "kairos.kind": "ab-review",
        "kairos.model": name,
        "review.champion_version": str(champion_version),
        "review.challenger_version": str(challenger_version),
        "review.time_ms": str(int(review_time_ms)),
        "review.decision": "promote" if decision.promote else "keep",
    }
    run = client.create_run(exp_id, start_time=int(review_time_ms),
                            run_name=f"{name} v{champion_version} vs v{challenger_version}", tags=tags)  # fmt: skip
    run_id = run.info.run_id
    try:
        any_result = next(iter(results.values()), None)
        params = {
            "model": name,
            "mode": "none" if any_result is None else ("shadow" if any_result.paired else "split"),
            "horizons": ",".join(str(h) for h in sorted(results)),
            "method": "none" if any_result is None else any_result.method,
            "policy.horizon": str(policy.horizon),
            "policy.alpha": str(policy.alpha),
            "policy.min_samples": str(policy.min_samples),
            "policy.min_lift_pp": str(policy.min_lift_pp),
            "decision.reason": decision.reason[:5000],
        }
        now = int(time.time() * 1000)
        metrics = [Metric(f"outcomes.{k}", float(v), now, 0) for k, v in counts.items()]
        for h, res in sorted(results.items()):
            metrics += [Metric(f"h{h}.{k}", v, now, 0) for k, v in res.metrics().items() if math.isfinite(v)]
        metrics.append(Metric("decision.promote", float(decision.promote), now, 0))
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        client.log_artifacts(run_id, str(report_dir), REPORT_PATH)
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def tag_decision(client: MlflowClient, run_id: str, moved: list[str]) -> None:
    """Record on the review run which alias moves its decision made (history record ids)."""
    client.log_batch(run_id, tags=[RunTag("review.alias_moves", ",".join(moved) or "none")])


def _live_metrics(rows: pd.DataFrame, horizon: int, fee_bps: float) -> dict[str, float]:
    from pipelines.review.arms import ArmData, arm_metrics

    r = rows[rows["horizon"] == horizon].sort_values("time_ms", kind="mergesort")
    if len(r) < 2:
        return {"resolved": float(len(r))}
    arm = ArmData("live", r["prediction"].to_numpy(np.float64), r["realised"].to_numpy(np.float64),
                  r["time_ms"].to_numpy(np.int64), horizon)  # fmt: skip
    m = arm_metrics(arm, fee_bps=fee_bps)
    return {"resolved": float(m.n), "accuracy": m.accuracy, "accuracy_ci_low": m.accuracy_ci[0],
            "accuracy_ci_high": m.accuracy_ci[1], "ic": m.ic, "pnl_total_return": m.pnl_total_return}  # fmt: skip


def served_history(
    client: MlflowClient,
    name: str,
    predlog_dir: Path,
    store=None,
    *,
    horizon: int = 1,
    fee_bps: float = 1.0,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Which version served as champion when, with its live metrics from the prediction log.

    Call `registry.history.sync_external_moves` first to include moves made in the MLflow UI.

    Args:
        client: MLflow client.
        name: registered model name.
        predlog_dir: the serving prediction-log directory.
        store: a `CandleStore` for the outcomes; default the store of `KAIROS_HOME`.
        horizon: horizon of the live metrics.
        fee_bps: fee for the P&L.
        now: the clock for pending outcomes (default now).

    Returns:
        One row per champion interval: version, start, end (NaT = still serving), actor, reason,
        requests (champion records served), resolved, accuracy, accuracy_ci_low/high, ic,
        pnl_total_return (NaN where no outcome is known yet).
    """
    from pipelines.review.outcomes import join_outcomes, log_time_range
    from serving.predlog import read_prediction_log

    cols = ["version", "start", "end", "actor", "reason", "requests", "resolved", "accuracy",
            "accuracy_ci_low", "accuracy_ci_high", "ic", "pnl_total_return"]  # fmt: skip
    intervals = served_intervals(client, name, CHAMPION)
    log = read_prediction_log(Path(predlog_dir), name)
    log = log[(log["arm"] == "champion")] if len(log) else log
    resolved = None
    if len(log):
        interval = str(log["interval"].iloc[0])
        if store is None:
            from pipelines.contracts.settings import get_settings
            from pipelines.store import CandleStore

            store = CandleStore(get_settings().store_path)
        start, end = log_time_range(log, interval)
        candles = store.load(str(log["symbol"].iloc[0]), interval, start=start, end=end)
        resolved = join_outcomes(log, candles, interval=interval, now=now).resolved
    rows = []
    for iv in intervals:
        row = {"version": iv.version, "start": pd.Timestamp(iv.start), "actor": iv.actor, "reason": iv.reason,
               "end": pd.Timestamp(iv.end) if iv.end else pd.NaT, "requests": 0, "resolved": 0.0}  # fmt: skip
        if len(log):
            t = log["time"]
            sel = (log["version"].astype(str) == iv.version) & (t >= row["start"])
            if iv.end is not None:
                sel &= t < row["end"]
            row["requests"] = int(sel.sum())
            ids = set(log.loc[sel, "request_id"].astype(str))
            row.update(_live_metrics(resolved[resolved["request_id"].isin(ids)], horizon, fee_bps))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)
