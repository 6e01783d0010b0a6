"""`kairos tune`: Optuna on inner walk-forward folds, resumable, with several worker processes."""

from __future__ import annotations

import typer
from rich.table import Table

from flows.cli._common import TaskOpt, console, errors, prepare


def tune(
    symbol: str = typer.Option(..., "--symbol", "-s", help="Symbol as stored, e.g. FILUSDT."),
    model: str = typer.Option(
        "lightgbm", "--model", "-m", help="Model with configs/search_spaces/<model>.yaml."
    ),
    trials: int = typer.Option(
        20, "--trials", "-n", help="Total finished trials of the study (all workers)."
    ),
    workers: int = typer.Option(1, "--workers", "-k", help="Worker processes sharing the study."),
    storage: str | None = typer.Option(
        None,
        help="Optuna RDB URL (default sqlite:///$KAIROS_HOME/optuna.db; postgresql://... for many machines).",
    ),
    interval: str = typer.Option("1m", "--interval", "-i", help="Candle interval, e.g. 1m, 1h."),
    study: str | None = typer.Option(
        None,
        help="Study name (default <model>-<SYMBOL>-<interval>, task-prefixed for tasks other than returns).",
    ),
    task: str = TaskOpt,
) -> None:
    """Tune hyperparameters with Optuna on inner walk-forward folds (resumes the study if it exists)."""

    prepare()
    with errors():
        from flows.tune import tune as tune_flow

        out = tune_flow(symbol, model, trials, workers, storage, interval, study, task)
    c = out["counts"]
    t = Table(title=f"study {out['study_name']} ({out['storage']})")
    for col in (
        "complete",
        "pruned",
        "failed",
        "run now",
        "best trial",
        f"best {out['metric']} h{out['horizon']}",
    ):
        t.add_column(col, justify="right")
    t.add_row(
        str(c.get("COMPLETE", 0)),
        str(c.get("PRUNED", 0)),
        str(c.get("FAIL", 0)),
        str(out["trials_run"]),
        str(out["best_trial"]),
        f"{out['best_value']:.5f}",
    )
    console.print(t)
    console.print(
        "best parameters: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in out["best_params"].items()
        )
    )
    console.print(
        f"written to {out['path']} (kairos train picks them up); MLflow run {out['mlflow_run_id']}; "
        f"{out['seconds']:.0f}s"
    )
