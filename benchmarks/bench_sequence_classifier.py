"""Single-window ONNX latency of the sequence classifiers (issue 13 item 3): transformer seed000 and small.

    python benchmarks/bench_sequence_classifier.py [--runs 2000]

Each `SequenceClassifier` (pipelines/models/sequence/classifier.py) is fitted 1 epoch on synthetic
windows (T=60, F=13; weights do not change latency), exported at opset 15, and opened the way serving
opens a model: `pipelines.contracts.onnx.make_session` with serving's `SessionOptions`
(`serving.runtime.session_options(RuntimeConfig())`: 1 intra-op thread, sequential, no spinning,
graph optimisation "all") on the CPU provider. 200 warm-up runs, then `--runs` timed `run` calls on one
window [1, 60, 13]. Writes benchmarks/results/sequence_classifier.json (p50/p99 µs, weights, ONNX size,
ONNX-vs-native parity under those options, and the 1-minute load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.contracts.onnx import make_session  # noqa: E402
from pipelines.models.sequence.classifier import SequenceClassifier  # noqa: E402

T, F = 60, 13
PRESETS = {
    "transformer/seed000": ("transformer", "seed000", 512),
    "transformer/small": ("transformer", "small", 2048),
}


def serving_options():
    """Serving's SessionOptions when `serving` is importable; else the builder's 1-thread defaults."""
    try:
        from serving.config import RuntimeConfig
        from serving.runtime import session_options

        return session_options(RuntimeConfig()), "serving.runtime.session_options(RuntimeConfig())"
    except Exception as e:  # noqa: BLE001 - the benchmark still runs with explicit single-thread options
        print(f"serving options unavailable ({e}); using make_session(threads=1)")
        return None, "make_session(threads=1)"


def windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, T, F)).astype(np.float32)
    y = (rng.random(n) < 0.03).astype(np.int64)
    y[:2] = 1
    W[y == 1, -5:, 2] += 2.0
    return W, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000, help="timed single-window runs per model")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort
    import torch

    load_before = os.getloadavg()[0]
    options, options_name = serving_options()
    out: dict[str, dict] = {}
    for name, (arch, preset, n_train) in PRESETS.items():
        W, y = windows(n_train + 256, seed=0)
        t0 = time.perf_counter()
        model = SequenceClassifier.from_preset(arch, F, preset, overrides={"max_epochs": 1}, num_threads=2)
        model.fit(W[:n_train], y[:n_train], W_val=W[n_train:], y_val=y[n_train:])
        fit_s = time.perf_counter() - t0
        onnx_bytes = model.to_onnx()
        session = make_session(onnx_bytes, options=options)
        got = session.run(["logit"], {"features": W[n_train:]})[0][:, 0]
        parity = float(np.max(np.abs(got - model.predict_logit(W[n_train:]))))
        window = np.ascontiguousarray(W[-1:])
        for _ in range(200):
            session.run(["logit"], {"features": window})
        ns = np.empty(args.runs)
        for i in range(ns.size):
            t = time.perf_counter_ns()
            session.run(["logit"], {"features": window})
            ns[i] = time.perf_counter_ns() - t
        us = ns / 1e3
        out[name] = {
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "mean_us": round(float(us.mean()), 1),
            "runs": int(args.runs),
            "weights": model.n_weights,
            "onnx_kib": round(len(onnx_bytes) / 1024, 1),
            "opset": {o.domain: o.version for o in onnx.load_model_from_string(onnx_bytes).opset_import}[""],
            "parity_max_abs_logit": parity,
            "parity_tolerance": model.parity_tolerance,
            "fit_1_epoch_s": round(fit_s, 1),
            "train_windows": n_train,
            "config": {k: getattr(model.config, k) for k in ("d_model", "n_layers", "n_heads", "ff_mult")},
        }
        print(
            f"{name}: single-window ONNX p50 {out[name]['p50_us']} µs, p99 {out[name]['p99_us']} µs, "
            f"{out[name]['weights']:,} weights, {out[name]['onnx_kib']} KiB, parity {parity:.2g}"
        )
    result = {
        "input": {"shape": [1, T, F], "dtype": "float32", "name": "features", "output": "logit [N, 1]"},
        "session": f"CPUExecutionProvider, {options_name}",
        "models": out,
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }
    dst = REPO / "benchmarks" / "results" / "sequence_classifier.json"
    dst.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
