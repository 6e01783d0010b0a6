"""Symbols retrained per hour with 1 and 2 Prefect process workers, on the scale-out stack (run on demand).

The stack of tests/fixtures/stack.py: PostgreSQL (Debian packages), moto S3, `mlflow server` on
PostgreSQL with proxied S3 artifacts, `prefect server` on PostgreSQL, the `daily-retrain` deployment of
prefect.yaml. For each worker count a fresh KAIROS_HOME, candle store (PostgreSQL; `--store duckdb` for
the file) and symbols (first versions every time, so each round does the same work), `n` workers with
`--limit 1` (one flow run each), then one `retrain_universe` over `--symbols` synthetic symbols with the
repository's default configs (LightGBM, one thread) on `--days` of 1-minute candles.

Throughput = symbols / fan-out wall time, which includes everything a desk waits for (scheduling,
process start, ingest, validation, training, export, registration, promotion). Per-run times
(Running → final) are reported beside it. On this 2-core machine shared with other jobs the speed-up
is bounded by 2 and by the load average, recorded before and after each round.
Writes results/scale_out.json.

    python benchmarks/bench_scale_out.py [--symbols 4] [--days 31] [--workers 1 2] [--store postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _wait_workers(api: str, names: list[str], timeout: float = 180) -> None:
    from prefect.client.orchestration import get_client

    from tests.fixtures.stack import POOL, prefect_settings

    deadline = time.monotonic() + timeout
    with prefect_settings(api), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            online = {w.name for w in client.read_workers_for_work_pool(POOL) if w.status == "ONLINE"}
            if set(names) <= online:
                return
            time.sleep(1)
    raise TimeoutError(f"workers {names} not online after {timeout}s")


def round_(stack, n_workers: int, symbols: int, days: float, tmp: Path, store: str) -> dict:
    from prefect.logging.handlers import APILogHandler

    from flows.fanout import retrain_universe
    from pipelines.contracts.settings import get_settings
    from tests.fixtures.stack import prefect_settings

    home = tmp / f"home-{n_workers}w"
    store_url = stack.new_database(f"candles{n_workers}") if store == "postgres" else None
    env = stack.kairos_env(home, store_url=store_url)
    names = [f"SYNTHW{n_workers}S{i}USDT" for i in range(symbols)]
    per_symbol = {s: {"options": {"days": days, "seed": 100 * n_workers + i}} for i, s in enumerate(names)}
    prefix = f"w{n_workers}"
    with stack.workers(n_workers, env, limit=1, prefix=prefix):
        _wait_workers(stack.prefect_api, [f"{prefix}-{i}" for i in range(n_workers)])
        keys = ("KAIROS_HOME", "MLFLOW_TRACKING_URI", "KAIROS_STORE_URL")
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update({k: env[k] for k in keys if k in env})
        get_settings.cache_clear()
        try:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            with prefect_settings(stack.prefect_api):
                out = retrain_universe(names, source="synthetic", per_symbol=per_symbol, poll_s=1.0)
                APILogHandler().flush()  # this process's flow logs reach the server before it stops
            wall = time.perf_counter() - t0
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            get_settings.cache_clear()
    rows = out["symbols"]
    if out["failed"]:
        raise RuntimeError(f"{n_workers} workers: runs failed: {[(r['symbol'], r['why']) for r in rows]}")
    runs = [
        (datetime.fromisoformat(r["end_time"]) - datetime.fromisoformat(r["start_time"])).total_seconds()
        for r in rows
    ]
    res = {
        "workers": n_workers,
        "symbols": symbols,
        "wall_s": round(wall, 1),
        "symbols_per_hour": round(symbols / wall * 3600, 1),
        "run_s_median": round(statistics.median(runs), 1),
        "run_s_max": round(max(runs), 1),
        "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    print(f"{n_workers} worker(s): {res}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--days", type=float, default=31.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--store", choices=["postgres", "duckdb"], default="postgres", help="the candle store")
    args = ap.parse_args()
    from flows.runtime import quiet_third_parties
    from tests.fixtures.postgres import postgres_server
    from tests.fixtures.stack import create_pool, deploy, start_stack

    quiet_third_parties()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    tmpdir = tempfile.TemporaryDirectory(prefix="kairos-bench-scale-")  # removed at exit
    tmp = Path(tmpdir.name)
    with (
        contextlib.contextmanager(postgres_server.__wrapped__)() as pg,
        start_stack(pg, tmp / "stack") as stack,
    ):
        create_pool(stack.prefect_api)
        deploy(stack.kairos_env(tmp / "deploy-home"))
        rounds = [round_(stack, n, args.symbols, args.days, tmp, args.store) for n in args.workers]
    base = rounds[0]["symbols_per_hour"]
    out = {
        "what": "symbols retrained per hour: retrain_universe → daily-retrain deployment runs on Prefect process "
        "workers (--limit 1 each); MLflow on PostgreSQL + S3 (moto) through the artifact proxy; default configs",
        "days_per_symbol": args.days,
        "candle_store": args.store,
        "rounds": rounds,
        "speedup": {
            f"{r['workers']}w/{rounds[0]['workers']}w": round(r["symbols_per_hour"] / base, 2) for r in rounds
        },
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "note": "2 cores shared with other jobs; load_avg_1m = [before, after] each round",
        "command": "python benchmarks/bench_scale_out.py --symbols "
        f"{args.symbols} --days {args.days:g} --workers {' '.join(map(str, args.workers))} --store {args.store}",
    }
    dst = REPO / "benchmarks" / "results" / "scale_out.json"
    dst.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["speedup"]))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
