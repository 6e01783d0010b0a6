"""Ingest flows: fetch candles from a source (or build them from trade files), validate them (bad batch →
quarantine), upsert the store."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, task

from flows.runtime import IO, PURE, Runtime


@task(name="fetch-candles", **IO)
def fetch_candles(
    source: str, symbol: str, interval: str, options: dict[str, Any], last_open_time
) -> pd.DataFrame:
    """The source's candles after `last_open_time` (the source knows how to continue a series)."""
    from pipelines.sources import get_source

    return get_source(source, options).fetch(symbol, interval, last_open_time=last_open_time)


@task(name="last-open-time", **IO)
def last_open_time(symbol: str, interval: str):
    return Runtime.from_env().store().last_open_time(symbol, interval)


@task(name="validate-candles", **PURE)
def validate(df: pd.DataFrame, batch_name: str):
    from validation.candles import check_or_quarantine

    s = Runtime.from_env().settings
    return check_or_quarantine(
        df, data_docs_dir=s.data_docs_dir, quarantine_dir=s.quarantine_dir, batch_name=batch_name
    )


@task(name="upsert-candles", **IO)
def upsert(df: pd.DataFrame) -> int:
    return Runtime.from_env().store().upsert(df)


@task(name="read-trades", **IO)
def read_trade_files(paths: list[str], symbol: str, interval: str):
    """Candles and per-minute order facts built from trade files (`pipelines.sources.trades`)."""
    from pipelines.sources import get_source

    return get_source("trades", {"paths": paths}).build(symbol, interval)


@task(name="upsert-trade-minutes", **IO)
def upsert_trade_minutes(symbol: str, interval: str, df: pd.DataFrame) -> int:
    return Runtime.from_env().store().upsert_trade_minutes(symbol, interval, df)


@flow(name="ingest")
def ingest(
    source: str, symbol: str, interval: str = "1m", options: dict[str, Any] | None = None
) -> dict[str, Any]:
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


@flow(name="ingest-trades")
def ingest_trades(paths: list[str], symbol: str, interval: str = "1m") -> dict[str, Any]:
    """Build 1-minute candles and trade minutes from trade files, validate the candles (bad batch →
    quarantine, flow fails, nothing stored), upsert both."""
    series = read_trade_files(paths, symbol, interval)
    summary: dict[str, Any] = {
        "symbol": symbol,
        "interval": interval,
        "rows": len(series.candles),
        "added": 0,
        "gaps": 0,
        "trades": series.trades,
        "duplicates_dropped": series.duplicates_dropped,
        "overlapping": series.overlapping,
        "orders": series.orders,
        "minutes_added": 0,
    }
    if series.candles.empty:
        return summary
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
    report = validate(series.candles, f"trades-{symbol}-{interval}-{stamp}")
    summary["added"] = upsert(series.candles)
    summary["minutes_added"] = upsert_trade_minutes(symbol, interval, series.minutes)
    return summary | {
        "gaps": report.total_gaps,
        "expectations": report.evaluated_expectations,
        "first": str(series.candles["open_time"].min()),
        "last": str(series.candles["open_time"].max()),
    }
