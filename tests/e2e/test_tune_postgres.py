"""Two tuning worker processes share one study on a real PostgreSQL server (Debian packages).

The test starts its own throw-away cluster: initdb/pg_ctl run as the `postgres` user (PostgreSQL
refuses root) on a data directory in /tmp owned by that user, listening on a free 127.0.0.1 port
with trust auth. Skipped only when `initdb` is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import getpass
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.flows.test_tune import FINISHED, SPACE, synthetic_candles, tuning_configs, worker_env

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as any other user it runs as that user.
    if getpass.getuser() != "root":
        return cmd
    # runuser lives in /usr/sbin, which a minimal PATH (cron, CI) may lack
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), "runuser"
    )
    return [runuser, "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def postgres_url():
    if not INITDB:
        pytest.skip(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
            "apt-get install postgresql, as .ci/run does"
        )
    bin_dir = Path(INITDB[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="kairos-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if getpass.getuser() == "root":
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = _free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        **run,
    )
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        **run,
    )
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE optuna_test")
        con.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna_test"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


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
