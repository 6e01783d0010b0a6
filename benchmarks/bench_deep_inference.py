"""Single-window latency of the sequence models' export variants (issue 17): fp32, optimized, int8, fp16.

    .venv/bin/python benchmarks/bench_deep_inference.py [--reps 400] [--presets transformer:seed000,...]

Per preset: `SequenceRegressor` fitted 1 epoch on `--fit-windows` real FILUSDT core27 windows (T = 60,
F = 27; weights barely trained, which is enough for latency and a first look at the gates), exported,
then each variant built with `pipelines.models.sequence.variants.build_variant` and gated with
`gate_variant` against the fp32 graph on `--gate-windows` later (held-out) windows and their labels
(the default `VariantTolerance` of each variant). For the transformer, "fp32 (before)" is the export
as it was before issue 17 (every block over all T steps: `TransformerEncoder.newest_only = False`).

Latency: each graph opened the way serving opens a model (`serving.runtime.session_options(
RuntimeConfig())`: CPU provider, 1 intra-op thread, sequential, no spinning, optimisation "all"), 30
warm-up runs each, then `--reps` rounds of one `run` per graph in turn on the same window [1, 60, 27]
(interleaved, so load changes on the shared box hit every variant alike); p50 / p99 in µs. fp16 is
timed on the CPU for completeness only (no fp16 kernels there: it is meant for CUDA / TensorRT).
Writes benchmarks/results/deep_inference.json with the 1-minute load average before and after each
preset. Not part of the test run.
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

from pipelines.config import load_model_preset  # noqa: E402
from pipelines.contracts.onnx import make_session  # noqa: E402
from pipelines.contracts.settings import get_settings  # noqa: E402
from pipelines.models.sequence import SequenceRegressor  # noqa: E402
from pipelines.models.sequence.variants import (  # noqa: E402
    DEFAULT_TOLERANCES,
    build_variant,
    fuse_attention,
    gate_variant,
)

DATA = REPO.parent / "shared" / "data"
PRESETS = [
    ("transformer", "tiny"),
    ("transformer", "small"),  # the file's default preset
    ("transformer", "seed000"),
    ("lstm_attention", "small"),
    ("tft", "small"),
    ("mamba", "small"),
]
VARIANTS = ("optimized", "int8", "fp16")


def real_windows(n_candles: int) -> tuple[np.ndarray, np.ndarray]:
    """FILUSDT 1m core27 windows (N, 60, 27) and log-return labels at horizons 1..5 (N, 5)."""
    from pipelines.features import feature_matrix
    from pipelines.sources.binance_files import read_klines
    from pipelines.tasks.returns import make_labels
    from pipelines.training.windows import window_dataset

    path = sorted(DATA.glob("FILUSDT-1m-2023-*.zip"))[0]
    candles = read_klines(path, "FILUSDT", "1m").iloc[:n_candles].reset_index(drop=True)
    X = feature_matrix(candles, "core27")
    Y = make_labels(candles["close"].to_numpy(float), [1, 2, 3, 4, 5])
    W, Yw, _ = window_dataset(X, Y, 60)
    return np.ascontiguousarray(W), Yw


def serving_options():
    from serving.config import RuntimeConfig
    from serving.runtime import session_options

    return session_options(RuntimeConfig())


def interleaved(graphs: dict[str, bytes], window: np.ndarray, reps: int) -> dict[str, dict[str, float]]:
    """p50/p99 µs per graph, timed in rounds (one run of each graph per round)."""
    sessions = {k: make_session(g, options=serving_options()) for k, g in graphs.items()}
    feed = {"features": window}
    for s in sessions.values():
        for _ in range(30):
            s.run(None, feed)
    ns: dict[str, list[int]] = {k: [] for k in sessions}
    for _ in range(reps):
        for k, s in sessions.items():
            t0 = time.perf_counter_ns()
            s.run(None, feed)
            ns[k].append(time.perf_counter_ns() - t0)
    return {
        k: {
            "p50_us": round(float(np.percentile(v, 50)) / 1e3, 1),
            "p99_us": round(float(np.percentile(v, 99)) / 1e3, 1),
        }
        for k, v in ns.items()
    }


def bench_preset(arch: str, preset: str, W, Y, args) -> dict:
    load_before = os.getloadavg()[0]
    cfg = load_model_preset(get_settings().configs_dir, arch, preset, {"max_epochs": 1, "num_threads": 2})
    model = SequenceRegressor(cfg, W.shape[2], range(1, 6))
    n_fit = min(args.fit_windows, len(W) - args.gate_windows - 520)
    t0 = time.perf_counter()
    model.fit(W[:n_fit], Y[:n_fit], X_val=W[n_fit + 5 : n_fit + 505], Y_val=Y[n_fit + 5 : n_fit + 505])
    fit_s = time.perf_counter() - t0
    gate_X = W[-args.gate_windows :]
    gate_Y = Y[-args.gate_windows :]
    fp32 = model.to_onnx()
    graphs: dict[str, bytes] = {}
    if arch == "transformer":
        model.net_.encoder.newest_only = False
        graphs["fp32 (before)"] = model.to_onnx()
        model.net_.encoder.newest_only = True
    graphs["fp32"] = fp32
    gates = {}
    for v in VARIANTS:
        graphs[v] = build_variant(fp32, v)
        report = gate_variant(fp32, graphs[v], gate_X, DEFAULT_TOLERANCES[v], labels=gate_Y, variant=v)
        gates[v] = report.to_dict() | {"message": report.message()}
        print(f"  {arch}/{preset} {report.message()}", flush=True)
    latency = interleaved(graphs, np.ascontiguousarray(W[-1:]), args.reps)
    row = {
        "model": arch,
        "preset": preset,
        "weights": int(sum(p.numel() for p in model.net_.parameters())),
        "fit_windows": n_fit,
        "fit_1_epoch_s": round(fit_s, 1),
        "attention_blocks_fused": fuse_attention(fp32)[1],
        "kib": {k: round(len(g) / 1024, 1) for k, g in graphs.items()},
        "latency": latency,
        "gate": gates,
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    cells = "  ".join(f"{k} {v['p50_us']:.0f}/{v['p99_us']:.0f}" for k, v in latency.items())
    print(
        f"{arch}/{preset}: p50/p99 µs  {cells}  (load {load_before:.2f} → {row['loadavg_1m_after']:.2f})",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400, help="timed rounds (one run of every variant each)")
    ap.add_argument("--presets", default=",".join(f"{a}:{p}" for a, p in PRESETS))
    ap.add_argument("--fit-windows", type=int, default=2048, help="windows of the 1-epoch fit")
    ap.add_argument("--gate-windows", type=int, default=2000, help="held-out windows the gates compare on")
    ap.add_argument("--candles", type=int, default=8000)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deep_inference.json")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    W, Y = real_windows(args.candles)
    rows = []
    for item in args.presets.split(","):
        arch, _, preset = item.partition(":")
        rows.append(bench_preset(arch, preset or "small", W, Y, args))
    result = {
        "what": "single window [1, 60, 27] float32, CPU provider, serving's session options (1 intra-op thread)",
        "reps": args.reps,
        "gate_rows": args.gate_windows,
        "tolerances": {k: vars(v) for k, v in DEFAULT_TOLERANCES.items()},
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(dict.fromkeys(n for r in rows for n in r["latency"]))
    print("\n| model | preset | " + " | ".join(f"{n} p50/p99 µs" for n in names) + " | load 1m |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for r in rows:
        cells = [
            f"{r['latency'][n]['p50_us']:.0f} / {r['latency'][n]['p99_us']:.0f}" if n in r["latency"] else "–"
            for n in names
        ]
        print(
            f"| {r['model']} | {r['preset']} | "
            + " | ".join(cells)
            + f" | {r['loadavg_1m_before']:.2f}→{r['loadavg_1m_after']:.2f} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
