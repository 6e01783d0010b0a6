"""`kairos` — the command line of the platform (typer). Every command has --help.

Long steps show progress bars; bad input ends with a one-line `error: ...` and exit code 1, never a
traceback (set KAIROS_DEBUG=1 to see one).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from flows.runtime import quiet_third_parties

app = typer.Typer(help="Kairos: ingest → validate → train walk-forward → ONNX → MLflow registry → serve.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
ingest_app = typer.Typer(help="Ingest candles from a source into the store (validated first).", no_args_is_help=True)
data_app = typer.Typer(help="Inspect the candle store.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(data_app, name="data")
# Piped output (CI logs, files) gets 160 columns instead of rich's 80, which truncated the report tables.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

SymbolOpt = typer.Option(..., "--symbol", "-s", help="Symbol as stored, e.g. FILUSDT.")
IntervalOpt = typer.Option("1m", "--interval", "-i", help="Candle interval, e.g. 1m, 1h.")


def _fail(msg: str) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _errors():
    """Turn expected failures into one line + exit 1."""
    from pipelines.errors import KairosError

    try:
        yield
    except typer.Exit:
        raise
    except (KairosError, FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("KAIROS_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(msg)
    except Exception as e:  # noqa: BLE001 - a CLI run ends in one line, never a traceback
        if os.environ.get("KAIROS_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _fail(f"{type(e).__name__}: {first} (run again with KAIROS_DEBUG=1 for the traceback)")


def _prepare() -> None:
    quiet_third_parties()
    # Prefect's console handler would print task/flow failure tracebacks; the API still gets every log.
    if not os.environ.get("KAIROS_VERBOSE"):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's temporary local server needs more than its default 20 s to start on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from pipelines.settings import get_settings

    s = get_settings()
    s.ensure_dirs()
    if "PREFECT_HOME" not in os.environ:
        (s.home_abs / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(s.home_abs / "prefect")


@contextmanager
def _progress():
    """Rich progress bars fed by the training code's `progress(stage, done, total)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.runtime import set_reporter

    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as prog:
        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total)
            prog.update(tasks[stage], completed=done, total=total)

        set_reporter(report)
        try:
            yield
        finally:
            set_reporter(None)


# ---------------------------------------------------------------- ingest
def _print_ingest(summary: dict) -> None:
    console.print(
        f"{summary['symbol']} {summary['interval']}: {summary['rows']:,} candles read, "
        f"{summary['added']:,} added to the store, {summary.get('gaps', 0)} gap(s) in the batch, "
        f"{summary.get('expectations', 0)} expectations checked"
    )


@ingest_app.command("binance-files")
def ingest_binance_files(
    paths: list[Path] = typer.Argument(..., help="Binance kline dumps (.zip or .csv; futures or spot)."),
    symbol: str = SymbolOpt,
    interval: str = IntervalOpt,
) -> None:
    """Ingest Binance kline dump files (monthly/daily .zip or .csv)."""
    _prepare()
    with _errors():
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"file not found: {p}")
        from flows.retrain import ingest

        _print_ingest(ingest("binance-files", symbol, interval, {"paths": [str(p.resolve()) for p in paths]}))


@ingest_app.command("synthetic")
def ingest_synthetic(
    symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s", help="Synthetic symbol (must contain SYNTH)."),
    interval: str = IntervalOpt,
    days: float = typer.Option(30.0, help="Days of candles to generate (continues after the last stored candle)."),
    seed: int = typer.Option(7, help="Seed of the synthetic market."),
) -> None:
    """Ingest seeded synthetic candles (labelled synthetic everywhere)."""
    _prepare()
    with _errors():
        from flows.retrain import ingest

        _print_ingest(ingest("synthetic", symbol, interval, {"days": days, "seed": seed}))


@ingest_app.command("ccxt")
def ingest_ccxt(
    exchange: str = typer.Option(..., help="ccxt exchange id, e.g. binance."),
    market: str = typer.Option(..., help="Exchange market symbol, e.g. FIL/USDT."),
    symbol: str = SymbolOpt,
    interval: str = IntervalOpt,
    since: Optional[str] = typer.Option(None, help="Backfill start (ISO, UTC); default: after the last stored candle."),
    until: Optional[str] = typer.Option(None, help="Backfill end (ISO, UTC); default: now."),
    exchange_config: Optional[str] = typer.Option(
        None, help='ccxt exchange constructor options as JSON, e.g. \'{"options": {"defaultType": "spot"}}\'.'),
) -> None:
    """Backfill or incrementally fetch candles from an exchange through ccxt."""
    _prepare()
    with _errors():
        import json

        from flows.retrain import ingest

        try:
            config = json.loads(exchange_config) if exchange_config else None
        except json.JSONDecodeError as e:
            raise ValueError(f"--exchange-config is not valid JSON: {e}") from None
        _print_ingest(ingest("ccxt", symbol, interval, {"exchange": exchange, "market": market, "since": since,
                                                        "until": until, "exchange_config": config}))


@data_app.command("status")
def data_status() -> None:
    """Coverage and gaps per symbol and interval."""
    _prepare()
    with _errors():
        from flows.runtime import Runtime

        st = Runtime.from_env().store().status()
        if st.empty:
            console.print("the store is empty; ingest candles first (kairos ingest --help)")
            return
        t = Table(title=f"candle store {Runtime.from_env().settings.store_path}")
        for col in ["symbol", "interval", "first", "last", "candles", "gaps", "missing", "longest gap"]:
            t.add_column(col, justify="right" if col in ("candles", "gaps", "missing") else "left")
        for r in st.itertuples(index=False):
            t.add_row(str(r.symbol), str(r.interval), str(r.first), str(r.last), f"{int(r.candles):,}",
                      str(int(r.gaps)), f"{int(r.missing):,}", str(r.longest_gap))
        console.print(t)


# ---------------------------------------------------------------- train / promote / retrain
def _report_table(result, title: str) -> Table:
    t = Table(title=title)
    for col in ["horizon", "who", "rows", "dir. accuracy [95% CI]", "IC", "RMSE", "P&L (fees)", "Sharpe", "max DD"]:
        t.add_column(col)
    for h in result.horizons:
        members = sorted(w for w in result.report if w.startswith("member_"))
        for who in ("model", *members, "always_up", "persistence", "reversal"):
            m = result.report[who][f"h{h}"]
            t.add_row(
                f"{h}" if who == "model" else "", who, f"{int(m['n']):,}",
                f"{m['accuracy']:.2%} [{m['accuracy_lo']:.2%}, {m['accuracy_hi']:.2%}]",
                f"{m['ic']:+.4f}" if m["ic"] == m["ic"] else "—",
                f"{m['rmse']:.2e}", f"{m['pnl_total_return']:+.2%}", f"{m['pnl_sharpe']:+.2f}",
                f"{m['pnl_max_drawdown']:.2%}",
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


@app.command()
def train(symbol: str = SymbolOpt, interval: str = IntervalOpt,
          model: str = typer.Option("lightgbm", "--model", "-m",
                                    help="lightgbm | lstm_attention | transformer | tft | mamba | ensemble"),
          preset: Optional[str] = typer.Option(None, help="Deep models: preset of configs/models/<model>.yaml "
                                                          "(small, tiny, seed000, ...).")) -> None:
    """Walk-forward train and evaluate vs naive baselines, export ONNX, register in MLflow."""
    _prepare()
    with _errors(), _progress():
        from flows.retrain import train as train_flow

        out = train_flow(symbol, interval, model, preset)
    _print_training(out)


@app.command()
def promote(symbol: str = SymbolOpt, interval: str = IntervalOpt) -> None:
    """Apply configs/promotion.yaml to the current challenger."""
    _prepare()
    with _errors():
        from flows.retrain import promote as promote_flow

        _print_decision(promote_flow(symbol, interval))


@app.command()
def retrain(symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s"), interval: str = IntervalOpt,
            source: str = typer.Option("synthetic", help="synthetic | ccxt | binance-files"),
            days: float = typer.Option(1.0, help="synthetic: days to add"),
            exchange: Optional[str] = typer.Option(None), market: Optional[str] = typer.Option(None),
            path: list[Path] = typer.Option([], help="binance-files: files to ingest"),
            model: str = typer.Option("lightgbm", "--model", "-m")) -> None:
    """The daily loop once: ingest → validate → train → register → promote."""
    _prepare()
    opts = {"days": days, "exchange": exchange, "market": market, "paths": [str(p.resolve()) for p in path]}
    with _errors(), _progress():
        from flows.retrain import daily_retrain

        out = daily_retrain(symbol, interval, source, opts, model)
    _print_ingest(out["ingest"])
    _print_training(out)
    _print_decision(out["promote"])


@app.command()
def history(symbol: str = typer.Option(None, "--symbol", "-s"), interval: str = IntervalOpt,
            model: Optional[str] = typer.Option(None, "--model", help="Registered model name (instead of --symbol).")) -> None:
    """Every alias move (from, to, reason, time) and which version served as champion when."""
    _prepare()
    with _errors():
        from flows.runtime import Runtime
        from registry.client import model_name
        from registry.history import history as alias_history, sync_external_moves

        if not (symbol or model):
            raise ValueError("give --symbol SYM or --model NAME")
        name = model or model_name(symbol, interval)
        client = Runtime.from_env().mlflow
        sync_external_moves(client, name)
        moves = alias_history(client, name)
        if not moves:
            raise ValueError(f"no alias moves recorded for {name}; train a model first (kairos train --symbol ...)")
        t = Table(title=f"alias history — {name}")
        for col in ["time (UTC)", "alias", "from", "to", "actor", "reason"]:
            t.add_column(col)
        for m in moves:
            t.add_row(f"{m.time:%Y-%m-%d %H:%M:%S}", m.alias, str(m.from_version or "—"), str(m.to_version or "—"),
                      m.actor, m.reason)
        console.print(t)
        from flows.review import default_predlog_dir
        from registry.reviews import served_history

        served = served_history(client, name, default_predlog_dir(Runtime.from_env()))
        t = Table(title=f"which version served as champion when, with live metrics (h1) — {name}")
        for col in ["version", "from (UTC)", "until (UTC)", "requests", "resolved", "accuracy [95% CI]", "IC", "P&L"]:
            t.add_column(col)
        for r in served.itertuples(index=False):
            acc = (f"{r.accuracy:.2%} [{r.accuracy_ci_low:.2%}, {r.accuracy_ci_high:.2%}]"
                   if r.accuracy == r.accuracy else "—")
            t.add_row(str(r.version), f"{r.start:%Y-%m-%d %H:%M:%S}",
                      f"{r.end:%Y-%m-%d %H:%M:%S}" if r.end == r.end and r.end is not None else "now",
                      f"{int(r.requests):,}", f"{int(r.resolved):,}", acc,
                      f"{r.ic:+.4f}" if r.ic == r.ic else "—",
                      f"{r.pnl_total_return:+.2%}" if r.pnl_total_return == r.pnl_total_return else "—")
        console.print(t)


@app.command()
def demo(days: float = typer.Option(30.0, help="Days of synthetic 1m candles for the first run."),
         symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s")) -> None:
    """The whole loop twice on synthetic data: champion, then a challenger judged by the promotion policy."""
    _prepare()
    from flows.runtime import Runtime

    with _errors():
        from flows.retrain import daily_retrain

        console.rule("[bold]Kairos demo — SYNTHETIC data (seeded, not a real market)")
        for run, d in ((1, days), (2, 2.0)):
            console.rule(f"run {run}: ingest {d:g} day(s) → validate → train → register → promote")
            with _progress():
                out = daily_retrain(symbol, "1m", "synthetic", {"days": d}, "lightgbm")
            _print_ingest(out["ingest"])
            _print_training(out)
            _print_decision(out["promote"])
        s = Runtime.from_env().settings
        console.rule("look at it")
        console.print(f"mlflow ui --backend-store-uri {s.tracking_uri} --port 5000")
        console.print(f"kairos history --symbol {symbol}")


def _mount_optional() -> None:
    """Commands owned by other modules (serving, tuning, review) register themselves if present."""
    import importlib

    for mod in ("serving.cli", "flows.tune_cli", "flows.review_cli"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        if hasattr(m, "register"):
            m.register(app)


_mount_optional()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
