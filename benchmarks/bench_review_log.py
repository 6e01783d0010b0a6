"""Reading the prediction log for an A/B review: the full JSON parse vs the incremental reader.

    .venv/bin/python benchmarks/bench_review_log.py [--days 5] [--per-day 20000] [--new 1000]

Writes `--days` day files of `--per-day` shadow-mode records (both arms, 5 horizons) with serving's
writer, then times (median of 3):
- `full`: `read_prediction_log` (what every review did: parse every line of every day);
- `first`: `read_log_incremental` with no cache (parses everything and writes the columnar copies);
- `next`: `read_log_incremental` after `--new` records were appended (parses only those; loads the rest
  from the copies): the cost of each later review.
Prints µs per record and writes benchmarks/results/review_log.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = "returns-FILUSDT-1m"


def _records(day: str, n: int, start: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        for arm, v in (("champion", "3"), ("challenger", "4")):
            out.append(
                {
                    "v": 1,
                    "request_id": f"r{i}",
                    "time": f"{day}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 999999:06d}+00:00",
                    "symbol": "FILUSDT",
                    "interval": "1m",
                    "open_time": 1690848000000 + 60_000 * i,
                    "arm": arm,
                    "served": arm == "champion",
                    "mode": "shadow",
                    "routing_key": "FILUSDT",
                    "model": MODEL,
                    "version": v,
                    "horizons": [1, 2, 3, 4, 5],
                    "predictions": [1e-5 * (i % 17)] * 5,
                    "confidence": None,
                    "latency_us": 41.5,
                }
            )
    return out


def _write(directory: Path, records: list[dict]) -> None:
    from serving.predlog import PredictionLog

    log = PredictionLog(directory, flush_every=4096, flush_interval_ms=1000).start()
    for r in records:
        log.append(r)
    log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--per-day", type=int, default=20_000, help="requests per day (2 records each)")
    ap.add_argument("--new", type=int, default=1000, help="requests appended before the next review")
    args = ap.parse_args()
    from pipelines.contracts.predlog import read_prediction_log
    from pipelines.review.watermark import CACHE_DIR, read_log_incremental

    tmp = Path(tempfile.mkdtemp(prefix="kairos-bench-log-"))
    for d in range(args.days):
        _write(tmp, _records(f"2024-03-{d + 1:02d}", args.per_day, d * args.per_day))
    total = 2 * args.days * args.per_day
    full, first, nxt = [], [], []
    for rep in range(3):
        t = time.perf_counter()
        n_full = len(read_prediction_log(tmp, MODEL))
        full.append(time.perf_counter() - t)
        shutil.rmtree(tmp / MODEL / CACHE_DIR, ignore_errors=True)
        t = time.perf_counter()
        read_log_incremental(tmp, MODEL)
        first.append(time.perf_counter() - t)
        start = args.days * args.per_day + rep * args.new
        _write(tmp, _records(f"2024-03-{args.days:02d}", args.new, start))
        t = time.perf_counter()
        r = read_log_incremental(tmp, MODEL)
        nxt.append(time.perf_counter() - t)
        assert r.records_parsed == 2 * args.new and len(r.log) == n_full + 2 * args.new
    res = {
        "records": total,
        "new_records": 2 * args.new,
        "full_s": round(statistics.median(full), 3),
        "first_incremental_s": round(statistics.median(first), 3),
        "next_incremental_s": round(statistics.median(nxt), 3),
    }
    res["full_us_per_record"] = round(1e6 * res["full_s"] / total, 2)
    res["next_us_per_record"] = round(1e6 * res["next_incremental_s"] / total, 2)
    res["speedup_next_vs_full"] = round(res["full_s"] / res["next_incremental_s"], 1)
    print(json.dumps(res, indent=2))
    payload = {
        **res,
        "load_avg": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/bench_review_log.py " + " ".join(sys.argv[1:]),
    }
    (REPO / "benchmarks" / "results" / "review_log.json").write_text(json.dumps(payload, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
