"""The live loop behind `kairos feed`: follow an exchange's closed candles, store them, push them to serving.

A pass (`LiveFeeder.catch_up`) does, for every symbol: fetch the closed candles after the newest stored
one (`ccxt_source.fetch_ohlcv_range`, paged), validate them (the injected candle suite; a bad batch is
quarantined, named in the log and skipped), upsert them, then push what serving lacks (`Pusher`). Every
pass starts from the store, so a reconnect, a missed message or a restart is backfilled by the same
code and the store holds each candle once (its upsert is idempotent besides).

What starts a pass:
- `ws` mode (ccxt.pro `watch_ohlcv`, where ccxt has it for the exchange): the stream says a candle
  closed (an update for a newer candle arrived). The rows still come from REST: ccxt's unified stream
  rows carry 6 fields while Binance's REST klines carry all 11 of the candle contract, so every stored
  row has the same fields whichever path noticed it (one REST call per symbol per candle). A dropped
  connection is logged, the loop backfills from the store (REST, to the clock) and reconnects
  (backoff `reconnect_s`, doubling up to `reconnect_max_s`); see `pipelines.live.stream`.
- `rest` mode: a poll after each candle close (+ `poll_delay_s`), sooner again while the exchange lags.

Closed candles only: a candle is fetched once its close has passed on the clock (rest) or the stream
has moved past it (ws); `fetch_ohlcv_range` drops the still-open one.

Holes in what the exchange serves (it has 12:05 but not 12:01–12:04): the candles before the hole are
stored, the rest waits up to `gap_wait` candles for the exchange to publish the missing ones; after
that the hole is accepted (logged) and the later candles are stored around it.

No prefect, serving or validation import here: the validator, the store, the clock and sleep are passed
in (`flows/cli/feed.py` wires the real ones; tests pass the fake exchange's simulated clock).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.contracts.errors import SourceError, StoreError, ValidationFailed
from pipelines.contracts.schema import INTERVAL_MS
from pipelines.live.client import ServingClient, epoch_ms
from pipelines.live.pusher import Pusher

log = logging.getLogger("kairos.feed")

Mode = Literal["auto", "ws", "rest"]


def _iso(ms: int | None) -> str:
    return "-" if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def _ms(ts: pd.Timestamp | str | int) -> int:
    if isinstance(ts, int):
        return ts
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


def ws_supported(exchange_id: str) -> bool:
    """Whether ccxt.pro has `watchOHLCV` for the exchange (its description; no network, no session)."""
    import ccxt.pro

    cls = getattr(ccxt.pro, exchange_id, None)
    return bool(cls is not None and cls().has.get("watchOHLCV"))


@dataclass(frozen=True)
class FeedConfig:
    """What `kairos feed` follows and how (times: epoch ms or anything pd.Timestamp takes, naive = UTC)."""

    exchange: str
    symbols: tuple[str, ...]  # store labels and exchange market ids, e.g. ("FILUSDT", "NEARUSDT")
    interval: str = "1m"
    exchange_config: dict[str, Any] | None = None  # deep-merged into ccxt's config (urls, options, keys)
    mode: Mode = "auto"  # ws where ccxt.pro offers watchOHLCV, else rest
    since: pd.Timestamp | str | int | None = None  # first backfill start of a symbol the store lacks
    until: pd.Timestamp | str | int | None = None  # stop once every candle opened before it is stored
    once: bool = False  # one catch-up pass (backfill + push), then exit
    prime: bool = True  # reset each symbol's serving stream and warm it from the store on its first push
    push_max: int = 1000  # candles per request (serving's api.max_batch; ~260 B of JSON each)
    push_retry_max_s: float = 30.0  # serving down: retry after 1, 2, 4 ... up to this many seconds
    gap_wait: int = 10  # candles to wait for a hole in what the exchange serves before storing around it
    poll_delay_s: float = 2.0  # rest: poll this long after a candle's close
    poll_retry_s: float = 5.0  # rest: poll again this soon while a closed candle is not served yet
    reconnect_s: float = 1.0  # ws: first wait before reconnecting, doubled up to reconnect_max_s
    reconnect_max_s: float = 30.0
    fetch_retries: int = 3  # transient exchange errors (ccxt.NetworkError) per request

    def __post_init__(self) -> None:
        if self.interval not in INTERVAL_MS:
            raise SourceError(f"unknown interval {self.interval!r}; use one of {sorted(INTERVAL_MS)}")
        if not self.symbols or any(not s.strip() for s in self.symbols):
            raise SourceError("no symbols to follow; pass e.g. --symbols FILUSDT,NEARUSDT")
        if len(set(self.symbols)) != len(self.symbols):
            raise SourceError(f"a symbol is listed twice in {list(self.symbols)}")
        if self.mode not in ("auto", "ws", "rest"):
            raise SourceError(f"unknown mode {self.mode!r}; use auto, ws or rest")
        if self.push_max < 1 or self.gap_wait < 0:
            raise SourceError(f"push_max={self.push_max} must be >= 1 and gap_wait={self.gap_wait} >= 0")

    @property
    def step(self) -> int:
        return INTERVAL_MS[self.interval]


@dataclass
class SymbolState:
    """Where one symbol stands (times are open_times in epoch ms)."""

    cursor: int  # next candle to fetch = newest stored (or quarantined) + 1 interval
    pushed: int | None = None  # newest candle serving has from us; None: re-sync before the first push
    warm: bool = False  # serving answered warmup_remaining == 0 since the last re-sync
    served: bool = True  # False once serving answered 404 for the symbol
    stored: int = 0  # candles this run added to the store
    sent: int = 0  # candles serving accepted from this run
    quarantined: int = 0  # batches quarantined
    gaps_accepted: int = 0  # holes in the exchange's data stored around
    waiting_hole: int | None = None  # first missing candle of a hole being waited for (logged once)


@dataclass
class FeedStats:
    passes: int = 0
    reconnects: int = 0
    symbols: dict[str, SymbolState] = field(default_factory=dict)


class LiveFeeder:
    """Follows `cfg.symbols` on `cfg.exchange` into `store`, and pushes to `serving` (None: store only).

    Args:
        cfg: what to follow.
        store: a `pipelines.store.CandleStore` (merge, last_open_time, load).
        validate: `validate(frame, batch_name)`; raises ValidationFailed (having quarantined the batch).
        serving: serving's routes, or None to store only.
        rest: a ready sync ccxt exchange (default `ccxt_source.make_exchange(cfg.exchange, cfg.exchange_config)`,
            rate-limited).
        clock: the present in epoch ms (default the local clock, which ccxt uses too).
        sleep: `sleep(seconds)` between REST polls (default: a wait that `stop()` cuts short).
    """

    def __init__(
        self,
        cfg: FeedConfig,
        store: Any,
        validate: Callable[[pd.DataFrame, str], Any],
        serving: ServingClient | None = None,
        *,
        rest: Any = None,
        clock: Callable[[], int] | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.cfg, self.store, self.validate, self.serving = cfg, store, validate, serving
        self._rest = rest
        self._stop = threading.Event()
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.sleep = sleep or self._stop.wait
        self.stats = FeedStats()
        self.pusher: Pusher | None = None
        self.markets: dict[str, str] = {}

    def stop(self) -> None:
        """End the loop after the step in progress (the CLI's SIGINT/SIGTERM handlers call this)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def state(self, symbol: str) -> SymbolState:
        return self.stats.symbols[symbol]

    @property
    def rest(self) -> Any:
        if self._rest is None:
            from pipelines.sources.ccxt_source import make_exchange

            self._rest = make_exchange(self.cfg.exchange, self.cfg.exchange_config)
        return self._rest

    def mode(self) -> Literal["ws", "rest"]:
        if self.cfg.mode != "auto":
            return self.cfg.mode
        return "ws" if ws_supported(self.cfg.exchange) else "rest"

    # ---- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve each symbol's market (SourceError for an unknown one) and where to continue it."""
        from pipelines.sources.ccxt_source import _call, _resolve_market

        cfg = self.cfg
        _call(self.rest.load_markets, f"{self.rest.id} load_markets", cfg.fetch_retries, 1.0)
        if self.rest.timeframes and cfg.interval not in self.rest.timeframes:
            raise SourceError(
                f"{self.rest.id} has no {cfg.interval!r} candles; use one of {sorted(self.rest.timeframes)}"
            )
        for sym in cfg.symbols:
            self.markets[sym] = _resolve_market(self.rest, sym, cfg.fetch_retries, 1.0)["symbol"]
            last = self.store.last_open_time(sym, cfg.interval)
            if last is not None:
                cursor = _ms(last) + cfg.step
            elif cfg.since is not None:
                cursor = _ms(cfg.since)
            else:
                raise SourceError(
                    f"the store has no {sym} {cfg.interval} candles yet; pass --since for the first backfill"
                )
            self.stats.symbols[sym] = SymbolState(
                cursor=cursor, pushed=None if cfg.prime else cursor - cfg.step
            )
        if self.serving is not None:
            self.pusher = Pusher(
                self.serving,
                self.store,
                cfg.interval,
                cfg.step,
                self.stats.symbols,
                cfg.push_max,
                cfg.push_retry_max_s,
            )
        where = ", ".join(f"{s} after {_iso(st.cursor - cfg.step)}" for s, st in self.stats.symbols.items())
        log.info("following %s %s on %s: %s", ", ".join(cfg.symbols), cfg.interval, cfg.exchange, where)

    # ---- one pass: fetch → validate → store → push ---------------------------------------------------

    def catch_up(self, closed_by: int | dict[str, int | None]) -> int:
        """Store what closed by `closed_by` (epoch ms; per symbol, or one for all) and is not stored yet,
        then push. Returns the candles added to the store."""
        self.stats.passes += 1
        frames: dict[str, pd.DataFrame] = {}
        for sym, st in self.stats.symbols.items():
            now = closed_by.get(sym) if isinstance(closed_by, dict) else closed_by
            if now is None or st.cursor + self.cfg.step > now:
                continue  # nothing closed after the cursor yet
            try:
                df = self._fetch(sym, st.cursor, now)
            except SourceError as e:  # the exchange still failing after its retries: next pass
                log.warning("%s: fetch failed, trying again next pass: %s", sym, e)
                continue
            df = self._up_to_young_hole(sym, df, now)
            if len(df):
                frames[sym] = df
        try:
            added = self._store(frames)
        except StoreError as e:  # e.g. another process holds the DuckDB file: nothing stored, next pass
            log.warning("store refused the batch, trying again next pass: %s", e)
            added = 0
        if self.pusher is not None:
            self.pusher.push()
        return added

    def _fetch(self, sym: str, since: int, now: int) -> pd.DataFrame:
        from pipelines.sources.ccxt_source import fetch_ohlcv_range

        return fetch_ohlcv_range(
            self.cfg.exchange,
            self.markets[sym],
            self.cfg.interval,
            pd.Timestamp(since, unit="ms", tz="UTC"),
            store_symbol=sym,
            retries=self.cfg.fetch_retries,
            now=pd.Timestamp(now, unit="ms", tz="UTC"),  # candles not closed by then are dropped
            exchange=self.rest,
        )

    def _up_to_young_hole(self, sym: str, df: pd.DataFrame, now: int) -> pd.DataFrame:
        """`df` up to its first hole the exchange may still fill (younger than gap_wait candles); older
        holes are accepted, logged, and stored around."""
        st, step = self.stats.symbols[sym], self.cfg.step
        if df.empty:
            return df
        t = epoch_ms(df["open_time"])
        prev = np.concatenate(([st.cursor - step], t[:-1]))
        for i in np.flatnonzero(t - prev != step):
            first, last = int(prev[i]) + step, int(t[i]) - step  # the missing candles
            n = (last - first) // step + 1
            if now - (last + step) < self.cfg.gap_wait * step:
                if st.waiting_hole != first:
                    st.waiting_hole = first
                    log.warning(
                        "%s: the exchange has not published %s..%s (%d candle(s)) yet; stored up to the hole, "
                        "waiting up to %d candles for it",
                        *(sym, _iso(first), _iso(last), n, self.cfg.gap_wait),
                    )
                return df.iloc[:i]
            st.gaps_accepted += 1
            st.waiting_hole = None
            log.warning(
                "%s: the exchange still lacks %s..%s (%d candle(s)) %d candle(s) later; storing around the gap",
                *(sym, _iso(first), _iso(last), n, self.cfg.gap_wait),
            )
        if st.waiting_hole is not None:
            log.info(
                "%s: the exchange published the candles from %s; hole filled", sym, _iso(st.waiting_hole)
            )
            st.waiting_hole = None
        return df

    def _store(self, frames: dict[str, pd.DataFrame]) -> int:
        """Validate (all symbols as one batch; symbol by symbol when it fails) and upsert the good ones."""
        if not frames:
            return 0
        try:
            self.validate(pd.concat(list(frames.values()), ignore_index=True), self._batch_name(frames))
            good = frames
        except ValidationFailed as e:
            good = {}
            if len(frames) == 1:
                self._skip(next(iter(frames)), frames, e)
            else:  # find the bad symbol(s); the others are stored
                for sym, df in frames.items():
                    try:
                        self.validate(df, self._batch_name({sym: df}))
                        good[sym] = df
                    except ValidationFailed as e1:
                        self._skip(sym, frames, e1)
        if not good:
            return 0
        added = self.store.merge(pd.concat(list(good.values()), ignore_index=True)).added
        for sym, df in good.items():
            st = self.stats.symbols[sym]
            st.stored += len(df)
            st.cursor = max(st.cursor, int(epoch_ms(df["open_time"])[-1]) + self.cfg.step)
        return added

    def _skip(self, sym: str, frames: dict[str, pd.DataFrame], e: ValidationFailed) -> None:
        """A bad batch stays in quarantine (the message names the folder); the loop goes on after it."""
        st, t = self.stats.symbols[sym], epoch_ms(frames[sym]["open_time"])
        st.quarantined += 1
        st.cursor = max(st.cursor, int(t[-1]) + self.cfg.step)
        log.error("%s: candles %s..%s skipped: %s", sym, _iso(int(t[0])), _iso(int(t[-1])), e)

    def _batch_name(self, frames: dict[str, pd.DataFrame]) -> str:
        t = np.concatenate([epoch_ms(f["open_time"]) for f in frames.values()])
        stamp = [
            pd.Timestamp(int(x), unit="ms", tz="UTC").strftime("%Y%m%dT%H%M") for x in (t.min(), t.max())
        ]
        syms = "+".join(frames) if len(frames) <= 3 else f"{len(frames)}symbols"
        return f"feed-{self.cfg.exchange}-{syms}-{self.cfg.interval}-{stamp[0]}-{stamp[1]}"

    # ---- the loops --------------------------------------------------------------------------------

    def run(self) -> FeedStats:
        """start(), catch up to the present, then follow until stop(), `until` or (with `once`) at once."""
        self.start()
        self.catch_up(self.clock())
        if self.cfg.once or self.until_reached():
            return self.stats
        if self.mode() == "ws":
            from pipelines.live.stream import follow_stream

            asyncio.run(follow_stream(self))
        else:
            self._run_rest()
        return self.stats

    def until_reached(self) -> bool:
        if self.cfg.until is None:
            return False
        until = _ms(self.cfg.until)
        return all(st.cursor >= until for st in self.stats.symbols.values())

    def _run_rest(self) -> None:
        step = self.cfg.step
        log.info(
            "polling %s REST after every %s close (+%.0f s)",
            self.cfg.exchange,
            self.cfg.interval,
            self.cfg.poll_delay_s,
        )
        while not self.stopped and not self.until_reached():
            now = self.clock()
            wait_ms = (now // step + 1) * step + int(self.cfg.poll_delay_s * 1000) - now
            if any(st.cursor + step <= now for st in self.stats.symbols.values()):  # the exchange lags
                wait_ms = min(wait_ms, int(self.cfg.poll_retry_s * 1000))
            if self.pusher is not None and self.pusher.down_since is not None:  # come back for the retry
                wait_ms = min(wait_ms, max(int((self.pusher.retry_at - time.monotonic()) * 1000), 100))
            self.sleep(wait_ms / 1000)
            if not self.stopped:
                self.catch_up(self.clock())

    def summary(self) -> pd.DataFrame:
        """Per symbol: candles stored and pushed by this run, quarantined batches, holes stored around,
        newest stored and pushed."""
        rows = []
        for sym, st in self.stats.symbols.items():
            rows.append(
                {
                    "symbol": sym,
                    "stored": st.stored,
                    "pushed": st.sent,
                    "quarantined": st.quarantined,
                    "gaps_accepted": st.gaps_accepted,
                    "newest_stored": _iso(st.cursor - self.cfg.step),
                    "newest_pushed": _iso(st.pushed) if st.served else "not served",
                }
            )
        return pd.DataFrame(rows)
