"""Ingest flow: fetch candles from a source, validate them (bad batch → quarantine), upsert the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task

from flows.runtime import IO, PURE, Runtime
from pipelines.contracts.errors import KairosError


@task(name="fetch-candles", **IO)
def fetch_candles(source: str, symbol: str, interval: str, options: dict[str, Any], last_open_time) -> pd.DataFrame:
    if source == "synthetic":
        from pipelines.sources import synthetic

        n = int(round(float(options.get("days", 30)) * pd.Timedelta(days=1) / _delta(interval)))
        start = (last_open_time + _delta(interval)) if last_open_time is not None else options.get("start", "2024-01-01")
        return synthetic.generate(symbol, interval=interval, start=start, n=n, seed=int(options.get("seed", 7)))
    if source == "binance-files":
        from pipelines.sources import binance_files

        return binance_files.read_many([Path(p) for p in options["paths"]], symbol, interval)
    if source == "ccxt":
        from pipelines.sources import ccxt_source

        since = options.get("since")
        since = pd.Timestamp(since, tz="UTC") if since else (
            last_open_time + _delta(interval) if last_open_time is not None else None
        )
        if since is None:
            raise KairosError("ccxt backfill needs --since (no candles stored yet for this symbol)")
        return ccxt_source.fetch_ohlcv_range(
            options["exchange"], options.get("market") or symbol, interval, since=since,
            until=pd.Timestamp(options["until"], tz="UTC") if options.get("until") else None,
            exchange_config=options.get("exchange_config"), store_symbol=symbol,
        )
    raise KairosError(f"unknown source {source!r}; expected synthetic, binance-files or ccxt")


def _delta(interval: str) -> pd.Timedelta:
    from pipelines.contracts.schema import interval_delta

    return interval_delta(interval)


@task(name="last-open-time", **IO)
def last_open_time(symbol: str, interval: str):
    return Runtime.from_env().store().last_open_time(symbol, interval)


@task(name="validate-candles", **PURE)
def validate(df: pd.DataFrame, batch_name: str):
    from validation.candles import check_or_quarantine

    s = Runtime.from_env().settings
    return check_or_quarantine(df, data_docs_dir=s.data_docs_dir, quarantine_dir=s.quarantine_dir, batch_name=batch_name)


@task(name="upsert-candles", **IO)
def upsert(df: pd.DataFrame) -> int:
    return Runtime.from_env().store().upsert(df)


@flow(name="ingest")
def ingest(source: str, symbol: str, interval: str = "1m", options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fetch candles from a source, validate them (bad batch → quarantine, flow fails), upsert the store."""
    options = options or {}
    last = last_open_time(symbol, interval)
    df = fetch_candles(source, symbol, interval, options, last)
    if df.empty:
        return {"symbol": symbol, "interval": interval, "rows": 0, "added": 0, "gaps": 0}
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
    report = validate(df, f"{source}-{symbol}-{interval}-{stamp}")
    added = upsert(df)
    return {
        "symbol": symbol,
        "interval": interval,
        "rows": len(df),
        "added": added,
        "gaps": report.total_gaps,
        "expectations": report.evaluated_expectations,
        "first": str(df["open_time"].min()),
        "last": str(df["open_time"].max()),
    }


