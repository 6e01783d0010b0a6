"""A tuning worker process: `python -m flows.tune_worker --study NAME --storage URL --model M --symbol S --trials N`.

The entry point only: the study, storage and budget logic live in `pipelines.tuning.study`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipelines.tuning.objective import TuningError
from pipelines.tuning.study import make_storage, open_study, run_budget


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.tune_worker", description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--storage", required=True, help="Optuna RDB URL (sqlite:///... or postgresql://...)")
    ap.add_argument("--model", default="lightgbm")
    ap.add_argument("--symbol", required=True)
    ap.add_argument("--interval", default="1m")
    ap.add_argument("--task", default="returns", help="the task tuned for (configs/tasks/<task>.yaml)")
    ap.add_argument("--trials", type=int, required=True, help="trial budget of the whole study")
    ap.add_argument("--worker-index", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="LightGBM/torch threads per trial")
    ap.add_argument("--data", type=Path, default=None, help="tuning rows (.npz); default: the candle store")
    args = ap.parse_args(argv)

    import optuna

    from pipelines.config import load_promotion_policy, load_training_config
    from pipelines.contracts.errors import KairosError
    from pipelines.contracts.settings import get_settings
    from pipelines.tasks import load_task
    from pipelines.tuning.objective import (
        Objective,
        TuningData,
        for_task,
        load_search_space,
        prepare_tuning_data,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        s = get_settings()
        cfg = load_training_config(s.configs_dir, task=args.task)
        from pipelines.models import get_spec

        task = load_task(s.configs_dir, args.task, cfg.labels.horizons).for_family(
            get_spec(args.model, s.configs_dir).objectives, f"model {args.model}"
        )
        tuning = for_task(
            load_search_space(s.configs_dir, args.model),
            task,
            load_promotion_policy(s.configs_dir, args.task).horizon,
        )
        if args.data is not None:
            data = TuningData.load(args.data)
        else:
            from pipelines.store import open_store

            store = open_store(s.store_location)
            candles = store.load(args.symbol, args.interval)
            if candles.empty:
                raise TuningError(f"no candles stored for {args.symbol} {args.interval} in {store!r}")
            data = prepare_tuning_data(candles, cfg, task)
        study = open_study(
            make_storage(args.storage, tuning),
            args.study,
            tuning,
            args.worker_index,
            {"symbol": args.symbol, "interval": args.interval, "objective": task.training_objective},
        )
        objective = Objective(
            data,
            cfg,
            tuning,
            interval=args.interval,
            threads=args.threads,
            configs_dir=s.configs_dir,
            objective=task.training_objective,
            task=task,
        )
        ran = run_budget(study, objective, args.trials)
    except KairosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"worker": args.worker_index, "ran": ran, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
