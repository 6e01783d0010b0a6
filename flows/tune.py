"""The `tune` Prefect flow: load candles → tuning rows → K workers on one Optuna study → best params → MLflow.

Thin wiring: the objective, search spaces and best-params files are `pipelines.tuning.objective`; workers and
storage are `pipelines.tuning.study`; MLflow logging is `registry.tuning`. Retries only on I/O tasks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.runtime import IO, PURE, Runtime
from flows.train import load_candles


def _tuning(rt: Runtime, model_type: str, task_name: str):
    """(search space with the task's metric and horizon filled in, training config, task)."""
    from pipelines.models import get_spec
    from pipelines.tuning.objective import for_task, load_search_space

    cfg = rt.training_config(task=task_name)
    spec = get_spec(model_type, rt.settings.configs_dir)
    task_ = rt.task(task_name, cfg.labels.horizons).for_family(spec.objectives, f"model {model_type}")
    tuning = for_task(
        load_search_space(rt.settings.configs_dir, model_type), task_, rt.policy(task_name).horizon
    )
    return tuning, cfg, task_


@task(name="tuning-rows", **PURE)
def prepare_rows(candles: Any, path: Path, task_name: str = "returns") -> Path:
    """Features + the task's labels minus the final test window, saved once for every worker to read."""
    from pipelines.tuning.objective import prepare_tuning_data

    rt = Runtime.from_env()
    cfg = rt.training_config(task=task_name)
    return prepare_tuning_data(candles, cfg, rt.task(task_name, cfg.labels.horizons)).save(path)


@task(name="run-workers", **PURE)
def run_workers(
    *,
    study_name: str,
    storage: str,
    model_type: str,
    symbol: str,
    interval: str,
    n_trials: int,
    workers: int,
    data: Path,
    task_name: str = "returns",
) -> int:
    """One worker in this process, or K worker processes sharing the study; returns trials run."""
    from pipelines.tuning.objective import Objective, TuningData
    from pipelines.tuning.study import (
        launch_workers,
        make_storage,
        open_study,
        run_budget,
        trial_counts,
        wait_workers,
    )

    rt = Runtime.from_env()
    tuning, cfg, task_ = _tuning(rt, model_type, task_name)
    # Create (or check) the study here so K workers never race to create it with other attributes.
    study = open_study(
        make_storage(storage, tuning),
        study_name,
        tuning,
        0,
        {"symbol": symbol, "interval": interval, "objective": task_.training_objective},
    )
    before = sum(trial_counts(study).values())
    # One LightGBM thread per worker: parallelism comes from workers (benchmarks/results/tune.json:
    # on 2 busy cores 1 worker x 2 threads ran ~6x slower than 1 x 1, and 2 x 1 twice as fast again).
    threads = 1
    if workers == 1:
        objective = Objective(
            TuningData.load(data),
            cfg,
            tuning,
            interval=interval,
            threads=threads,
            configs_dir=rt.settings.configs_dir,
            objective=task_.training_objective,
            task=task_,
        )
        run_budget(study, objective, n_trials)
    else:
        procs = launch_workers(
            workers,
            rt.settings.home_abs / "tuned" / "logs" / study_name,
            study=study_name,
            storage=storage,
            model=model_type,
            symbol=symbol,
            interval=interval,
            trials=n_trials,
            threads=threads,
            data=data,
            task=task_name,
        )
        wait_workers(procs)
    return sum(trial_counts(study).values()) - before


@task(name="best-params", **PURE)
def save_best(
    *, study_name: str, storage: str, model_type: str, symbol: str, interval: str, task_name: str = "returns"
) -> dict[str, Any]:
    """Counts per state, the best trial, and the tuned-parameters file `kairos train` reads."""
    import optuna

    from pipelines.tuning.objective import TuningError, overrides_for, provenance_of, write_best_params
    from pipelines.tuning.study import make_storage, trial_counts

    rt = Runtime.from_env()
    tuning, _, _ = _tuning(rt, model_type, task_name)
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage, tuning))
    counts = trial_counts(study)
    if not counts.get("COMPLETE"):
        raise TuningError(
            f"study {study_name!r} has no complete trial ({counts}); run more trials or widen the space"
        )
    best = study.best_trial
    prov = {**provenance_of(study, best, storage, tuning), "n_trials": sum(counts.values())}
    path = write_best_params(
        rt.settings.home_abs,
        model_type,
        symbol,
        interval,
        overrides_for(tuning, best.params),
        prov,
        task_name,
    )
    return {
        "study": study,
        "counts": counts,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": dict(best.params),
        "path": path,
        "provenance": prov,
        "metric": tuning.metric,
        "horizon": tuning.horizon,
        "pruner": tuning.pruner.kind,
    }


@task(name="log-study", **IO)
def log_to_mlflow(
    summary: dict[str, Any],
    *,
    storage: str,
    model_type: str,
    symbol: str,
    interval: str,
    task_name: str = "returns",
) -> str:
    from pipelines.tuning.objective import redact_storage
    from registry.tuning import log_study

    rt = Runtime.from_env()
    params = {
        "task": task_name,
        "model_type": model_type,
        "symbol": symbol,
        "interval": interval,
        "metric": summary["metric"],
        "horizon": summary["horizon"],
        "pruner": summary["pruner"],
    }
    space = rt.settings.configs_dir / "search_spaces" / f"{model_type}.yaml"
    return log_study(
        rt.mlflow,
        summary["study"],
        storage=redact_storage(storage),
        params=params,
        files=[space, summary["path"]],
    )


@flow(name="tune")
def tune(
    symbol: str,
    model_type: str = "lightgbm",
    n_trials: int = 20,
    workers: int = 1,
    storage: str | None = None,
    interval: str = "1m",
    study_name: str | None = None,
    task: str = "returns",
) -> dict[str, Any]:
    """Tune `model_type` for one symbol and task on inner walk-forward folds; resumes an existing study.

    Args:
        symbol: stored symbol, e.g. FILUSDT.
        model_type: a model with a `configs/search_spaces/<model_type>.yaml`.
        n_trials: the study's total budget of finished (complete + pruned) trials.
        workers: processes sharing the study (1 = in this process).
        storage: Optuna RDB URL; default `sqlite:///$KAIROS_HOME/optuna.db`.
        interval: candle interval.
        study_name: default `<model>-<SYMBOL>-<interval>` (`<task>-...` for tasks other than returns).
        task: the task tuned for (its labels, metric and objective).
    """
    from pipelines.tuning.objective import TuningError, redact_storage, study_key
    from pipelines.tuning.study import default_storage

    if n_trials < 1 or workers < 1:
        raise TuningError(f"--trials ({n_trials}) and --workers ({workers}) must be >= 1")
    rt = Runtime.from_env()
    _tuning(rt, model_type, task)  # a bad space (or a metric the task lacks) fails before any data is read
    study_name = study_name or study_key(model_type, symbol, interval, task)
    storage = storage or default_storage(rt.settings.home_abs)
    t0 = time.perf_counter()
    data = prepare_rows(
        load_candles(symbol, interval), rt.settings.home_abs / "tuned" / "data" / f"{study_name}.npz", task
    )
    ran = run_workers(
        study_name=study_name,
        storage=storage,
        model_type=model_type,
        symbol=symbol,
        interval=interval,
        n_trials=n_trials,
        workers=workers,
        data=data,
        task_name=task,
    )
    keys = dict(storage=storage, model_type=model_type, symbol=symbol, interval=interval, task_name=task)
    summary = save_best(study_name=study_name, **keys)
    run_id = log_to_mlflow(summary, **keys)
    summary.pop("study")
    return {
        **summary,
        "study_name": study_name,
        "storage": redact_storage(storage),
        "trials_run": ran,
        "mlflow_run_id": run_id,
        "seconds": time.perf_counter() - t0,
    }
