"""Monitor runs in MLflow: one run per `monitor` flow run, in the experiment `kairos-monitoring`.

Tags `kairos.kind=monitor`, `kairos.model`, `monitor.version` (the serving version checked),
`monitor.time_ms` (the monitor's clock), `monitor.alerts` (number fired) and `monitor.retrain`
(whether a retrain was started); metrics are the checks' numbers (drift statistics per column, live
metrics per horizon, staleness); artifacts: `monitor/report.html` and its PNG figures.
The registry takes plain dicts: the checks themselves are `pipelines.monitoring.alerts.Check`.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from registry.client import RegistryError, ensure_experiment

MONITOR_EXPERIMENT = "kairos-monitoring"
REPORT_PATH = "monitor"
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")  # MLflow metric keys: alphanumerics, _ - . space /


def log_monitor_run(
    client: MlflowClient,
    *,
    name: str,
    version: str | None,
    time_ms: int,
    report_dir: Path,
    metrics: dict[str, float],
    params: dict[str, str],
    alerts: int,
) -> str:
    """Log one monitor run (report + figures as artifacts); returns the run id."""
    exp_id = ensure_experiment(client, MONITOR_EXPERIMENT)
    tags = {
        "kairos.kind": "monitor",
        "kairos.model": name,
        "monitor.version": str(version),
        "monitor.time_ms": str(int(time_ms)),
        "monitor.alerts": str(int(alerts)),
    }
    run = client.create_run(exp_id, start_time=int(time_ms), run_name=f"monitor {name} v{version}", tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        ms = [Metric(_KEY.sub("_", k), float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)]
        client.log_batch(run_id, params=[Param(k, str(v)[:5000]) for k, v in params.items()])
        for i in range(0, len(ms), 1000):
            client.log_batch(run_id, metrics=ms[i : i + 1000])
        client.log_artifacts(run_id, str(report_dir), REPORT_PATH)
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def tag_retrain(client: MlflowClient, run_id: str, started: bool, what: str) -> None:
    """Record on the monitor run whether its drift alarm started a retrain, and what came of it (or why not)."""
    tags = [
        RunTag("monitor.retrain_started", str(bool(started)).lower()),
        RunTag("monitor.retrain", what[:5000]),
    ]
    client.log_batch(run_id, tags=tags)


def last_retrain_ms(client: MlflowClient, name: str) -> int | None:
    """The monitor clock (epoch ms) of the newest monitor run that started a retrain of `name`, if any."""
    exp = client.get_experiment_by_name(MONITOR_EXPERIMENT)
    if exp is None:
        return None
    if "'" in name:
        raise RegistryError(f"model name {name!r} contains a quote; use model_name() to build names")
    flt = f"tags.`kairos.model` = '{name}' and tags.`monitor.retrain_started` = 'true'"
    runs = client.search_runs(
        [exp.experiment_id], filter_string=flt, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return int(runs[0].data.tags["monitor.time_ms"]) if runs else None
