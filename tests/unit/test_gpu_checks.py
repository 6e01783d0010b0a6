"""benchmarks/gpu_checks.py on a machine without CUDA: every GPU step is skipped (not failed), exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_checks_fast_on_cpu_skips_every_gpu_step(tmp_path):
    out = tmp_path / "gpu_checks.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a GPU host runs this test as a CPU-only one
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_checks.py"), "--fast", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = {s["step"]: s["status"] for s in result["steps"]}
    assert result["cuda"] is False and result["failed"] == []
    gpu = [name for name in steps if "cuda" in name or "tensorrt" in name]
    cpu = [name for name in steps if name not in gpu]
    archs = ("lstm_attention", "transformer", "tft", "mamba")
    # per family: training on CUDA with AMP, serving + parity on TensorRT FP16, CUDA fp32 and CUDA fp16
    assert len(gpu) == 7 * len(archs)
    assert all(steps[name] == "skipped: no CUDA" for name in gpu), {n: steps[n] for n in gpu}
    assert all(steps[name] == "ok" for name in cpu), {n: steps[n] for n in cpu}
    for arch in archs:
        assert f"train/{arch}:tiny/cuda-amp" in gpu and f"serve/{arch}:tiny/tensorrt-fp16" in gpu
        assert f"train/{arch}:tiny/cpu" in cpu and f"parity/{arch}:tiny/cpu-int8" in cpu
    assert "skipped: no CUDA" in proc.stdout
