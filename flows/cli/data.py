"""`kairos ingest ...` and `kairos data ...`: candles into the store, and what the store holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flows.cli._common import IntervalOpt, SymbolOpt, console, errors, prepare

ingest_app = typer.Typer(
    help="Ingest candles from a source into the store (validated first).", no_args_is_help=True
)
data_app = typer.Typer(help="Inspect the candle store; prune old logs and runs.", no_args_is_help=True)


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
    prepare()
    with errors():
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"file not found: {p}")
        from flows.ingest import ingest

        _print_ingest(ingest("binance-files", symbol, interval, {"paths": [str(p.resolve()) for p in paths]}))


@ingest_app.command("trades")
def ingest_trades(
    paths: list[Path] = typer.Argument(
        ..., help="Trade files of one symbol: ccxt trade CSVs or Binance aggTrades dumps (.zip or .csv)."
    ),
    symbol: str = SymbolOpt,
    interval: str = typer.Option("1m", "--interval", "-i", help="Candle interval (trades make 1m only)."),
) -> None:
    """Build 1-minute candles and per-minute taker-order facts from trade files, and store both."""
    prepare()
    with errors():
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"file not found: {p}")
        from flows.ingest import ingest_trades as flow

        summary = flow([str(p.resolve()) for p in paths], symbol, interval)
        _print_ingest(summary)
        overlap = summary.get("overlapping", 0)
        console.print(
            f"{summary['trades']:,} trades ({summary['duplicates_dropped']:,} exact duplicates dropped), "
            f"{summary['orders']:,} taker orders, {summary['minutes_added']:,} trade minutes added"
            + (f"; {overlap:,} trades held by two overlapping files counted once" if overlap else "")
        )


@ingest_app.command("synthetic")
def ingest_synthetic(
    symbol: str = typer.Option("SYNTHUSDT", "--symbol", "-s", help="Synthetic symbol (must contain SYNTH)."),
    interval: str = IntervalOpt,
    days: float = typer.Option(
        30.0, help="Days of candles to generate (continues after the last stored candle)."
    ),
    seed: int = typer.Option(7, help="Seed of the synthetic market."),
) -> None:
    """Ingest seeded synthetic candles (labelled synthetic everywhere)."""
    prepare()
    with errors():
        from flows.ingest import ingest

        _print_ingest(ingest("synthetic", symbol, interval, {"days": days, "seed": seed}))


@ingest_app.command("ccxt")
def ingest_ccxt(
    exchange: str = typer.Option(..., help="ccxt exchange id, e.g. binance."),
    market: str = typer.Option(..., help="Exchange market symbol, e.g. FIL/USDT."),
    symbol: str = SymbolOpt,
    interval: str = IntervalOpt,
    since: str | None = typer.Option(
        None, help="Backfill start (ISO, UTC); default: after the last stored candle."
    ),
    until: str | None = typer.Option(None, help="Backfill end (ISO, UTC); default: now."),
    exchange_config: str | None = typer.Option(
        None, help='ccxt exchange constructor options as JSON, e.g. \'{"options": {"defaultType": "spot"}}\'.'
    ),
) -> None:
    """Backfill or incrementally fetch candles from an exchange through ccxt."""
    prepare()
    with errors():
        import json

        from flows.ingest import ingest

        try:
            config = json.loads(exchange_config) if exchange_config else None
        except json.JSONDecodeError as e:
            raise ValueError(f"--exchange-config is not valid JSON: {e}") from None
        _print_ingest(
            ingest(
                "ccxt",
                symbol,
                interval,
                {
                    "exchange": exchange,
                    "market": market,
                    "since": since,
                    "until": until,
                    "exchange_config": config,
                },
            )
        )


@data_app.command("status")
def data_status() -> None:
    """Coverage and gaps per symbol and interval."""
    prepare()
    with errors():
        from flows.runtime import Runtime

        store = Runtime.from_env().store()
        st = store.status()
        if st.empty:
            console.print("the store is empty; ingest candles first (kairos ingest --help)")
            return
        t = Table(title=f"candle store {store!r}")  # the DuckDB file or the PostgreSQL URL (no password)
        for col in ["symbol", "interval", "first", "last", "candles", "gaps", "missing", "longest gap"]:
            t.add_column(col, justify="right" if col in ("candles", "gaps", "missing") else "left")
        for r in st.itertuples(index=False):
            t.add_row(
                str(r.symbol),
                str(r.interval),
                str(r.first),
                str(r.last),
                f"{int(r.candles):,}",
                str(int(r.gaps)),
                f"{int(r.missing):,}",
                str(r.longest_gap),
            )
        console.print(t)


@data_app.command("prune")
def data_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted; delete nothing."),
) -> None:
    """Delete prediction logs and training runs older than configs/retention.yaml allows (aliased
    versions, each model's newest versions and the alias history are kept)."""
    prepare()
    with errors():
        from flows.retention import prune

        out = prune(dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        console.print(f"{verb} {len(out['logs'])} prediction-log file(s), {len(out['runs'])} training run(s)")
        for line in out["runs"]:
            console.print(f"  {line}")
        if out["purged"]:
            console.print("their artifacts were freed (mlflow gc)")
