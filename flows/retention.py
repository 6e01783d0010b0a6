"""Retention: delete old prediction-log files and old training runs by configs/retention.yaml.

`prune` wires `pipelines.review.watermark.prune_prediction_logs` and `registry.retention` (what is kept and
why is documented there); `kairos data prune` calls it directly, the `retention` flow is what a daily
deployment schedules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.runtime import Runtime


def prune(dry_run: bool = False, predlog_dir: str | None = None) -> dict[str, Any]:
    """Apply the retention policy once. Returns {"logs": [paths], "runs": [descriptions], "purged": bool}."""
    from flows.review import default_predlog_dir
    from pipelines.config import load_retention_config
    from pipelines.review.watermark import prune_prediction_logs
    from registry.retention import prune_training_runs, purge_deleted_runs

    rt = Runtime.from_env()
    cfg = load_retention_config(rt.settings.configs_dir)
    logs = prune_prediction_logs(
        Path(predlog_dir) if predlog_dir else default_predlog_dir(rt),
        cfg.prediction_logs.max_age_days,
        dry_run=dry_run,
    )
    runs = prune_training_runs(
        rt.mlflow,
        max_age_days=cfg.training_runs.max_age_days,
        keep_last=cfg.training_runs.keep_last,
        dry_run=dry_run,
    )
    purge = not dry_run and cfg.training_runs.purge and rt.settings.tracking_uri.startswith("sqlite:")
    if purge:
        purge_deleted_runs(rt.settings.tracking_uri, [r.run_id for r in runs])
    return {"logs": [str(p) for p in logs], "runs": [r.describe() for r in runs], "purged": purge}


@flow(name="retention")
def retention(dry_run: bool = False) -> dict[str, Any]:
    """Prune old prediction logs and training runs (configs/retention.yaml)."""
    return prune(dry_run)
