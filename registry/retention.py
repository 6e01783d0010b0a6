"""Retention of MLflow training runs: old runs are deleted, the runs that can still serve are kept.

A training run older than `max_age_days` is deleted unless it is behind
- a version holding an alias (champion, challenger) of any registered model, or
- one of the newest `keep_last` versions of its model (what `kairos rollback` may still want).
A deleted run's model version is deleted first, so no version ever points at artifacts about to go
(rollback skips versions deleted from the registry). Runs without a version (failed, or killed mid-export:
status RUNNING forever) go by the same age rule. The alias history (`kairos-alias-history`) and review runs
are never touched: they are the audit trail.

`delete_run` is MLflow's soft delete (the run leaves searches and the UI); `purge_deleted_runs` runs
`mlflow gc` on them to free their artifacts and rows. With a tracking server, run `mlflow gc` where its
database is reachable (it needs the backend store URI, not the server's).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import ViewType

from registry.client import RegistryError

TRAINING_EXPERIMENT = "kairos-training"
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class PrunedRun:
    """A training run deleted (or deletable, in a dry run), with the model version deleted with it."""

    run_id: str
    started_ms: int
    status: str
    model: str | None = None
    version: str | None = None

    def describe(self) -> str:
        what = f"{self.model} v{self.version}" if self.model else "no version"
        day = time.strftime("%Y-%m-%d", time.gmtime(self.started_ms / 1000))
        return f"run {self.run_id} ({self.status}, started {day}; {what})"


def _paged(fetch) -> list:
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _versions_by_run(client: MlflowClient, keep_last: int) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """run_id -> (model, version) of every registered version, and the run ids that must be kept."""
    by_run: dict[str, tuple[str, str]] = {}
    keep: set[str] = set()
    models = _paged(lambda t: client.search_registered_models(max_results=100, page_token=t))
    for model in models:
        name = model.name
        versions = _paged(
            lambda t, n=name: client.search_model_versions(f"name = '{n}'", max_results=200, page_token=t)
        )
        aliased = {str(v) for v in (model.aliases or {}).values()}
        newest = {
            str(v.version) for v in sorted(versions, key=lambda v: int(v.version), reverse=True)[:keep_last]
        }
        for mv in versions:
            if mv.run_id:
                by_run[mv.run_id] = (name, str(mv.version))
                if str(mv.version) in aliased | newest:
                    keep.add(mv.run_id)
    return by_run, keep


def prune_training_runs(
    client: MlflowClient,
    *,
    max_age_days: float,
    keep_last: int = 5,
    now_ms: int | None = None,
    dry_run: bool = False,
    experiment: str = TRAINING_EXPERIMENT,
) -> list[PrunedRun]:
    """Delete the training runs the policy lets go (module docstring), with their model versions.

    Args:
        max_age_days: runs started longer ago than this may go.
        keep_last: per registered model, the newest versions kept whatever their age (rollback targets).
        now_ms: the clock (epoch ms), default now.
        dry_run: list what would go, delete nothing.

    Returns:
        The runs deleted (or deletable), oldest first.
    """
    if max_age_days <= 0 or keep_last < 0:
        raise RegistryError(
            f"retention needs max_age_days > 0 and keep_last >= 0, got {max_age_days}, {keep_last}"
        )
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(max_age_days * _DAY_MS)
    by_run, keep = _versions_by_run(client, keep_last)
    runs = _paged(
        lambda t: client.search_runs(
            [exp.experiment_id],
            filter_string=f"attributes.start_time < {cutoff}",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=t,
        )
    )
    pruned = []
    for run in runs:
        run_id = run.info.run_id
        if run_id in keep:
            continue
        model, version = by_run.get(run_id, (None, None))
        pruned.append(PrunedRun(run_id, run.info.start_time, run.info.status, model, version))
        if dry_run:
            continue
        if model is not None:
            client.delete_model_version(model, version)
        client.delete_run(run_id)
    return pruned


def purge_deleted_runs(backend_store_uri: str, run_ids: list[str]) -> None:
    """`mlflow gc` for `run_ids` (already deleted): their rows and artifacts go for good."""
    if not run_ids:
        return
    from mlflow.cli import gc

    # gc resolves artifact locations through the tracking URI; set it for this call only (the CLI's
    # --tracking-uri would change the process-wide default).
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = backend_store_uri
    try:
        args = ["--backend-store-uri", backend_store_uri, "--run-ids", ",".join(run_ids)]
        gc.main(args, standalone_mode=False)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
