"""Deep-model benchmark: single-window latency (onnxruntime vs PyTorch eager) and training time per epoch.

    .venv/bin/python benchmarks/bench_models.py [--reps 300] [--models lstm_attention,mamba] [--epoch-sample 2560]

Per model and preset:
- latency of ONE window [1, 60, 27] (real FILUSDT core27 features), 1 thread each, p50/p99 in µs,
  after warm-up; PyTorch eager under inference_mode vs an onnxruntime CPU session of the export;
- training seconds per epoch on 30 days of 1m candles (43,200 windows): one real epoch of the
  shared training loop (`SequenceRegressor.fit`, Lightning, validation included) on
  `--epoch-sample` windows, scaled linearly to 43,200 (an epoch is a fixed number of identical steps);
- the ensemble (mamba small + LightGBM defaults, one graph): ONNX latency only.
Writes benchmarks/results/bench_models.json and prints a markdown table. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.config import TrainingConfig, load_model_preset
from pipelines.contracts.settings import get_settings
from pipelines.models.sequence import SequenceRegressor
from pipelines.models.sequence.onnx_io import export_onnx, session
from pipelines.training.windows import window_dataset

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EPOCH_WINDOWS = 43_200  # 30 days of 1m candles
PRESETS = [
    ("lstm_attention", "small"),
    ("transformer", "small"),
    ("transformer", "seed000"),
    ("tft", "small"),
    ("mamba", "small"),
]


def real_windows(n_candles: int = 8000) -> tuple[np.ndarray, np.ndarray]:
    from pipelines.features import feature_matrix
    from pipelines.sources.binance_files import read_klines

    candles = read_klines(sorted(DATA.glob("FILUSDT-1m-2023-*.zip"))[0], "FILUSDT", "1m").iloc[:n_candles]
    X = feature_matrix(candles.reset_index(drop=True), "core27")
    logc = np.log(candles["close"].to_numpy(np.float64))
    Y = np.full((len(logc), 5), np.nan)
    for j, h in enumerate(range(1, 6)):
        Y[:-h, j] = logc[h:] - logc[:-h]
    W, Yw, _ = window_dataset(X, Y, 60)
    return np.ascontiguousarray(W), Yw


def percentiles(fn, reps: int) -> tuple[float, float]:
    for _ in range(max(10, reps // 10)):  # warm-up: allocator, ORT kernels, torch dispatch caches
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.percentile(times, 50) / 1e3), float(np.percentile(times, 99) / 1e3)


def bench_one(arch: str, preset: str, W: np.ndarray, Y: np.ndarray, reps: int, epoch_sample: int) -> dict:
    cfg = load_model_preset(get_settings().configs_dir, arch, preset, {"max_epochs": 1, "num_threads": 2})
    model = SequenceRegressor(cfg, W.shape[2], range(1, 6))
    n_fit = min(epoch_sample, len(W) - 600)
    t0 = time.perf_counter()
    model.fit(W[:n_fit], Y[:n_fit], X_val=W[n_fit + 5 : n_fit + 505], Y_val=Y[n_fit + 5 : n_fit + 505])
    fit_s = time.perf_counter() - t0
    net = model.net_
    one = torch.from_numpy(W[-1:].copy())
    torch.set_num_threads(1)
    with torch.inference_mode():
        t_p50, t_p99 = percentiles(lambda: net.returns_and_confidence(one), reps)
    sess = session(export_onnx(net, 60, W.shape[2], cfg.opset), threads=1)
    feed = {"features": W[-1:].copy()}
    o_p50, o_p99 = percentiles(lambda: sess.run(None, feed), reps)
    n_params = sum(p.numel() for p in net.parameters())
    return {
        "model": arch,
        "preset": preset,
        "params": n_params,
        "torch_p50_us": t_p50,
        "torch_p99_us": t_p99,
        "onnx_p50_us": o_p50,
        "onnx_p99_us": o_p99,
        "epoch_s_30d": fit_s * EPOCH_WINDOWS / n_fit,
        "epoch_sample": n_fit,
    }


def bench_ensemble(W: np.ndarray, Y: np.ndarray, reps: int) -> dict:
    from pipelines.models.sequence import make_sequence_model

    ens = make_sequence_model("ensemble", W.shape[2], range(1, 6), training=TrainingConfig())
    ens.sequence.config = ens.sequence.config.model_copy(update={"max_epochs": 1})
    ens.fit(W[:2000], Y[:2000], X_val=W[2005:2505], Y_val=Y[2005:2505])
    sess = session(ens.to_onnx(), threads=1)
    feed = {"features": W[-1:].copy()}
    o_p50, o_p99 = percentiles(lambda: sess.run(None, feed), reps)
    return {"model": "ensemble", "preset": "small (mamba+lgbm)", "onnx_p50_us": o_p50, "onnx_p99_us": o_p99}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--models", default=",".join(f"{a}:{p}" for a, p in PRESETS) + ",ensemble")
    ap.add_argument(
        "--epoch-sample", type=int, default=2560, help="windows trained for the per-epoch estimate"
    )
    args = ap.parse_args()
    W, Y = real_windows()
    rows = []
    for item in args.models.split(","):
        if item == "ensemble":
            rows.append(bench_ensemble(W, Y, args.reps))
        else:
            arch, _, preset = item.partition(":")
            rows.append(bench_one(arch, preset or "small", W, Y, args.reps, args.epoch_sample))
        print(json.dumps(rows[-1]), flush=True)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_models.json").write_text(json.dumps(rows, indent=2))
    print("\n| model | preset | params | torch p50/p99 µs | onnx p50/p99 µs | s/epoch (30 d) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        torch_cell = f"{r['torch_p50_us']:.0f} / {r['torch_p99_us']:.0f}" if "torch_p50_us" in r else "–"
        epoch = f"{r['epoch_s_30d']:.0f}" if "epoch_s_30d" in r else "–"
        print(
            f"| {r['model']} | {r['preset']} | {r.get('params', '–')} | {torch_cell} | "
            f"{r['onnx_p50_us']:.0f} / {r['onnx_p99_us']:.0f} | {epoch} |"
        )


if __name__ == "__main__":
    main()
