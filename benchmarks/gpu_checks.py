"""The GPU checks of the sequence zoo in one go (issue 17): what a short session on a CUDA machine fills in.

    .venv/bin/python benchmarks/gpu_checks.py [--fast] [--out benchmarks/results/gpu_checks.json]

Steps, each reported as "ok", "skipped: <why>", "rejected by its gate: <by how much>" (a reduced-precision
graph outside its tolerance: a finding, not an error) or "failed: <error>" (exit status 1 only then):
1. `env`: torch / onnxruntime versions, the CUDA device, the onnxruntime providers of this build.
2. `train/<model>:<preset>/cpu` and `.../cuda-amp`: one epoch of the zoo's training loop (Lightning,
   `SequenceRegressor.fit`) on the same windows, on the CPU (float32) and on CUDA with automatic mixed
   precision (`device: cuda`, `mixed_precision: true`: bf16 autocast where the GPU has it, pinned host
   memory); windows per second and the estimated seconds per epoch of 30 days of 1m windows.
3. `serve/<model>:<preset>/<provider>`: single-window [1, T, F] latency p50 / p99 per onnxruntime
   provider: TensorrtExecutionProvider (FP16 engine, engine + timing cache in `--trt-cache`),
   CUDAExecutionProvider (fp32 graph, and the gated fp16 variant), CPUExecutionProvider (fp32, and the
   gated int8 / optimized variants); the providers the session really got are recorded.
4. `parity/<model>:<preset>/<provider>`: the same sessions on the gate windows: max abs difference
   from the native PyTorch model (CPU, float32) and, against the fp32 CPU graph, sign agreement and
   max difference relative to the spread of the predictions (`variants.gate_variant`, the variant's
   default tolerance; a provider whose numbers change decisions beyond it is reported failed).

Without CUDA every GPU step says "skipped: no CUDA" and the CPU steps still run, so the script is
tested on CPU-only machines (`tests/unit/test_gpu_checks.py`, `--fast`). `--fast`: tiny presets,
synthetic windows, few repetitions (about a minute on 2 busy cores). Default: each family's default
preset plus the transformer's `seed000`, on real FILUSDT core27 windows when ../shared/data has them.
On a GPU host install the GPU build first (`pip install onnxruntime-gpu`, plus TensorRT for its
provider); a missing provider is "skipped: <provider> not in this onnxruntime build".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EPOCH_WINDOWS = 43_200  # 30 days of 1m candles
FULL = [
    ("lstm_attention", "small"),
    ("transformer", "small"),
    ("transformer", "seed000"),
    ("tft", "small"),
    ("mamba", "small"),
]
FAST = [("lstm_attention", "tiny"), ("transformer", "tiny"), ("tft", "tiny"), ("mamba", "tiny")]
TRT, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
NO_CUDA = "skipped: no CUDA"


class Checks:
    """Runs steps and records each as ok / skipped / failed, with its figures."""

    def __init__(self, cuda: bool, providers: list[str]) -> None:
        self.cuda, self.providers = cuda, providers
        self.steps: list[dict[str, Any]] = []

    def skip_reason(self, needs_cuda: bool, provider: str | None) -> str | None:
        if needs_cuda and not self.cuda:
            return NO_CUDA
        if provider is not None and provider not in self.providers:
            return f"skipped: {provider} not in this onnxruntime build (pip install onnxruntime-gpu)"
        return None

    def run(
        self,
        name: str,
        fn: Callable[[], dict[str, Any]],
        *,
        needs_cuda: bool = False,
        provider: str | None = None,
    ) -> dict[str, Any] | None:
        reason = self.skip_reason(needs_cuda, provider)
        t0 = time.perf_counter()
        if reason is not None:
            step: dict[str, Any] = {"step": name, "status": reason}
            result = None
        else:
            try:
                result = fn()
                status = "ok"
                if isinstance(result, dict) and result.get("failed"):
                    status = f"failed: {result['failed']}"
                elif isinstance(result, dict) and result.get("rejected"):
                    status = f"rejected by its gate: {result['rejected']}"
                step = {"step": name, "status": status, **(result or {})}
            except Exception as e:  # noqa: BLE001 - a step's failure is reported, the others still run
                result = None
                step = {
                    "step": name,
                    "status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    "traceback": traceback.format_exc(limit=3),
                }
        step["seconds"] = round(time.perf_counter() - t0, 2)
        step["loadavg_1m"] = round(os.getloadavg()[0], 2)
        self.steps.append(step)
        print(f"{name:<52} {step['status']}{_figures(step)}", flush=True)
        return result

    @property
    def failed(self) -> list[str]:
        return [s["step"] for s in self.steps if s["status"].startswith("failed")]


def _figures(step: dict[str, Any]) -> str:
    keys = ("windows_per_s", "epoch_s_30d", "p50_us", "p99_us", "max_abs_vs_native", "sign_agreement")
    shown = [f"{k}={step[k]:.4g}" for k in keys if isinstance(step.get(k), (int, float))]
    return ("  " + " ".join(shown)) if shown else ""


# -- data ----------------------------------------------------------------------------------------
def synthetic_windows(n: int, T: int, F: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows (n, T, F) of noise whose feature 0 is a return series; labels = its next 1..5 sums."""
    from pipelines.training.windows import window_dataset

    rng = np.random.default_rng(seed)
    m = n + T + 5
    X = rng.standard_normal((m, F)).astype(np.float32)
    X[:, 0] *= 1e-3
    c = np.concatenate([[0.0], np.cumsum(X[:, 0].astype(np.float64))])  # c[k] = sum of the first k
    Y = np.full((m, 5), np.nan)
    for j, h in enumerate(range(1, 6)):
        Y[: m - h, j] = c[np.arange(m - h) + 1 + h] - c[np.arange(m - h) + 1]
    W, Yw, _ = window_dataset(X, Y, T)
    return np.ascontiguousarray(W[:n]), Yw[:n]


def real_windows(n_candles: int) -> tuple[np.ndarray, np.ndarray] | None:
    files = sorted((REPO.parent / "shared" / "data").glob("FILUSDT-1m-2023-*.zip"))
    if not files:
        return None
    from pipelines.features import feature_matrix
    from pipelines.sources.binance_files import read_klines
    from pipelines.tasks.returns import make_labels
    from pipelines.training.windows import window_dataset

    candles = read_klines(files[0], "FILUSDT", "1m").iloc[:n_candles].reset_index(drop=True)
    X = feature_matrix(candles, "core27")
    Y = make_labels(candles["close"].to_numpy(float), [1, 2, 3, 4, 5])
    W, Yw, _ = window_dataset(X, Y, 60)
    return np.ascontiguousarray(W), Yw


# -- steps ---------------------------------------------------------------------------------------
def percentiles(run: Callable[[], Any], reps: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        run()
    ns = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        run()
        ns[i] = time.perf_counter_ns() - t0
    return {
        "p50_us": round(float(np.percentile(ns, 50)) / 1e3, 1),
        "p99_us": round(float(np.percentile(ns, 99)) / 1e3, 1),
    }


def train_step(arch: str, preset: str, device: str, W, Y, n_train: int, threads: int) -> tuple[dict, Any]:
    from pipelines.config import load_model_preset
    from pipelines.contracts.settings import get_settings
    from pipelines.models.sequence import SequenceRegressor
    from pipelines.models.sequence.base import amp_precision, resolve_device

    overrides = {
        "max_epochs": 1,
        "num_threads": threads,
        "device": device,
        "mixed_precision": device == "cuda",
        "sequence_length": W.shape[1],
    }
    cfg = load_model_preset(get_settings().configs_dir, arch, preset, overrides)
    model = SequenceRegressor(cfg, W.shape[2], range(1, Y.shape[1] + 1))
    n_val = max(64, n_train // 8)
    t0 = time.perf_counter()
    model.fit(
        W[:n_train],
        Y[:n_train],
        X_val=W[n_train + 5 : n_train + 5 + n_val],
        Y_val=Y[n_train + 5 : n_train + 5 + n_val],
    )
    s = time.perf_counter() - t0
    resolved = resolve_device(device)
    return {
        "device": resolved,
        "precision": amp_precision(resolved, cfg.mixed_precision),
        "train_windows": n_train,
        "fit_s": round(s, 2),
        "windows_per_s": round(n_train / s, 1),
        "epoch_s_30d": round(s * EPOCH_WINDOWS / n_train, 1),
    }, model


def session_for(graph: bytes, providers: list[Any]):
    import onnxruntime as ort

    from pipelines.contracts.onnx import make_session

    so = ort.SessionOptions()  # serving's single-window settings
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return make_session(graph, providers=providers, options=so)


def run_rows(sess, X: np.ndarray, batch: int = 256) -> np.ndarray:
    parts = [sess.run(["returns"], {"features": X[i : i + batch]})[0] for i in range(0, len(X), batch)]
    return np.concatenate(parts).astype(np.float64)


def serve_and_parity(
    checks: Checks, label: str, model, graphs: dict[str, bytes], gate_X, gate_Y, args, trt_cache: Path
) -> None:
    from pipelines.models.sequence.variants import DEFAULT_TOLERANCES, _direction_accuracy

    T, F = gate_X.shape[1:]
    trt_opts = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(trt_cache),
        "trt_timing_cache_enable": True,
        # one engine for every batch size used here (1 for latency, up to 256 for parity)
        "trt_profile_min_shapes": f"features:1x{T}x{F}",
        "trt_profile_opt_shapes": f"features:1x{T}x{F}",
        "trt_profile_max_shapes": f"features:256x{T}x{F}",
    }
    plans = [  # (provider label, graph variant, providers list, needs CUDA, provider needed, gate tolerance)
        ("tensorrt-fp16", "fp32", [(TRT, trt_opts), CUDA_EP, CPU_EP], True, TRT, "fp16"),
        ("cuda-fp32", "fp32", [CUDA_EP, CPU_EP], True, CUDA_EP, "optimized"),
        ("cuda-fp16", "fp16", [CUDA_EP, CPU_EP], True, CUDA_EP, "fp16"),
        ("cpu-fp32", "fp32", [CPU_EP], False, CPU_EP, "optimized"),
        ("cpu-optimized", "optimized", [CPU_EP], False, CPU_EP, "optimized"),
        ("cpu-int8", "int8", [CPU_EP], False, CPU_EP, "int8"),
    ]
    window = {"features": np.ascontiguousarray(gate_X[-1:])}
    native = model.predict(gate_X)
    ref = run_rows(session_for(graphs["fp32"], [CPU_EP]), gate_X)  # the fp32 graph on the CPU
    for name, variant, providers, needs_cuda, provider, tol in plans:
        holder: dict[str, Any] = {}

        def serve(variant=variant, providers=providers, holder=holder) -> dict[str, Any]:
            sess = session_for(graphs[variant], providers)
            holder["sess"] = sess
            out = {"graph": variant, "providers": sess.get_providers()}
            return out | percentiles(lambda: sess.run(None, window), args.reps, args.warmup)

        checks.run(f"serve/{label}/{name}", serve, needs_cuda=needs_cuda, provider=provider)

        def parity(holder=holder, variant=variant, tol=tol, name=name) -> dict[str, Any]:
            sess = holder.get("sess")
            if sess is None:
                raise RuntimeError("its serve step did not open a session")
            got = run_rows(sess, gate_X)
            diff = np.abs(got - ref)
            rel = float(diff.max()) / (float(ref.std()) or 1.0)
            same = np.sign(got) == np.sign(ref)
            acc_ref, acc_got = _direction_accuracy(ref, gate_Y), _direction_accuracy(got, gate_Y)
            t = DEFAULT_TOLERANCES[tol]
            out = {
                "graph": variant,
                "max_abs_vs_native": float(np.max(np.abs(got - native))),
                "max_abs_vs_fp32_cpu": float(diff.max()),
                "rel_diff": rel,
                "sign_agreement": float(same.mean()),
                "accuracy_drop_pp": max(100 * (a - b) for a, b in zip(acc_ref, acc_got)),
                "tolerance": vars(t),
            }
            problems = []
            if not rel <= t.max_rel_diff:
                problems.append(f"max diff {diff.max():.3g} = {rel:.3g} x the spread > {t.max_rel_diff:g}")
            if t.min_sign_agreement is not None and same.mean() < t.min_sign_agreement:
                problems.append(f"sign agreement {same.mean():.2%} < {t.min_sign_agreement:.2%}")
            if out["accuracy_drop_pp"] > t.max_accuracy_drop_pp:
                problems.append(
                    f"accuracy drop {out['accuracy_drop_pp']:.2f} pp > {t.max_accuracy_drop_pp:g} pp"
                )
            if problems:  # a reduced-precision graph outside its tolerance is rejected, not broken
                out["rejected" if variant != "fp32" or "fp16" in name else "failed"] = "; ".join(problems)
            return out

        checks.run(f"parity/{label}/{name}", parity, needs_cuda=needs_cuda, provider=provider)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny presets, synthetic windows, few repetitions")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_checks.json")
    ap.add_argument("--presets", default=None, help="model:preset,... (default: by mode)")
    ap.add_argument("--train-windows", type=int, default=None, help="windows per training epoch (GPU)")
    ap.add_argument("--cpu-train-windows", type=int, default=None, help="windows per CPU epoch (rate scaled)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--trt-cache", type=Path, default=None, help="TensorRT engine/timing cache directory")
    args = ap.parse_args(argv)
    fast = args.fast
    args.reps = args.reps or (30 if fast else 500)
    args.warmup = 5 if fast else 50
    n_gpu = args.train_windows or (256 if fast else 8192)
    n_cpu = args.cpu_train_windows or (256 if fast else 1024)
    presets = (
        [tuple(p.split(":", 1)) for p in args.presets.split(",")]
        if args.presets
        else (FAST if fast else FULL)
    )

    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    providers = ort.get_available_providers()
    checks = Checks(cuda, providers)
    checks.run(
        "env",
        lambda: {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else None,
            "ort_providers": providers,
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
        },
    )
    data = None if fast else real_windows(8000 + 60 + n_gpu)
    if data is None:
        T = 16 if fast else 60
        data = synthetic_windows(max(n_gpu, n_cpu) + 3500, T, 8 if fast else 27)
    W, Y = data
    gate_X, gate_Y = W[-2000:], Y[-2000:]
    threads = min(4, os.cpu_count() or 1)
    trt_cache = args.trt_cache or (
        Path(tempfile.mkdtemp(prefix="kairos-trt-")) if cuda and TRT in providers else Path("unused")
    )
    for arch, preset in presets:
        label = f"{arch}:{preset}"
        holder: dict[str, Any] = {}

        def cpu_train(arch=arch, preset=preset, holder=holder) -> dict[str, Any]:
            row, holder["cpu_model"] = train_step(
                arch, preset, "cpu", W, Y, min(n_cpu, len(W) - 2600), threads
            )
            return row

        got = checks.run(f"train/{label}/cpu", cpu_train)

        def cuda_train(arch=arch, preset=preset, holder=holder) -> dict[str, Any]:
            if not fast:  # CUDA context, cuDNN and autotuning warm-up, outside the timing
                train_step(arch, preset, "cuda", W, Y, 256, threads)
            row, holder["model"] = train_step(arch, preset, "cuda", W, Y, min(n_gpu, len(W) - 2600), threads)
            return row

        cuda_row = checks.run(f"train/{label}/cuda-amp", cuda_train, needs_cuda=True)
        if got and cuda_row:
            checks.steps[-1]["speedup_vs_cpu"] = round(cuda_row["windows_per_s"] / got["windows_per_s"], 2)

        def export(holder=holder) -> dict[str, Any]:
            from pipelines.models.sequence.variants import build_variant

            m = holder.get("model") or holder.get("cpu_model")  # the CUDA-trained one when there is one
            if m is None:
                raise RuntimeError("no trained model to export (both training steps failed or were skipped)")
            holder["model"] = m
            fp32 = m.to_onnx()
            holder["graphs"] = {
                "fp32": fp32,
                **{v: build_variant(fp32, v) for v in ("optimized", "int8", "fp16")},
            }
            return {"kib": {k: round(len(g) / 1024, 1) for k, g in holder["graphs"].items()}}

        checks.run(f"export/{label}", export)
        model = holder.get("model")
        if model is not None and "graphs" in holder:
            serve_and_parity(checks, label, model, holder["graphs"], gate_X, gate_Y, args, trt_cache)
    result = {
        "mode": "fast" if fast else "full",
        "cuda": cuda,
        "steps": checks.steps,
        "failed": checks.failed,
        "skipped": [s["step"] for s in checks.steps if s["status"].startswith("skipped")],
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    n_ok = sum(s["status"] == "ok" for s in checks.steps)
    print(
        f"\n{n_ok} ok, {len(result['skipped'])} skipped, {len(checks.failed)} failed; wrote {args.out}",
        flush=True,
    )
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
