"""The websocket side of `kairos feed`: ccxt.pro's kline stream says when candles close.

Each symbol has a watcher task looping on `watch_ohlcv`; the loop runs the feeder's pass (in a worker
thread: REST, Great Expectations and DuckDB block) with, per symbol, the newest candle its stream showed
as the close boundary. One ccxt connection carries every symbol, so a drop fails all watchers at once:
the first failure is logged, the watchers wait out the backoff (1, 2, 4 ... s) and reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pipelines.contracts.errors import SourceError
from pipelines.live.client import first_line

if TYPE_CHECKING:
    from pipelines.live.loop import LiveFeeder

log = logging.getLogger("kairos.feed")


async def follow_stream(feeder: LiveFeeder) -> None:
    """Follow ccxt.pro's kline stream: a symbol's pass runs when its stream reaches a newer candle.

    Until a symbol's stream speaks after a (re)connection, or when it has been silent for two
    intervals, its passes follow the clock instead (REST, once a second at most, and only when a
    candle closed that is not stored): what closed while the stream was down or silent is
    backfilled all the same."""
    import ccxt
    import ccxt.pro

    cfg = feeder.cfg
    ws = getattr(ccxt.pro, cfg.exchange)({"enableRateLimit": True, **(cfg.exchange_config or {})})
    newest: dict[str, int] = {}  # symbol → open_time of the newest candle its stream showed
    heard: dict[str, int] = {}  # symbol → clock when its stream last spoke since the (re)connection
    wake, connect = asyncio.Event(), asyncio.Event()
    connect.set()  # cleared while the loop waits out a reconnection backoff
    failed: list[BaseException] = []

    async def watch(sym: str) -> None:
        while True:
            await connect.wait()
            try:
                candles = await ws.watch_ohlcv(feeder.markets[sym], cfg.interval)
            except ccxt.NetworkError as e:  # dropped, refused, timed out: the loop reconnects
                if connect.is_set():
                    connect.clear()
                    failed.append(e)
                    wake.set()
                continue
            if candles:
                newest[sym] = max(newest.get(sym, 0), max(int(c[0]) for c in candles))
                heard[sym] = feeder.clock()
                wake.set()

    backoff = cfg.reconnect_s
    tasks = [asyncio.ensure_future(watch(s)) for s in cfg.symbols]
    log.info("watching the %s kline stream of %s on %s", cfg.interval, ", ".join(cfg.symbols), cfg.exchange)
    try:
        while not feeder.stopped and not feeder.until_reached():
            try:
                await asyncio.wait_for(wake.wait(), timeout=1.0)  # wakes for stop() and push retries too
            except TimeoutError:
                pass
            wake.clear()
            for t in tasks:
                if t.done():  # not a network error: a bad symbol, an exchange without this stream
                    e = t.exception()
                    if isinstance(e, ccxt.BaseError):
                        raise SourceError(f"{cfg.exchange} stream: {first_line(e)}") from e
                    raise e or RuntimeError("a stream watcher ended")
            if failed:
                feeder.stats.reconnects += 1
                log.warning(
                    "stream dropped (%s); backfilling from the store, reconnecting in %.1f s",
                    first_line(failed[0]),
                    backoff,
                )
                failed.clear()
                heard.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_s)
                connect.set()
            elif heard and backoff > cfg.reconnect_s:
                log.info("stream reconnected")
                backoff = cfg.reconnect_s
            now = feeder.clock()
            live = {s for s, at in heard.items() if now - at <= 2 * cfg.step}  # a silent stream: clock
            closed_by = {s: newest.get(s) if s in live else now for s in cfg.symbols}
            await asyncio.to_thread(feeder.catch_up, closed_by)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()
