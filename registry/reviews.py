"""A/B reviews in MLflow: one run per review, past looks (the decision itself is `pipelines.review.decision`).

(Which version served when, with live metrics, joins the prediction log with outcomes: that is
`flows.review.served_history`; the registry only talks to MLflow.)

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
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from registry.client import RegistryError, ensure_experiment

if TYPE_CHECKING:  # annotations only: registry reads the results' attributes, it imports no pipeline step
    from pipelines.config import PromotionPolicy
    from pipelines.review.compare import ABResult
    from pipelines.review.decision import ReviewDecision

REVIEW_EXPERIMENT = "kairos-reviews"
REPORT_PATH = "review"


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
    run = client.create_run(
        exp_id,
        start_time=int(review_time_ms),
        run_name=f"{name} v{champion_version} vs v{challenger_version}",
        tags=tags,
    )
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
