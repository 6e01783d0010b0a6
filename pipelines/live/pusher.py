"""Push stored candles to serving once each, oldest first, surviving serving outages and restarts.

Per symbol a watermark (`SymbolState.pushed`, the newest candle serving has from us) says what is due:
every stored candle after it. Serving's stream refuses gaps and duplicates (409), so pushing from the
store in order, and only after the watermark, is what makes serving see each candle exactly once.

Re-sync (`DELETE /v1/streams/{symbol}`, then the store's last contiguous candles, as many as serving
says its features need to warm up): before a symbol's first push when `prime` is on, after a 409, and
when serving comes back with a cold stream (it restarted). Serving down: one log line per outage, the
candles wait in the store, retries back off 1, 2, 4 ... `retry_max_s` seconds, and the backlog goes out
once when serving answers again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.live.client import ItemResult, ServingClient, ServingDown, api_candles, epoch_ms

if TYPE_CHECKING:
    from pipelines.live.loop import SymbolState

log = logging.getLogger("kairos.feed")


def _ts(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


class Pusher:
    """Moves each symbol's watermark forward through serving's batch route.

    Args:
        client: serving's routes.
        store: the candle store (load).
        interval: candle interval of every symbol.
        states: symbol → SymbolState, shared with the feeder (cursor = newest stored + 1 interval).
        push_max: candles per request (serving's api.max_batch bounds each item; the body limit the sum).
        retry_max_s: longest wait between attempts while serving is down.
    """

    def __init__(
        self,
        client: ServingClient,
        store: Any,
        interval: str,
        step_ms: int,
        states: dict[str, SymbolState],
        push_max: int = 1000,
        retry_max_s: float = 30.0,
    ) -> None:
        self.client, self.store, self.interval, self.step = client, store, interval, step_ms
        self.states = states
        self.push_max, self.retry_max_s = push_max, retry_max_s
        self.down_since: float | None = None  # monotonic time serving was found down
        self.retry_at = 0.0
        self._retry_s = min(1.0, retry_max_s)
        self._resynced: set[str] = set()  # symbols re-synced in the current push (no loops)
        self.failures = 0  # requests serving did not take
        self.outages = 0
        self.resyncs = 0

    def push(self) -> None:
        """Push what is due; when serving is down keep it for the next attempt (after the backoff)."""
        if time.monotonic() < self.retry_at:
            return
        before = sum(st.sent for st in self.states.values())
        self._resynced.clear()
        try:
            self._push_due()
        except ServingDown as e:
            self.failures += 1
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.outages += 1
                log.warning("%s; candles stay in the store and are pushed when it answers", e)
            self.retry_at = time.monotonic() + self._retry_s
            self._retry_s = min(self._retry_s * 2, self.retry_max_s)
            return
        if self.down_since is not None:
            sent = sum(st.sent for st in self.states.values()) - before
            down_s = time.monotonic() - self.down_since
            log.info(
                "serving at %s answers again after %.0f s; pushed the backlog of %d candle(s)",
                self.client.url,
                down_s,
                sent,
            )
            self.down_since = None
        self._retry_s, self.retry_at = min(1.0, self.retry_max_s), 0.0

    def _push_due(self) -> None:
        for sym, st in self.states.items():
            if st.served and st.pushed is None:
                self._resync(sym)
        while True:
            items: dict[str, list[dict[str, Any]]] = {}
            budget = self.push_max
            for sym, st in self.states.items():
                if budget <= 0 or not st.served or st.pushed is None or st.pushed >= st.cursor - self.step:
                    continue
                df = self.store.load(sym, self.interval, _ts(st.pushed + self.step)).iloc[:budget]
                if len(df):
                    items[sym] = api_candles(df)
                    budget -= len(df)
            if not items:
                return
            for sym, res in self.client.push(items, self.interval).items():
                self._after(sym, items[sym], res)

    def _after(self, sym: str, sent: list[dict[str, Any]], res: ItemResult) -> None:
        st = self.states[sym]
        if res.accepted:
            st.pushed = int(sent[res.accepted - 1]["open_time"])
            st.sent += res.accepted
        if res.status == 200:
            if res.warmup_remaining == 0:
                st.warm = True
            elif st.warm and res.warmup_remaining:  # serving restarted: its stream starts cold
                log.warning("%s: serving's stream went cold (restarted?); re-syncing it from the store", sym)
                self._resync(sym)
            return
        if res.status == 404:
            self._not_served(sym, res)
        elif res.status == 409 and sym not in self._resynced:
            log.warning(
                "%s: serving's stream is out of step (%s); re-syncing it from the store", sym, res.error
            )
            self._resync(sym)
        else:  # 422, or 409 right after a re-sync: serving refuses these candles whatever we do
            st.pushed = int(sent[-1]["open_time"])
            log.error(
                "%s: serving refused %d candle(s) (%d: %s); skipped", sym, len(sent), res.status, res.error
            )

    def _not_served(self, sym: str, res: ItemResult) -> None:
        st = self.states[sym]
        st.served, st.pushed = False, st.cursor - self.step
        log.warning("%s: serving does not serve it (%s); its candles are stored, not pushed", sym, res.error)

    def _resync(self, sym: str) -> None:
        """Reset serving's stream of `sym`; due next: the store's last contiguous candles it needs to warm up."""
        st = self.states[sym]
        res = self.client.reset(sym)
        self.resyncs += 1
        self._resynced.add(sym)
        if res.status == 404:
            return self._not_served(sym, res)
        if res.status != 200:
            raise ServingDown(f"serving refused to reset the stream of {sym} ({res.status}: {res.error})")
        need = max(int(res.warmup_remaining or 0), 1)
        newest = st.cursor - self.step
        df = self.store.load(sym, self.interval, _ts(newest - (need - 1) * self.step))
        if len(df):
            breaks = np.flatnonzero(np.diff(epoch_ms(df["open_time"])) != self.step)
            if len(breaks):  # serving refuses a gap: only the tail after the last one
                df = df.iloc[int(breaks[-1]) + 1 :]
        st.warm = False
        st.pushed = int(epoch_ms(df["open_time"])[0]) - self.step if len(df) else newest
        log.info(
            "%s: serving's stream reset; pushing the last %d stored candle(s) to warm it up", sym, len(df)
        )
