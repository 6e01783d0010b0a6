"""Promotion decisions: every one, promoted or not, recorded with its numbers in the MLflow tracking store.

Two places, written together by `record`:
- the judged model version's tags `promotion.<fact>` (the newest decision about that version, read in the
  MLflow UI next to the version);
- one run per decision in the experiment `kairos-promotion-decisions`: the history `kairos history`
  prints. Params (immutable once logged: an audit log) hold the model, the version judged, the champion it
  was judged against, where the decision came from (`daily`: the newest-window comparison of the retrain
  loop, `review`: an A/B review, `first-version`: a first version made champion at registration), the
  verdict, the failed gates, the reason, the test and the actor; metrics hold the numbers (scores, lift,
  the paired test's statistic, p-value and interval, rows, the comparison with the best baseline).

The alias moves stay in their own experiment (`registry.history`, one run per move), so rollback and
"which version served when" read them unchanged; a refused decision moves no alias, and is found here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus

from registry.client import RegistryError, ensure_experiment
from registry.history import require_actor

DECISION_EXPERIMENT = "kairos-promotion-decisions"
SOURCES = ("daily", "review", "first-version")
_MAX_TEXT = 5000  # chars: model-version tag values hold 5000, params 6000
# facts also written on the version as `promotion.<fact>` tags (one request each: the headline numbers)
TAGGED = (
    "decision", "reason", "failed_gates", "baseline", "rows", "lift", "test.diff", "test.ci_low",
    "test.ci_high", "test.p_value", "baseline_test.diff", "baseline_test.p_value",
)  # fmt: skip


@dataclass(frozen=True)
class DecisionRecord:
    """One recorded decision about `version` of `model`."""

    model: str
    version: str
    champion_version: str | None  # the champion it was judged against (None: first version)
    source: str  # one of SOURCES
    decision: str  # "promote" | "keep"
    reason: str
    actor: str
    time: datetime  # UTC
    params: dict[str, str] = field(
        default_factory=dict
    )  # every text fact (failed_gates, test, baseline, ...)
    metrics: dict[str, float] = field(default_factory=dict)  # the numbers (test.p_value, lift, rows, ...)
    record_id: str | None = None

    @property
    def failed_gates(self) -> str:
        return self.params.get("failed_gates", "none")

    def describe(self) -> str:
        when = f"{self.time:%Y-%m-%d %H:%M:%S} UTC"
        against = f" vs champion v{self.champion_version}" if self.champion_version else ""
        return f"{when} {self.model} v{self.version}{against} [{self.source}] {self.decision}: {self.reason}"


def _split(facts: Mapping[str, str | float]) -> tuple[dict[str, str], dict[str, float]]:
    params, metrics = {}, {}
    for k, v in facts.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            params[k] = str(v)[:_MAX_TEXT] or "none"
        elif math.isfinite(float(v)):  # MLflow stores NaN, but a missing number reads clearer as absent
            metrics[k] = float(v)
    return params, metrics


def record(
    client: MlflowClient,
    name: str,
    version: str,
    facts: Mapping[str, str | float],
    *,
    source: str,
    champion_version: str | None,
    actor: str,
) -> DecisionRecord:
    """Write one decision: the version's `promotion.*` tags and a run in `kairos-promotion-decisions`.

    Args:
        facts: `Decision.record()` / `ReviewDecision.record()`: str values become params (and tags), numbers
            metrics (and tags); must hold "decision" and "reason".
        source: "daily", "review" or "first-version".
        champion_version: the champion the version was judged against (None for a first version).
        actor: who or what decided (e.g. "kairos-promote").
    """
    require_actor(actor)
    if source not in SOURCES:
        raise RegistryError(f"decision source must be one of {SOURCES}, got {source!r}")
    missing = [k for k in ("decision", "reason") if k not in facts]
    if missing:
        raise RegistryError(f"a decision record needs {missing}; pass Decision.record()")
    version = str(version)
    params, metrics = _split(facts)
    for k, v in {**params, **{m: f"{x:.6g}" for m, x in metrics.items()}}.items():
        if k in TAGGED:
            client.set_model_version_tag(name, version, f"promotion.{k}", v)
    client.set_model_version_tag(name, version, "promotion.source", source)
    now_ms = int(time.time() * 1000)
    exp_id = ensure_experiment(client, DECISION_EXPERIMENT)
    run = client.create_run(
        exp_id,
        start_time=now_ms,
        run_name=f"{name} v{version} {params['decision']} ({source})",
        tags={"kairos.kind": "promotion-decision", "kairos.model": name},
    )
    meta = {
        "model": name,
        "version": version,
        "champion_version": "none" if champion_version is None else str(champion_version),
        "source": source,
        "actor": actor,
        "time_utc": datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="milliseconds"),
    }
    all_params = {**params, **meta}
    client.log_batch(
        run.info.run_id,
        params=[Param(k, v) for k, v in all_params.items()],
        metrics=[Metric(k, v, now_ms, 0) for k, v in metrics.items()],
    )
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=now_ms)
    client.set_model_version_tag(name, version, "promotion.record", run.info.run_id)
    return DecisionRecord(
        name,
        version,
        None if champion_version is None else str(champion_version),
        source,
        params["decision"],
        params["reason"],
        actor,
        datetime.fromtimestamp(now_ms / 1000, tz=UTC),
        all_params,
        metrics,
        run.info.run_id,
    )


def _to_record(run) -> DecisionRecord:
    p = dict(run.data.params)
    champ = p.get("champion_version")
    return DecisionRecord(
        model=p["model"],
        version=p["version"],
        champion_version=None if champ in (None, "none") else champ,
        source=p.get("source", ""),
        decision=p.get("decision", ""),
        reason=p.get("reason", ""),
        actor=p.get("actor", ""),
        time=datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
        params=p,
        metrics=dict(run.data.metrics),
        record_id=run.info.run_id,
    )


def decisions(client: MlflowClient, name: str) -> list[DecisionRecord]:
    """Every recorded decision about model `name`, oldest first (empty when none was recorded)."""
    if "'" in name:
        raise RegistryError(f"model name {name!r} contains a quote; use model_name() to build names")
    exp = client.get_experiment_by_name(DECISION_EXPERIMENT)
    if exp is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"params.model = '{name}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return [_to_record(r) for r in runs]


def has_decision(client: MlflowClient, name: str, version: str) -> bool:
    """Whether a decision about `version` was recorded (its `promotion.decision` tag is set)."""
    return "promotion.decision" in (client.get_model_version(name, str(version)).tags or {})
