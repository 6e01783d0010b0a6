"""Two tuning worker processes share one study on a real PostgreSQL server (Debian packages).

The server is the session's throw-away cluster (tests/fixtures/postgres.py).
"""

from __future__ import annotations

import json
import os
import time

import optuna

from tests.flows.test_tune import FINISHED, SPACE, synthetic_candles, tuning_configs, worker_env


def test_two_workers_share_one_study_on_postgres(postgres_url, tmp_path):
    from pipelines.config import load_training_config
    from pipelines.tuning.objective import prepare_tuning_data
    from pipelines.tuning.study import driver_url, launch_workers, wait_workers

    # Each trial must outlast the workers' start-up jitter, or the first worker up can finish the whole
    # budget before the other asks for a trial (LightGBM is imported before the first trial, so 40 trees
    # take ~0.03 s): 300-500 trees make a trial ~0.3 s.
    trees = {"type": "int", "low": 300, "high": 500, "step": 100}
    configs = tuning_configs(tmp_path / "configs", params={**SPACE["params"], "n_estimators": trees})
    rows = prepare_tuning_data(synthetic_candles(), load_training_config(configs)).save(tmp_path / "rows.npz")
    n, name = 8, "pg-two-workers"
    env = worker_env(configs, tmp_path / "home")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # launch_workers passes this process's environment on
    try:
        t0 = time.perf_counter()
        procs = launch_workers(
            2,
            tmp_path / "logs",
            study=name,
            storage=postgres_url,
            model="lightgbm",
            symbol="SYNTHUSDT",
            interval="1m",
            trials=n,
            threads=1,
            data=rows,
        )
        wait_workers(procs)
        elapsed = time.perf_counter() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    logs = [log.read_text() for _, log in procs]
    ran = [json.loads(text.strip().splitlines()[-1])["ran"] for text in logs]  # each worker's last line
    storage = driver_url(postgres_url)
    assert optuna.study.get_all_study_names(storage) == [name]  # one study, not one per worker
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert (
        len(set(numbers)) == len(numbers) == sum(ran)
    )  # every trial each worker ran landed in the study once
    assert numbers == list(range(len(trials)))
    finished = sum(t.state in FINISHED for t in trials)
    assert n <= finished <= n + 1  # two workers can both take the last slot in the same instant
    assert all(r >= 1 for r in ran), f"both workers should have run trials: {ran} (logs: {logs})"
    print(f"\n2 workers on PostgreSQL: {finished} trials ({ran}) in {elapsed:.1f}s")
