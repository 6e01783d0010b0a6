"""Tuning throughput: LightGBM trials per minute on 30 days of FILUSDT 1m candles, 1 vs 2 workers.

    .venv/bin/python benchmarks/bench_tune.py [--trials 6] [--workers 1 2] [--pruner none]

The shipped search space (`configs/search_spaces/lightgbm.yaml`) and training defaults (30-day
window, 3 inner folds of 14 days train / 2 days test) on the newest 30 days of the August 2023 file.
Each setting is a fresh study on a fresh SQLite file with K `pipelines.tuning.study` processes
(LightGBM threads = 2 // K, so both settings use the machine's 2 cores). Every study is given the
same parameter sets up front (drawn once from the space by a seeded random sampler and enqueued),
and the pruner is off by default, so both settings do exactly the same work.
Rates: `trials/min` over the trials' own run time (first start → last finish), and `incl. start-up`
over the whole wall time including interpreter/library start-up of the workers.

Prints a table and writes benchmarks/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"


def _configs(dst: Path, pruner: str) -> Path:
    shutil.copytree(REPO / "configs", dst)
    path = dst / "search_spaces" / "lightgbm.yaml"
    space = yaml.safe_load(path.read_text())
    space["pruner"] = {**space.get("pruner", {}), "kind": pruner}
    path.write_text(yaml.safe_dump(space))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--pruner", default="none", choices=["none", "median", "hyperband"])
    ap.add_argument("--threads", type=int, default=None, help="LightGBM threads per worker (default 2 // K)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tune.json")
    args = ap.parse_args()

    import optuna

    from pipelines.config import load_training_config
    from pipelines.sources.binance_files import read_many
    from pipelines.tuning.objective import prepare_tuning_data
    from pipelines.tuning.study import launch_workers, wait_workers

    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    configs = _configs(tmp / "configs", args.pruner)
    os.environ["KAIROS_CONFIGS_DIR"], os.environ["KAIROS_HOME"] = str(configs), str(tmp / "home")
    cfg = load_training_config(configs)
    candles = read_many([DATA / "FILUSDT-1m-2023-08.zip"], "FILUSDT", "1m")
    candles = candles.iloc[-(cfg.walk_forward.window + 200) :].reset_index(
        drop=True
    )  # 30 days + warm-up/labels
    rows = prepare_tuning_data(candles, cfg)
    data = rows.save(tmp / "rows.npz")
    from pipelines.tuning.objective import load_search_space, suggest

    space = load_search_space(configs, "lightgbm").params
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    param_sets = [suggest(draw.ask(), space) for _ in range(args.trials)]
    results = []
    for k in args.workers:
        url = f"sqlite:///{tmp / f'optuna-{k}.db'}"
        study = optuna.create_study(study_name=f"bench-{k}", storage=url, direction="maximize")
        for params in param_sets:
            study.enqueue_trial(params)
        t0 = time.perf_counter()
        procs = launch_workers(
            k,
            tmp / f"logs-{k}",
            study=f"bench-{k}",
            storage=url,
            model="lightgbm",
            symbol="FILUSDT",
            interval="1m",
            trials=args.trials,
            threads=args.threads or max(1, cfg.lightgbm.num_threads // k),
            data=data,
        )
        wait_workers(procs)
        wall = time.perf_counter() - t0
        trials = [
            t
            for t in optuna.load_study(study_name=f"bench-{k}", storage=url).trials
            if t.datetime_complete is not None
        ]
        span = (
            max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        ).total_seconds()
        per_trial = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
        results.append(
            {
                "workers": k,
                "threads_per_worker": args.threads or max(1, cfg.lightgbm.num_threads // k),
                "trials": len(trials),
                "states": sorted({t.state.name for t in trials}),
                "trials_per_min": 60 * len(trials) / span,
                "trials_per_min_incl_startup": 60 * len(trials) / wall,
                "median_trial_s": per_trial[len(per_trial) // 2],
                "wall_s": wall,
            }
        )
    out = {
        "benchmark": "tune",
        "model": "lightgbm",
        "candles": len(candles),
        "tuning_rows": int(len(rows.Y)),
        "inner_folds": yaml.safe_load((configs / "search_spaces" / "lightgbm.yaml").read_text())[
            "inner_folds"
        ],
        "pruner": args.pruner,
        "param_sets": param_sets,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine_note": "shared 2-core machine (~8 engineers): absolute rates vary with load",
        "results": results,
    }
    dst = args.out
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2))
    print(
        f"LightGBM tuning, {len(candles):,} FILUSDT 1m candles ({len(rows.Y):,} tuning rows), pruner={args.pruner}"
    )
    print(f"{'workers':>8} {'trials':>7} {'trials/min':>11} {'incl. start-up':>15} {'median trial s':>15}")
    for r in results:
        print(
            f"{r['workers']:>8} {r['trials']:>7} {r['trials_per_min']:>11.2f} {r['trials_per_min_incl_startup']:>15.2f} "
            f"{r['median_trial_s']:>15.1f}"
        )
    print(f"wrote {dst}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
