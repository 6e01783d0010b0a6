"""Walk-forward report on real data: the default LightGBM vs the task's naive baselines on FILUSDT 1m.

Reads the four FILUSDT monthly dumps beside the repository, trains the task with configs/defaults.yaml
(+ configs/tasks/<task>.yaml; the newest 30 days: 6 rolling folds of 14 days train / 2 days test) and
writes benchmarks/results/fil_report.json (returns) or fil_<task>_report.json with every model/baseline
metric per horizon, pooled over the folds, plus per fold how often the model beat each baseline on the
task's promotion metric.

    python benchmarks/report_fil.py [--task returns|volatility] [--objective l2|huber|quantile|direction]
        [--symbol NEARUSDT] [--features core27,ta,mtf,risk]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="returns")
    ap.add_argument("--objective", default=None, help="the models' training objective (default: the task's)")
    ap.add_argument("--symbol", default="FILUSDT", help="a symbol with 1m monthly dumps in ../shared/data")
    ap.add_argument(
        "--features", default=None, help="feature set(s), e.g. core27,ta,mtf,risk (default: config)"
    )
    args = ap.parse_args()

    from pipelines.config import load_training_config
    from pipelines.sources.binance_files import read_many
    from pipelines.tasks import get_task, read_task_file
    from pipelines.training.walk_forward import train_walk_forward

    files = sorted(DATA.glob(f"{args.symbol}-1m-????-??.zip"))
    if not files:
        ap.error(f"no {args.symbol}-1m-YYYY-MM.zip files in {DATA}")
    candles = read_many(files, args.symbol, "1m").drop_duplicates("open_time", ignore_index=True)
    overrides = {"features": {"feature_set": args.features}} if args.features else None
    cfg = load_training_config(REPO / "configs", overrides, task=args.task)
    tf = read_task_file(REPO / "configs", args.task)
    task = get_task(args.task, cfg.labels.horizons, tf.options, args.objective or tf.objective)
    t0 = time.perf_counter()
    res = train_walk_forward(candles, symbol=args.symbol, interval="1m", cfg=cfg, task=task)
    wall = time.perf_counter() - t0
    print(
        f"{task.name}: {args.symbol} 1m, {cfg.features.feature_set}, {res.data_window['start']} → {res.data_window['end']}, "
        f"{len(res.fold_metrics)} folds, parity max |Δ| {res.parity_max_abs:.1e}, {wall:.0f} s"
    )
    metric, sign = task.promotion_metric, (1 if task.higher_is_better else -1)
    print(
        f"{'h':>3} {'who':<12} "
        + " ".join(f"{c.title:>24}" for c in task.columns)
        + f"  folds model better ({metric})"
    )
    wins: dict[str, dict[str, int]] = {}
    for h in res.horizons:
        for who in ("model", *task.baselines):
            m = res.report[who][f"h{h}"]
            won = ""
            if who != "model":
                k = sum(
                    sign * (f[f"model.h{h}.{metric}"] - f[f"{who}.h{h}.{metric}"]) > 0
                    for f in res.fold_metrics
                )
                wins.setdefault(f"h{h}", {})[who] = int(k)
                won = f"{k}/{len(res.fold_metrics)}"
            print(f"{h:>3} {who:<12} " + " ".join(f"{c.render(m):>24}" for c in task.columns) + f"  {won}")
    out = {
        "task": task.name,
        "objective": task.training_objective,
        "symbol": args.symbol,
        "feature_set": cfg.features.feature_set,
        "data_window": res.data_window,
        "folds": len(res.fold_metrics),
        "parity_max_abs": res.parity_max_abs,
        "train_wall_s": round(wall, 1),
        "load_avg": os.getloadavg(),
        "folds_model_better": {"metric": metric, **wins},
        "report": res.report,
    }
    name = "fil_report.json" if task.name == "returns" else f"fil_{task.name}_report.json"
    if args.objective:
        name = name.replace(".json", f"_{args.objective}.json")
    if args.symbol != "FILUSDT":
        name = name.replace("fil_", f"{args.symbol.lower()}_")
    if args.features:
        name = name.replace(".json", "_" + cfg.features.feature_set + ".json")
    dst = REPO / "benchmarks" / "results" / name
    dst.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
