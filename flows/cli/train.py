"""`kairos train`, `promote`, `retrain` and `demo`: the retraining loop from the command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flows.cli._common import IntervalOpt, SymbolOpt, TaskOpt, console, errors, prepare, progress
from flows.cli.data import _print_ingest


def _report_table(result, title: str) -> Table:
    """The task's columns for the model (and ensemble members) beside its baselines, per horizon."""
    from pipelines.tasks import task_class

    task = task_class(result.task)
    t = Table(title=title)
    for col in ["horizon", "who", *(c.title for c in task.columns)]:
        t.add_column(col)
    members = sorted(w for w in result.report if w.startswith("member_"))
    for h in result.horizons:
        for who in ("model", *members, *task.baselines):
            m = result.report[who][f"h{h}"]
            t.add_row(
                f"{h}" if who == "model" else "",
                who,
                *(c.render(m) for c in task.columns),
                style="bold" if who == "model" else None,
            )
    return t


def _print_training(out: dict) -> None:
    result, reg = out["result"], out["registered"]
    label = " (SYNTHETIC data)" if result.manifest.synthetic else ""
    console.print(_report_table(result, f"walk-forward, all test folds pooled — {reg.name}{label}"))
    console.print(
        f"registered {reg.name} version {reg.version} (run {reg.run_id}); ONNX parity max |Δ| = "
        f"{result.parity_max_abs:.2e}"
    )


def _print_decision(out: dict) -> None:
    d = out.get("decision")
    if d is None:
        console.print(f"promotion: {out.get('reason', 'nothing to decide')}")
        return
    verdict = "[bold green]PROMOTE[/]" if d.promote else "[bold yellow]KEEP CHAMPION[/]"
    console.print(f"promotion decision: {verdict} — {d.reason}")


def train(
    symbol: str | None = typer.Option(
        None,
        "--symbol",
        "-s",
        help="Symbol as stored, e.g. FILUSDT (or --symbols/--universe for a pooled model).",
    ),
    interval: str = IntervalOpt,
    model: str = typer.Option(
        "lightgbm",
        "--model",
        "-m",
        help="A model family of configs/models/ (lightgbm, lstm_attention, transformer, "
        "tft, mamba, ensemble, ...).",
    ),
    preset: str | None = typer.Option(
        None,
        help="A preset of configs/models/<model>.yaml (deep models: small, tiny, seed000; lightgbm: fast).",
    ),
    task: str = TaskOpt,
    features: str | None = typer.Option(
        None,
        "--features",
        help="Feature sets for this run, e.g. core27,ta,mtf (default: configs/defaults.yaml features).",
    ),
    symbols: str | None = typer.Option(
        None,
        "--symbols",
        help="Pool one model over these symbols (comma-separated; each stored window is one segment), "
        "registered as <task>-<UNIVERSE>-<interval>; needs --universe.",
    ),
    universe: str | None = typer.Option(
        None, "--universe", help="Name of the pooled model's universe, e.g. PUMPS."
    ),
    events: Path | None = typer.Option(
        None, "--events", help="CSV of announced events (symbol, pump_time_utc) for event-level evaluation."
    ),
    test_windows: int = typer.Option(
        10, "--test-windows", help="Pooled: the latest windows held out for testing (trained on the earlier)."
    ),
) -> None:
    """Walk-forward train and evaluate vs the task's naive baselines, export ONNX, register in MLflow."""
    prepare()
    with errors():
        from pipelines.tasks import task_class

        if symbol and not (symbols or universe) and task_class(task).pooled:
            symbols, universe = (
                symbol,
                symbol,
            )  # one symbol's event windows: registered <task>-<SYMBOL>-<interval>
    if symbols or universe:
        with errors():
            if not (symbols and universe):
                raise ValueError("--symbols and --universe go together (a pooled model over a universe)")
        with errors(), progress():
            from flows.train import train_universe

            out = train_universe(
                [s.strip() for s in symbols.split(",") if s.strip()],
                universe,
                interval,
                task,
                str(events) if events else None,
                test_windows,
                features,
                model,
                preset,
            )
        _print_pooled(out)
        return
    with errors():
        if not symbol:
            raise ValueError("give --symbol (one symbol) or --symbols with --universe (a pooled model)")
    with errors(), progress():
        from flows.train import train as train_flow

        out = train_flow(symbol, interval, model, preset, task, features)
    _print_training(out)


def _print_pooled(out: dict) -> None:
    """The pooled run: test-window metrics, threat-level rates and event detection."""
    result, reg = out["result"], out["registered"]
    extra = result.manifest.extra
    tests = result.data_window.get("test_segments", [])
    console.print(_report_table(result, f"held-out windows ({len(tests)}, latest) — {reg.name}"))
    t = Table(title="threat levels on the held-out windows' normal minutes")
    for col in ("level", "stated rate", "realised rate", "minutes fired"):
        t.add_column(col)
    for k, r in extra.get("level_rates_test", {}).items():
        t.add_row(
            k.removeprefix("level"),
            f"{r['stated']:.2%}",
            f"{r['realised']:.3%}",
            f"{r['fired']:,} / {r['normal_minutes']:,}",
        )
    console.print(t)
    t = Table(title="announced events (held-out windows)")
    for col in ("alarm", "events", "flagged within 2 min", "median delay, min", "false alerts / day"):
        t.add_column(col)
    for who, e in extra.get("event_detection_test", {}).items():
        t.add_row(
            who,
            f"{e['events']:.0f}",
            f"{e['detected_2min']:.0%}",
            f"{e['median_delay_min']:.1f}",
            f"{e['false_alerts_per_day']:.2f}",
        )
    console.print(t)
    console.print(
        f"registered {reg.name} version {reg.version} (run {reg.run_id}); universe "
        f"{extra['universe']['symbols']}; ONNX parity max |Δ| = {result.parity_max_abs:.2e}"
    )


def promote(symbol: str = SymbolOpt, interval: str = IntervalOpt, task: str = TaskOpt) -> None:
    """Apply configs/promotion.yaml (+ the task's overrides) to the current challenger."""
    prepare()
    with errors():
        from flows.promote import promote as promote_flow

        _print_decision(promote_flow(symbol, interval, task))


def retrain(
    symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s"),
    interval: str = IntervalOpt,
    source: str = typer.Option("synthetic", help="synthetic | ccxt | binance-files"),
    days: float = typer.Option(1.0, help="synthetic: days to add"),
    exchange: str | None = typer.Option(None),
    market: str | None = typer.Option(None),
    path: list[Path] = typer.Option([], help="binance-files: files to ingest"),
    model: str = typer.Option("lightgbm", "--model", "-m"),
    task: str = TaskOpt,
) -> None:
    """The daily loop once: ingest → validate → train → register → promote."""
    prepare()
    opts = {"days": days, "exchange": exchange, "market": market, "paths": [str(p.resolve()) for p in path]}
    with errors(), progress():
        from flows.retrain import daily_retrain

        out = daily_retrain(symbol, interval, source, opts, model, task)
    _print_ingest(out["ingest"])
    _print_training(out)
    _print_decision(out["promote"])


def demo(
    days: float = typer.Option(30.0, help="Days of synthetic 1m candles for the first run."),
    symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s"),
) -> None:
    """The whole loop twice on synthetic data: champion, then a challenger judged by the promotion policy."""
    prepare()
    from flows.runtime import Runtime

    with errors():
        from flows.retrain import daily_retrain

        console.rule("[bold]Kairos demo — SYNTHETIC data (seeded, not a real market)")
        for run, d in ((1, days), (2, 2.0)):
            console.rule(f"run {run}: ingest {d:g} day(s) → validate → train → register → promote")
            with progress():
                out = daily_retrain(symbol, "1m", "synthetic", {"days": d}, "lightgbm")
            _print_ingest(out["ingest"])
            _print_training(out)
            _print_decision(out["promote"])
        s = Runtime.from_env().settings
        console.rule("look at it")
        console.print(f"mlflow ui --backend-store-uri {s.tracking_uri} --port 5000")
        console.print(f"kairos history --symbol {symbol}")
