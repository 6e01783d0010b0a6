"""Candle store throughput, DuckDB vs PostgreSQL: upsert of new rows, idempotent re-upsert, load, and
eight concurrent writers on PostgreSQL.

    .venv/bin/python benchmarks/bench_store.py [--reps 3]

Data: the four FILUSDT 1m months of ../shared/data (175,680 candles). Each rep writes into a fresh store
(DuckDB file; PostgreSQL database on the test cluster of tests/fixtures/postgres.py: Debian packages,
fsync off, so PostgreSQL figures are an upper bound for a durable server). Reports rows/s (median of reps)
for: `upsert` of all rows into an empty store, `re-upsert` of the same rows (0 added: the idempotent path a
daily re-ingest takes), `load` of the series, and on PostgreSQL `8 writers`: eight threads upserting eight
different symbols (a copy of the data each) at once, total rows/s.

Prints a table and writes benchmarks/results/store.json.
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_backend(make_store, fil, reps: int) -> dict:
    rows = len(fil)
    out = {"upsert": [], "re-upsert": [], "load": []}
    for _ in range(reps):
        s = make_store()
        out["upsert"].append(rows / _timed(lambda s=s: s.upsert(fil)))
        out["re-upsert"].append(rows / _timed(lambda s=s: s.upsert(fil)))
        out["load"].append(rows / _timed(lambda s=s: s.load("FILUSDT", "1m")))
    return {k: round(statistics.median(v)) for k, v in out.items()}


def bench_writers(make_store, fil, writers: int = 8) -> int:
    s = make_store()
    frames = [fil.assign(symbol=f"FIL{i}USDT") for i in range(writers)]
    threads = [threading.Thread(target=s.upsert, args=(f,)) for f in frames]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return round(writers * len(fil) / (time.perf_counter() - t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from pipelines.sources import binance_files
    from pipelines.store import CandleStore
    from pipelines.store_postgres import PostgresCandleStore
    from tests.conftest import FIL_FILES
    from tests.fixtures.postgres import new_database, postgres_server

    fil = binance_files.read_many(FIL_FILES, "FILUSDT", "1m")
    tmp = Path(tempfile.mkdtemp(prefix="kairos-bench-store-"))
    n = iter(range(10_000))
    load0 = os.getloadavg()[0]
    with contextlib.contextmanager(postgres_server.__wrapped__)() as pg:
        results = {
            "duckdb": bench_backend(lambda: CandleStore(tmp / f"s{next(n)}.duckdb"), fil, args.reps),
            "postgresql": bench_backend(
                lambda: PostgresCandleStore(new_database(pg, "bench")), fil, args.reps
            ),
        }
        results["postgresql"]["8 writers"] = bench_writers(
            lambda: PostgresCandleStore(new_database(pg, "w")), fil
        )
    print(f"{'rows/s':<12}" + "".join(f"{k:>12}" for k in ("upsert", "re-upsert", "load", "8 writers")))
    for backend, r in results.items():
        print(
            f"{backend:<12}"
            + "".join(f"{r.get(k, '-'):>12}" for k in ("upsert", "re-upsert", "load", "8 writers"))
        )
    payload = {
        "rows": len(fil),
        "reps": args.reps,
        "rows_per_s": results,
        "load_avg_before": round(load0, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/bench_store.py",
    }
    out = REPO / "benchmarks" / "results" / "store.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
