"""Run every benchmark in turn (`make bench`); each writes its JSON under benchmarks/results/.

Timings on a shared machine are noisy: each script records the load average beside its figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_features.py",
    "bench_default_model.py",
    "bench_serving.py",
    "bench_daily_retrain.py",
    "report_fil.py",
    "bench_tune.py",
    "bench_models.py",
    "sim_ab_stats.py",
]

if __name__ == "__main__":
    failed = [
        s for s in SCRIPTS if subprocess.run([sys.executable, str(HERE / s)], cwd=HERE.parent).returncode
    ]
    sys.exit(f"failed: {failed}" if failed else 0)
