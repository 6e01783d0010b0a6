"""Single-row ONNX latency and bundle size of the returns default against the earlier default.

    python benchmarks/bench_default_model.py

Both LightGBM models (5 horizons, huber) are fitted on the first 20,000 labelled FILUSDT Aug 2023 candles:
the earlier default (core27, 200 trees x 31 leaves) and today's (core18, 50 x 7, ridge base; chosen on
walk-forward accuracy, see README "Returns"). One onnxruntime session each (1 thread, as serving runs it),
200 warm-up runs, then 5,000 timed `run` calls on one row. Writes benchmarks/results/default_model.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.config import LightGBMConfig  # noqa: E402
from pipelines.contracts.onnx import make_session  # noqa: E402
from pipelines.features import feature_matrix  # noqa: E402
from pipelines.models.lightgbm import LightGBMReturns  # noqa: E402
from pipelines.sources.binance_files import read_klines  # noqa: E402
from pipelines.tasks.returns import make_labels  # noqa: E402

MODELS = {
    "earlier default: core27, 200 trees x 31 leaves": ("core27", LightGBMConfig()),
    "returns default: core18, 50 x 7 leaves + ridge base": (
        "core18",
        LightGBMConfig(n_estimators=50, num_leaves=7, min_child_samples=1000, linear_base=True),
    ),
}


def main() -> None:
    path = REPO.parent / "shared" / "data" / "FILUSDT-1m-2023-08.zip"
    candles = read_klines(path, "FILUSDT", "1m").iloc[:25_000].reset_index(drop=True)
    Y = make_labels(candles["close"].to_numpy(float), [1, 2, 3, 4, 5])
    out = {}
    for name, (fs, cfg) in MODELS.items():
        X = feature_matrix(candles, fs)
        ok = np.isfinite(X).all(1) & np.isfinite(Y).all(1)
        model = LightGBMReturns(cfg, [1, 2, 3, 4, 5], objective="huber").fit(X[ok][:20_000], Y[ok][:20_000])
        onnx_bytes = model.to_onnx()
        session = make_session(onnx_bytes)
        name_in, row = session.get_inputs()[0].name, X[ok][-1:].copy()
        for _ in range(200):
            session.run(None, {name_in: row})
        ns = np.empty(5000)
        for i in range(ns.size):
            t = time.perf_counter_ns()
            session.run(None, {name_in: row})
            ns[i] = time.perf_counter_ns() - t
        us = ns / 1e3
        out[name] = {
            "p50_us": round(float(np.percentile(us, 50)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2),
            "onnx_kib": round(len(onnx_bytes) / 1024, 1),
        }
        print(
            f"{name}: single-row ONNX p50 {out[name]['p50_us']} µs, p99 {out[name]['p99_us']} µs, "
            f"{out[name]['onnx_kib']} KiB"
        )
    dst = REPO / "benchmarks" / "results" / "default_model.json"
    dst.write_text(json.dumps({"models": out, "loadavg_1m": os.getloadavg()[0]}, indent=2) + "\n")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
