"""Wall time of the daily loop for one symbol with 30 days of 1-minute candles (run on demand).

Runs `kairos retrain` (ingest → validate → train walk-forward → ONNX + parity → register → promote)
as a user would, in a fresh KAIROS_HOME, on the real FILUSDT August 2023 dump (31 days; the default
config trains and evaluates on the newest 30 days = 43,200 candles). The first run registers the
champion; the second re-ingests the same file (0 rows added) and judges a challenger, so it measures
the steady-state daily job. Writes benchmarks/results/daily_retrain.json.

    python benchmarks/bench_daily_retrain.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "FILUSDT-1m-2023-08.zip"


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="kairos-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env["KAIROS_HOME"] = str(home)
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "retrain",
        "--symbol",
        "FILUSDT",
        "--source",
        "binance-files",
        "--path",
        str(DATA),
    ]
    runs = []
    for i in (1, 2):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"run {i} failed:\n{proc.stdout}\n{proc.stderr}")
        runs.append({"run": i, "wall_s": round(wall, 1), "load_avg_1m_before": round(load, 2)})
        print(f"run {i}: {wall:.1f} s wall (load average before: {load:.2f})")
    out = {
        "what": "kairos retrain, FILUSDT 1m, 30-day training window, default configs",
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    dst = REPO / "benchmarks" / "results" / "daily_retrain.json"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
