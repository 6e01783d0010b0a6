"""Candles from any CCXT exchange: paged backfill and incremental top-up.

`fetch_ohlcv_range` pages `exchange.fetch_ohlcv` forward from `since` until `until` (exclusive)
or the present, drops the still-open current candle, retries transient network errors
(`ccxt.NetworkError`: timeouts, 5xx, rate limits) with exponential backoff and turns every other
ccxt error (bad symbol, bad timeframe, exchange error) into a one-line `SourceError`.

Fields CCXT lacks. Unified OHLCV rows are [ts, open, high, low, close, volume]. When the exchange's
raw kline rows carry Binance's 12 fields (binance and its clones), the four missing contract fields
are taken from them exactly. Otherwise they are filled so the candle suite accepts them, and the
fill is neutral rather than informative:
  quote_asset_volume            = volume x (high + low + close) / 3   (an estimate)
  number_of_trades              = 0                                    (unknown)
  taker_buy_base_asset_volume   = volume / 2     → taker_buy_ratio 0.5 (unknown: neither side)
  taker_buy_quote_asset_volume  = quote_asset_volume / 2
Models trained on estimated fields should not be mixed with ones trained on exchange dumps.

Symbols. `symbol` may be the unified one ("FIL/USDT") or the exchange id ("FILUSDT"); the frame is
labelled base+quote ("FILUSDT"), the label Binance's dump files use, unless `store_symbol` is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import ccxt
import numpy as np
import pandas as pd

from pipelines.contracts.errors import SourceError
from pipelines.contracts.schema import INTERVALS, empty_candles, normalize_candles
from pipelines.sources import SourceConfig


def _ms(ts: pd.Timestamp | str) -> int:
    """Epoch milliseconds of a timestamp (naive means UTC)."""
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def make_exchange(exchange_id: str, exchange_config: dict[str, Any] | None = None) -> ccxt.Exchange:
    """A ccxt exchange instance; `exchange_config` is deep-merged into ccxt's description.

    E.g. {"options": {"fetchMarkets": {"types": ["spot"]}}} limits Binance's load_markets to one
    request; {"urls": {"api": {"public": "http://127.0.0.1:8000/api/v3"}}} points it elsewhere.
    """
    if exchange_id not in ccxt.exchanges:
        raise SourceError(f"unknown exchange id {exchange_id!r}; use one of ccxt.exchanges, e.g. 'binance'")
    config = {"enableRateLimit": True, "timeout": 10_000, **(exchange_config or {})}
    exchange = getattr(ccxt, exchange_id)(config)
    exchange.enableLastJsonResponse = True  # keeps raw kline rows: Binance's carry all 12 fields
    return exchange


def _call(
    fn: Callable[..., Any], what: str, retries: int, backoff_s: float, *args: Any, **kwargs: Any
) -> Any:
    """fn(*args, **kwargs), retrying ccxt.NetworkError; SourceError for anything ccxt raises."""
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except ccxt.NetworkError as e:
            if attempt == retries:
                raise SourceError(
                    f"{what}: still failing after {retries + 1} attempts "
                    f"({type(e).__name__}: {_first_line(e)}); "
                    "check the network or the exchange status and retry later"
                ) from e
            time.sleep(backoff_s * 2**attempt)
        except ccxt.BaseError as e:
            raise SourceError(f"{what}: {type(e).__name__}: {_first_line(e)}") from e
    raise AssertionError("unreachable")


def _resolve_market(exchange: ccxt.Exchange, symbol: str, retries: int, backoff_s: float) -> dict:
    _call(exchange.load_markets, f"{exchange.id} load_markets", retries, backoff_s)
    try:
        return exchange.market(symbol)
    except ccxt.BadSymbol:
        raise SourceError(
            f"{exchange.id} has no market {symbol!r}; "
            "use a unified symbol like 'FIL/USDT' or an exchange id like 'FILUSDT'"
        ) from None


def _raw_rows(exchange: ccxt.Exchange) -> dict[int, list]:
    """ts → raw kline row, when the last response is Binance-style 12-field lists; else {}."""
    raw = getattr(exchange, "last_json_response", None)
    if not isinstance(raw, list) or not raw or not all(isinstance(r, list) and len(r) >= 11 for r in raw):
        return {}
    return {int(r[0]): r for r in raw}


def _to_frame(rows: list[list], raw: dict[int, list], symbol: str, interval: str) -> pd.DataFrame:
    """Unified OHLCV rows (+ matching raw rows) → candle frame; see the module doc for fills."""
    a = np.array([[np.nan if v is None else v for v in r[:6]] for r in rows], dtype=np.float64)  # (n, 6)
    ts, o, h, l, c, v = a.T  # noqa: E741  (o, h, l, c: the OHLC columns)
    quote = v * (h + l + c) / 3.0
    trades = np.zeros(len(rows), dtype=np.int64)
    tbb, tbq = v / 2.0, quote / 2.0
    for i, t in enumerate(ts.astype(np.int64)):
        r = raw.get(int(t))
        if r is not None:
            quote[i], trades[i], tbb[i], tbq[i] = float(r[7]), int(r[8]), float(r[9]), float(r[10])
    frame = pd.DataFrame(
        {
            "symbol": symbol,
            "interval": interval,
            "open_time": pd.to_datetime(ts.astype(np.int64), unit="ms", utc=True),
            "open": o,
            "high": h,
            "low": l,
            "close": c,
            "volume": v,
            "quote_asset_volume": quote,
            "number_of_trades": trades,
            "taker_buy_base_asset_volume": tbb,
            "taker_buy_quote_asset_volume": tbq,
        }
    )
    return normalize_candles(frame)


def fetch_ohlcv_range(
    exchange_id: str,
    symbol: str,
    interval: str,
    since: pd.Timestamp | str,
    until: pd.Timestamp | str | None = None,
    exchange_config: dict[str, Any] | None = None,
    limit: int = 1000,
    *,
    store_symbol: str | None = None,
    retries: int = 3,
    backoff_s: float = 1.0,
    now: pd.Timestamp | str | None = None,
    exchange: ccxt.Exchange | None = None,
) -> pd.DataFrame:
    """Closed candles with since <= open_time < until, paged `limit` at a time.

    Args:
        exchange_id: a ccxt id, e.g. "binance".
        symbol: unified ("FIL/USDT") or exchange id ("FILUSDT").
        interval: a key of `pipelines.contracts.schema.INTERVALS` the exchange supports.
        since: first open time wanted (UTC if naive).
        until: exclusive end; None = up to the present.
        exchange_config: deep-merged into ccxt's config (urls, options, timeout, keys).
        limit: candles per request (exchange maximum, e.g. 1000 on Binance spot).
        store_symbol: label for the frame; default base+quote, e.g. "FILUSDT".
        retries: extra attempts after a transient `ccxt.NetworkError`.
        backoff_s: first retry delay, doubled each time.
        now: the present (default: the exchange clock); candles not closed by then are dropped.
        exchange: a ready instance (reused across calls); built from exchange_id when None.

    Returns:
        Candle-contract frame sorted by open_time, without duplicates; empty if nothing is closed yet.
    """
    if interval not in INTERVALS:
        raise SourceError(f"unknown interval {interval!r}; use one of {sorted(INTERVALS)}")
    if limit < 1:
        raise SourceError(f"limit={limit} must be a positive number of candles per request")
    exchange = exchange or make_exchange(exchange_id, exchange_config)
    market = _resolve_market(exchange, symbol, retries, backoff_s)
    if exchange.timeframes and interval not in exchange.timeframes:
        raise SourceError(
            f"{exchange.id} has no {interval!r} candles; use one of {sorted(exchange.timeframes)}"
        )
    label = store_symbol or f"{market['base']}{market['quote']}"
    step = int(INTERVALS[interval] / pd.Timedelta(milliseconds=1))
    now_ms = _ms(now) if now is not None else int(exchange.milliseconds())
    stop = min(_ms(until) if until is not None else now_ms, now_ms - step + 1)  # open_time < stop ⇒ closed
    what = f"{exchange.id} fetch_ohlcv {market['symbol']} {interval}"

    rows: dict[int, list] = {}
    raw: dict[int, list] = {}
    cursor = _ms(since)
    while cursor < stop:
        want = min(limit, -(-(stop - cursor) // step))  # don't ask for candles past `stop`
        fetch = exchange.fetch_ohlcv
        batch = _call(fetch, what, retries, backoff_s, market["symbol"], interval, since=cursor, limit=want)
        if not batch:
            break
        raw.update(_raw_rows(exchange))
        for r in batch:
            if cursor <= r[0] < stop:
                rows[int(r[0])] = r
        last = int(batch[-1][0])
        if last < cursor:  # the exchange ignored `since`: stop rather than loop forever
            break
        cursor = last + step
    if not rows:
        return empty_candles()
    ordered = [rows[t] for t in sorted(rows)]
    return _to_frame(ordered, raw, label, interval)


def incremental(
    exchange_id: str,
    symbol: str,
    interval: str,
    store_last_open_time: pd.Timestamp | None,
    default_since: pd.Timestamp | str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Candles after the newest stored one: `fetch_ohlcv_range` from last + 1 interval to now.

    `store_last_open_time` comes from `CandleStore.last_open_time`; when the store has none,
    `default_since` starts the first backfill. Extra keyword arguments go to `fetch_ohlcv_range`.
    """
    if interval not in INTERVALS:
        raise SourceError(f"unknown interval {interval!r}; use one of {sorted(INTERVALS)}")
    if store_last_open_time is not None:
        since = pd.Timestamp(store_last_open_time) + INTERVALS[interval]
    elif default_since is not None:
        since = pd.Timestamp(default_since)
    else:
        raise SourceError(
            f"the store has no {symbol} {interval} candles yet; pass a start time for the first backfill"
        )
    return fetch_ohlcv_range(exchange_id, symbol, interval, since, **kwargs)


class CcxtConfig(SourceConfig):
    """`kairos ingest ccxt` options (times are UTC if naive)."""

    exchange: str  # a ccxt id, e.g. "binance"
    market: str | None = None  # e.g. "FIL/USDT"; default: the stored symbol
    since: datetime | None = None  # backfill start; default: one candle after the newest stored one
    until: datetime | None = None  # exclusive end; default: now
    exchange_config: dict[str, Any] | None = None  # deep-merged into ccxt's config (urls, options, keys)


class CcxtSource:
    """Closed candles from an exchange: from `since`, or continuing after the newest stored candle."""

    Config = CcxtConfig

    def __init__(self, config: CcxtConfig) -> None:
        self.config = config

    def fetch(
        self, symbol: str, interval: str, *, last_open_time: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        c = self.config
        if c.since is None and last_open_time is None:
            raise SourceError(f"ccxt backfill needs --since (no {symbol} {interval} candles stored yet)")
        return incremental(
            c.exchange,
            c.market or symbol,
            interval,
            None if c.since else last_open_time,
            default_since=c.since,
            until=c.until,
            exchange_config=c.exchange_config,
            store_symbol=symbol,
        )


SOURCE = CcxtSource
