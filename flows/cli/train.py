"""`kairos train`, `promote`, `retrain` and `demo`: the retraining loop from the command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flows.cli._common import IntervalOpt, SymbolOpt, TaskOpt, console, errors, fail, prepare, progress
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


def _print_gates(d) -> None:
    """The promotion gates of a newest-window decision, each with its numbers (all on the same rows)."""
    failed = set(d.failed_gates)
    m = d.metric

    def score(x: float | None) -> str:
        return "—" if x is None else (f"{100 * x:.2f}%" if m == "accuracy" else f"{x:.5g}")

    def verdict(names: set[str], reached: bool = True) -> str:
        if not reached:
            return "not reached"
        return "[red]fail[/]" if failed & names else "[green]pass[/]"

    t = Table(title=f"promotion gates — {d.n_rows:,} out-of-sample rows of the newest window")
    for col in ("gate", "result", "numbers"):
        t.add_column(col)
    checks = {"gates", "parity", "validation", "rows"}
    t.add_row("(c) parity + data validation", verdict(checks), ", ".join(sorted(failed & checks)) or "passed")
    base = {"beats_baselines"}
    if d.baseline_name or failed & base:
        vs = f"{score(d.challenger_score)} vs {d.baseline_name or 'baseline'} {score(d.baseline_score)}"
        if d.baseline_test is not None:
            vs += f"; {d.baseline_test.describe()}"
        t.add_row("(b) beats the best naive baseline", verdict(base, not failed & checks), vs)
    if d.champion_score is None:
        t.add_row("(a) beats the champion", "—", "first version: no champion yet")
    else:
        reached = not failed & (checks | base)
        text = f"{score(d.challenger_score)} vs champion {score(d.champion_score)}"
        if d.test is not None:
            text += f"; {d.test.describe()}; alpha {d.alpha}"
        t.add_row(
            "(a) beats the champion", verdict({"significance", "min_lift", "min_samples"}, reached), text
        )
    console.print(t)


def _print_decision(out: dict) -> None:
    d = out.get("decision")
    if d is None:
        console.print(f"promotion: {out.get('reason', 'nothing to decide')}")
        first = out.get("first_version")
        if first is not None:
            _print_gates(first)
            verdict = "[bold green]CHAMPION[/]" if first.promote else "[bold yellow]REFUSED[/]"
            console.print(f"first version (recorded): {verdict} — {first.reason}", soft_wrap=True)
        return
    _print_gates(d)
    verdict = "[bold green]PROMOTE[/]" if d.promote else "[bold yellow]KEEP CHAMPION[/]"
    console.print(f"promotion decision: {verdict} — {d.reason}", soft_wrap=True)


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
    symbols: str | None = typer.Option(
        None,
        "--symbols",
        help="A universe (comma-separated): one run of the daily-retrain deployment per symbol on the Prefect "
        "server's workers, then a summary (docs/scale-out.md). binance-files: each --path goes to the "
        "symbol its file name starts with.",
    ),
    deployment: str = typer.Option(
        "daily_retrain/daily-retrain", "--deployment", help="With --symbols: the deployment run per symbol."
    ),
) -> None:
    """The daily loop once: ingest → validate → train → register → promote."""
    prepare()
    opts = {"days": days, "exchange": exchange, "market": market, "paths": [str(p.resolve()) for p in path]}
    if symbols:
        _retrain_universe(symbols, interval, source, opts, model, task, deployment)
        return
    with errors(), progress():
        from flows.retrain import daily_retrain

        out = daily_retrain(symbol, interval, source, opts, model, task)
    _print_ingest(out["ingest"])
    _print_training(out)
    _print_decision(out["promote"])


def _retrain_universe(
    symbols: str, interval: str, source: str, opts: dict, model: str, task: str, deployment: str
) -> None:
    """`retrain --symbols`: fan out to the deployment, print one row per symbol, exit 1 if any failed."""
    syms = [s.strip() for s in symbols.split(",") if s.strip()]
    per_symbol = {}
    with errors():
        for sym in syms if opts["paths"] else ():
            mine = [p for p in opts["paths"] if Path(p).name.startswith(f"{sym}-")]
            if not mine:
                raise ValueError(
                    f"no --path file for {sym}: Binance dump names start with the symbol, e.g. {sym}-1m-2023-08.zip"
                )
            per_symbol[sym] = {"options": {**opts, "paths": mine}}
        from flows.fanout import retrain_universe

        out = retrain_universe(syms, interval, source, opts, model, task, per_symbol, deployment)
    t = Table(title=f"retrain-universe: {len(syms)} symbols via {deployment}")
    for col in ("symbol", "run", "version", "champion", "why"):
        t.add_column(col)
    for r in out["symbols"]:
        champion = "yes" if r["promoted"] else "no"
        t.add_row(r["symbol"], r["state_name"], r["version"] or "-", champion, r["why"])
    console.print(t)
    if out["failed"]:
        fail(
            f"{len(out['failed'])} of {len(syms)} symbols failed: {', '.join(out['failed'])} "
            "(each flow run's logs in the Prefect UI say why)"
        )


def demo(
    days: float = typer.Option(30.0, help="Days of synthetic 1m candles for the first run."),
    symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s"),
) -> None:
    """The loop three times on synthetic data with a planted, learnable signal, judged by the promotion gates.

    Run 1 trains a champion that learns the order-flow signal (`taker_buy_ratio`). Then the market changes
    (from the next UTC day a planted rejection-wick signal: a long upper wick predicts a down move): run 2
    ingests enough days for its newest walk-forward fold to train after the change, so its challenger has
    a real edge and passes the gates. Run 3 adds one quiet day: its challenger differs from the champion by
    noise only, and the gates refuse it (`pipelines.sources.synthetic.DEMO_SIGNAL`).
    """
    prepare()
    import math

    import pandas as pd

    from flows.runtime import Runtime

    with errors():
        from flows.cli.review import _print_decisions
        from flows.retrain import daily_retrain
        from pipelines.sources.synthetic import DEMO_SIGNAL, SyntheticConfig

        rt = Runtime.from_env()
        wf = rt.training_config().walk_forward
        last = rt.store().last_open_time(symbol, "1m")
        first = (
            pd.Timestamp(SyntheticConfig().start, tz="UTC")
            if last is None
            else last + pd.Timedelta(minutes=1)
        )
        change = (first + pd.Timedelta(days=days)).ceil("D")
        # run 2 reaches the change day, then covers the newest fold's training and test windows after it
        to_change = (change - first) / pd.Timedelta(days=1) - days
        after = to_change + math.ceil((wf.train_size + wf.purge + wf.test_size) / 1440)
        params = {**DEMO_SIGNAL, "change_from": f"{change:%Y-%m-%d}"}
        runs = (
            (days, "a market with a learnable order-flow signal → a champion that learns it"),
            (after, f"the market changes on {change:%Y-%m-%d} (a planted rejection-wick signal) → "
             "a challenger trained after it has a real edge"),
            (1.0, "one more day, nothing changed → a challenger different by noise only"),
        )  # fmt: skip
        console.rule("[bold]Kairos demo — SYNTHETIC data (seeded, not a real market)")
        for run, (d, story) in enumerate(runs, 1):
            console.rule(f"run {run}: ingest {d:g} day(s) → validate → train → register → promote")
            console.print(f"[bold]{story}[/]")
            with progress():
                out = daily_retrain(symbol, "1m", "synthetic", {"days": d, "params": params}, "lightgbm")
            _print_ingest(out["ingest"])
            _print_training(out)
            _print_decision(out["promote"])
        console.rule("every promotion decision, promoted or not")
        _print_decisions(rt.mlflow, out["registered"].name)
        s = rt.settings
        console.rule("look at it")
        console.print(f"mlflow ui --backend-store-uri {s.tracking_uri} --port 5000")
        console.print(f"kairos history --symbol {symbol}")
