"""Log an Optuna study to MLflow: one parent run per study, one nested run per trial.

Workers never touch MLflow (K processes writing one SQLite tracking file would fight over its lock);
the coordinating process calls `log_study` after they finish. It is idempotent: the parent run is
found by its `kairos.study` + `kairos.storage` tags, and trials already logged (by their
`kairos.trial_number` tag) are skipped, so a resumed study adds only its new trials.

Parent run: params (model, symbol, interval, metric, horizon, the search space), metrics
(best_value, trials per state), tags (best trial and its parameters, storage without password),
artifacts `optimization_history.png`, `param_importances.png`, `search_space.yaml`, `best_params.yaml`.
Nested run per trial: params, `fold_score` per fold (step = fold), `value`, tag `optuna.state`
(COMPLETE / PRUNED / FAIL); status FINISHED, or FAILED for a failed trial.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from registry.client import ensure_experiment

EXPERIMENT = "kairos-tuning"
_LOGGED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def _parent_run(
    client: MlflowClient, experiment_id: str, study_name: str, storage: str, params: dict[str, str]
) -> str:
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`kairos.study` = '{study_name}' and tags.`kairos.storage` = '{storage}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"study-{study_name}",
        tags={"kairos.study": study_name, "kairos.storage": storage, "kairos.kind": "tuning"},
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def _logged_trials(client: MlflowClient, experiment_id: str, parent_id: str) -> set[int]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50_000
    )
    return {int(r.data.tags["kairos.trial_number"]) for r in runs if "kairos.trial_number" in r.data.tags}


def _ms(ts: Any) -> int | None:
    return int(ts.timestamp() * 1000) if ts is not None else None


def _log_trial(client: MlflowClient, experiment_id: str, parent_id: str, study_name: str, trial: Any) -> None:
    start = _ms(trial.datetime_start)
    run = client.create_run(
        experiment_id,
        start_time=start,
        run_name=f"trial-{trial.number}",
        tags={
            "mlflow.parentRunId": parent_id,
            "kairos.study": study_name,
            "kairos.trial_number": str(trial.number),
            "optuna.state": trial.state.name,
        },
    )
    rid, ts = run.info.run_id, start or 0
    scores = trial.user_attrs.get("fold_scores") or []
    metrics = [Metric("fold_score", float(v), ts, i) for i, v in enumerate(scores)]
    if trial.value is not None and trial.state.name == "COMPLETE":
        metrics.append(Metric("value", float(trial.value), ts, 0))
    client.log_batch(
        rid,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in trial.params.items()],
        tags=[RunTag("optuna.folds_scored", str(len(scores)))],
    )
    status = RunStatus.to_string(RunStatus.FAILED if trial.state.name == "FAIL" else RunStatus.FINISHED)
    client.set_terminated(rid, status=status, end_time=_ms(trial.datetime_complete))


def _images(study: Any, out_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances as PNGs (importances need >= 2 complete trials)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    paths = []
    for name, plot in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials to judge importance
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def log_study(
    client: MlflowClient, study: Any, *, storage: str, params: dict[str, Any], files: list[Path] | None = None
) -> str:
    """Create or update the study's parent run and add nested runs for trials not logged yet.

    Args:
        client: MLflow client (built at the entry point).
        study: the Optuna study.
        storage: its storage URL, already without password.
        params: parent-run params (model, symbol, interval, metric, ...); logged once, at creation.
        files: extra artifacts for the parent run (search space, best params).

    Returns:
        The parent run id.
    """
    exp = ensure_experiment(client, EXPERIMENT)
    parent = _parent_run(client, exp, study.study_name, storage, params)
    done = _logged_trials(client, exp, parent)
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state.name in _LOGGED_STATES and t.number not in done:
            _log_trial(client, exp, parent, study.study_name, t)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    metrics = [Metric(f"trials_{s.lower()}", float(counts.get(s, 0)), 0, 0) for s in _LOGGED_STATES]
    tags = []
    if counts.get("COMPLETE"):
        best = study.best_trial
        metrics.append(Metric("best_value", float(best.value), 0, 0))
        tags = [RunTag("kairos.best_trial", str(best.number))]
        tags += [RunTag(f"best.{k}", str(v)) for k, v in best.params.items()]
    client.log_batch(parent, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        for path in _images(study, Path(tmp)):
            client.log_artifact(parent, str(path))
    for path in files or []:
        if Path(path).exists():
            client.log_artifact(parent, str(path))
    return parent
