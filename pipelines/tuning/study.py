"""A tuning worker: `python -m flows.tune_worker --study NAME --storage URL --model M --symbol S --trials N`.

Any number of workers, on one machine or many, share one study through one Optuna RDB storage
(SQLite file by default, PostgreSQL for many machines) — Optuna's own way of distributing. Each
worker loops: FAIL stale trials (a killed worker's RUNNING trial stops heart-beating; it is marked
FAIL after `grace_period` and its parameters are re-enqueued once by `RetryHeartbeatStaleTrialCallback`),
count finished (COMPLETE + PRUNED) and running trials, and run one more trial only while
finished + running < N. So K workers together finish N trials, and running the command again on
the same study resumes (load_if_exists) instead of starting over. Two workers that check in the
same millisecond can overshoot N by one; nothing is lost or duplicated (numbers come from the storage).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pipelines.config import TuningConfig
from pipelines.tuning.objective import TuningError

REPO = Path(__file__).resolve().parents[2]


def default_storage(home: Path) -> str:
    """The embedded default: a SQLite file in KAIROS_HOME."""
    return f"sqlite:///{Path(home).expanduser().resolve() / 'optuna.db'}"


def driver_url(url: str) -> str:
    """`postgresql://` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3, Kairos ships psycopg2."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _storage_class() -> Any:
    """RDBStorage that also calls stale a RUNNING trial that never recorded a heartbeat.

    Optuna skips such trials on purpose (optuna/optuna#4026), but a worker killed between `study.ask()`
    and its heartbeat thread's first write leaves exactly that: a RUNNING trial that would hold a slot of
    the trial budget forever, so `run_budget` on a resumed study would wait for it indefinitely (seen in
    CI). A live worker writes its first heartbeat within milliseconds of `ask`, so a trial with none
    `grace_period` seconds after it started is treated as dead: FAILed and retried like any stale trial.
    `datetime_start` is the asking worker's clock (naive local time, as Optuna writes it): workers on
    several machines need clocks agreeing to well within `grace_period`.
    """
    from datetime import datetime, timedelta

    import sqlalchemy
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    class KairosRDBStorage(RDBStorage):
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = list(super()._get_stale_trial_ids(study_id))
            grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 0))
            now = datetime.now()
            old = [
                t._trial_id
                for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if t._trial_id not in stale
                and t.datetime_start is not None
                and now - t.datetime_start > grace
            ]
            if old:
                query = sqlalchemy.text(
                    "SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids"
                ).bindparams(sqlalchemy.bindparam("ids", expanding=True))
                with self.engine.connect() as conn:
                    beating = {row[0] for row in conn.execute(query, {"ids": old})}
                stale += [i for i in old if i not in beating]
            return stale

    return KairosRDBStorage


def make_storage(url: str, tuning: TuningConfig) -> Any:
    """An RDBStorage with heartbeats (stale-trial detection) and a busy timeout for SQLite."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    RDBStorage = _storage_class()

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several processes write one file: wait for the lock instead of failing with "database is locked".
        engine = {"connect_args": {"timeout": tuning.sqlite_timeout_s}}
    else:
        engine = {"pool_pre_ping": True}
    from sqlalchemy.exc import DBAPIError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    driver_url(url),
                    engine_kwargs=engine,
                    heartbeat_interval=tuning.heartbeat_interval,
                    grace_period=tuning.grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except DBAPIError:
            # Workers started together on an empty database race to create Optuna's schema (PostgreSQL:
            # "duplicate key ... pg_type"); the loser finds the tables on its next try.
            if attempt == 2:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_pruner(tuning: TuningConfig) -> Any:
    import optuna

    from pipelines.tuning.objective import STEPS_PER_FOLD

    p = tuning.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=tuning.inner_folds * STEPS_PER_FOLD,
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def open_study(
    storage: Any,
    study_name: str,
    tuning: TuningConfig,
    worker_index: int = 0,
    attrs: dict[str, Any] | None = None,
) -> Any:
    """Create or load the study; seed TPE per worker and per resume so no two draw the same sequence.

    Raises:
        TuningError: the study exists but was made for another metric/horizon/model.
    """
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=study_name, direction="maximize", load_if_exists=True
    )
    want = {
        "model_type": tuning.model_type,
        "metric": tuning.metric,
        "horizon": tuning.horizon,
        **(attrs or {}),
    }
    have = dict(study.user_attrs)
    for key, value in want.items():
        if key not in have:
            study.set_user_attr(key, value)
        elif have[key] != value:
            raise TuningError(
                f"study {study_name!r} was created with {key}={have[key]!r}, not {value!r}; "
                "pass another --study name (or delete that study) to tune differently"
            )
    seed = tuning.seed + 1000 * worker_index + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=tuning.n_startup_trials, constant_liar=True
    )
    study.pruner = make_pruner(tuning)
    return study


def trial_counts(study: Any) -> dict[str, int]:
    """Trials per state name, e.g. {"COMPLETE": 8, "PRUNED": 4, "FAIL": 1}."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def run_budget(study: Any, objective: Any, n_trials: int, poll_s: float = 1.0) -> int:
    """Run trials until the study has `n_trials` finished (COMPLETE + PRUNED) ones; return how many ran here."""
    import optuna

    ran = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        c = trial_counts(study)
        done, running = c.get("COMPLETE", 0) + c.get("PRUNED", 0), c.get("RUNNING", 0)
        if done >= n_trials:
            return ran
        if done + running >= n_trials:
            time.sleep(poll_s)  # others hold the rest of the budget; if one dies its trial goes stale
            continue
        study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
        ran += 1


def worker_command(
    *,
    study: str,
    storage: str,
    model: str,
    symbol: str,
    interval: str,
    trials: int,
    worker_index: int,
    threads: int,
    data: Path | None = None,
    task: str = "returns",
) -> list[str]:
    """The argv of one worker process (this module, run by the current interpreter)."""
    cmd = [
        sys.executable,
        "-m",
        "flows.tune_worker",
        "--study",
        study,
        "--storage",
        storage,
        "--model",
        model,
        "--symbol",
        symbol,
        "--interval",
        interval,
        "--trials",
        str(trials),
        "--worker-index",
        str(worker_index),
        "--threads",
        str(threads),
        "--task",
        task,
    ]
    return cmd + (["--data", str(data)] if data else [])


def launch_workers(k: int, log_dir: Path, **kw: Any) -> list[tuple[subprocess.Popen, Path]]:
    """Start K worker processes (env inherited: KAIROS_HOME, configs); stderr goes to per-worker logs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(k):
        log = log_dir / f"worker-{i}.log"
        with open(log, "w") as fh:
            procs.append(
                (
                    subprocess.Popen(
                        worker_command(worker_index=i, **kw),
                        cwd=REPO,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        env=os.environ.copy(),
                    ),
                    log,
                )
            )
    return procs


def wait_workers(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    """Wait for every worker; raise with the last line of a failed worker's log."""
    failed = []
    for proc, log in procs:
        if proc.wait() != 0:
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            failed.append(
                f"worker exited {proc.returncode}: {lines[-1] if lines else '(no output)'} (log {log})"
            )
    if failed:
        raise TuningError("; ".join(failed))
