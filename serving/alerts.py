"""Alerts: champion predictions at a high threat level → `WS /v1/alerts` subscribers and a webhook.

The Predictor decides that a prediction raises an alert (a `threat_level` output >= `alerts.min_level`,
once per symbol and candle; see `serving/predictor.py`) and hands the alert event (a dict: symbol,
open_time ISO UTC, probability, anomaly_score, level, model, version, top_features, ...) to
`AlertHub.emit`, on the request path. `emit` never blocks and never raises:

- it counts the alert (`kairos_alerts_total{model, level}`);
- each WebSocket subscriber whose filter matches (symbols, min_level) gets the JSON message in its own
  bounded buffer (`alerts.ws_queue`); a full buffer drops its oldest alert and counts it
  (`kairos_alerts_dropped_total{sink="websocket"}`); the client is told with a
  `{"type": "dropped", "count": n}` message before the next alert it receives;
- with `alerts.webhook_url` set, the event goes into a bounded queue (`alerts.queue_size`; full →
  dropped, `kairos_alerts_dropped_total{sink="webhook"}`) that one daemon thread drains: POST JSON,
  `timeout_s` per attempt, up to `retries` more attempts after connection errors, timeouts, 429 and
  5xx, waiting `backoff_s * 2**i` before retry i; an alert still undelivered is counted
  (`kairos_alert_webhook_failures_total`). Delivery uses the standard library (urllib), off the
  request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.config import AlertsConfig

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics

log = logging.getLogger("kairos.serving")


@dataclass(frozen=True)
class Subscription:
    """Which alerts a `/v1/alerts` client wants: `symbols` (None = all) at `min_level` or above."""

    symbols: frozenset[str] | None = None
    min_level: int = 2

    def matches(self, event: dict[str, Any]) -> bool:
        return event["level"] >= self.min_level and (self.symbols is None or event["symbol"] in self.symbols)

    def describe(self) -> dict[str, Any]:
        return {
            "symbols": None if self.symbols is None else sorted(self.symbols),
            "min_level": self.min_level,
        }

    @classmethod
    def parse(cls, data: Any, default_min_level: int) -> Subscription:
        """From a message `{"symbols": [...] | null, "min_level": 2}` (both optional); ValueError naming
        the problem otherwise."""
        if not isinstance(data, dict):
            raise ValueError('a subscription is a JSON object {"symbols": [...], "min_level": 2}')
        unknown = sorted(set(data) - {"symbols", "min_level"})
        if unknown:
            raise ValueError(f"unknown subscription field(s) {unknown}; allowed: symbols, min_level")
        symbols = data.get("symbols")
        if symbols is not None:
            if isinstance(symbols, str):
                symbols = [s for s in symbols.split(",") if s]
            if not isinstance(symbols, list) or not all(
                isinstance(s, str) and 0 < len(s) <= 40 for s in symbols
            ):
                raise ValueError("symbols: a list of symbol names (or null/omitted for all symbols)")
            symbols = frozenset(symbols)
        level = data.get("min_level", default_min_level)
        if isinstance(level, str) and level.strip().isdigit():
            level = int(level)
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5:
            raise ValueError(f"min_level: an integer threat level 1..5, got {level!r}")
        return cls(symbols, level)


class Subscriber:
    """One `/v1/alerts` connection: its filter and a bounded buffer drained by its sender coroutine.

    `push` may be called from any thread: on the subscriber's event-loop thread it appends directly,
    elsewhere it schedules the append on that loop (`call_soon_threadsafe`).
    """

    def __init__(self, sub: Subscription, maxsize: int, loop: asyncio.AbstractEventLoop, hub: AlertHub):
        self.sub = sub
        self.maxsize = maxsize
        self.loop = loop
        self._thread = threading.get_ident()
        self._hub = hub
        self._buf: deque[str | None] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0  # alerts dropped for this client so far
        self._unreported = 0  # ...not yet told to the client
        self.closed = False

    def push(self, msg: str | None) -> None:
        if threading.get_ident() == self._thread:
            self._push(msg)
        else:
            try:
                self.loop.call_soon_threadsafe(self._push, msg)
            except RuntimeError:  # the loop is closed: the connection is gone
                pass

    def _push(self, msg: str | None) -> None:
        if msg is not None and len(self._buf) >= self.maxsize:
            self._buf.popleft()  # drop the oldest: the newest alerts matter most
            self.dropped += 1
            self._unreported += 1
            self._hub.metrics_dropped("websocket")
        self._buf.append(msg)
        self._ready.set()

    async def get(self) -> str | None:
        """The next message to send (None: close); a `dropped` notice first when alerts were dropped."""
        while not self._buf:
            self._ready.clear()
            await self._ready.wait()
        if self._unreported:
            n, self._unreported = self._unreported, 0
            return json.dumps({"type": "dropped", "count": n, "total": self.dropped})
        return self._buf.popleft()

    def close(self) -> None:
        self.closed = True
        self.push(None)


class AlertHub:
    """Fan-out of alert events: counters, WebSocket subscribers, the webhook thread."""

    def __init__(self, cfg: AlertsConfig, metrics: ServingMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics
        self._subs: tuple[Subscriber, ...] = ()  # replaced, never mutated (read without a lock)
        self._lock = threading.Lock()
        self.emitted = 0
        self.webhook_min_level = cfg.webhook_min_level or cfg.min_level
        self._q: queue.Queue[dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.delivered = 0  # webhook POSTs that succeeded
        self.failures = 0  # alerts the webhook did not take after every retry
        self.dropped_webhook = 0  # alerts refused because the webhook queue was full
        self._last_failure_log = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> AlertHub:
        if self.cfg.webhook_url and self._thread is None:
            self._stop.clear()
            self._q = queue.Queue(self.cfg.queue_size)
            self._thread = threading.Thread(target=self._run, name="kairos-alert-webhook", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop the webhook thread (alerts still queued are not sent) and close every subscriber."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        for s in self._subs:
            s.close()

    # ---- request path ----------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        """Count and fan out one alert event; never blocks, never raises."""
        self.emitted += 1
        if self.metrics is not None:
            self.metrics.alert(event["model"], event["level"])
        subs = self._subs
        if subs:
            msg = None
            for s in subs:
                if s.sub.matches(event):
                    if msg is None:
                        msg = json.dumps({"type": "alert", **event}, allow_nan=False, default=str)
                    s.push(msg)
        q = self._q
        if q is not None and event["level"] >= self.webhook_min_level:
            try:
                q.put_nowait(event)
            except queue.Full:
                self.dropped_webhook += 1
                self.metrics_dropped("webhook")

    def metrics_dropped(self, sink: str) -> None:
        if self.metrics is not None:
            self.metrics.alerts_dropped.labels(sink).inc()

    # ---- WebSocket subscribers -------------------------------------------------------------------
    def subscribe(self, sub: Subscription, loop: asyncio.AbstractEventLoop) -> Subscriber:
        s = Subscriber(sub, self.cfg.ws_queue, loop, self)
        with self._lock:
            self._subs = (*self._subs, s)
        self._gauge()
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        with self._lock:
            self._subs = tuple(x for x in self._subs if x is not s)
        self._gauge()

    @property
    def subscribers(self) -> Iterable[Subscriber]:
        return self._subs

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.alert_subscribers.set(len(self._subs))

    # ---- webhook -------------------------------------------------------------------------------
    @property
    def webhook_pending(self) -> int:
        return 0 if self._q is None else self._q.qsize()

    def _run(self) -> None:
        assert self._q is not None
        while not self._stop.is_set():
            try:
                event = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> bool:
        import urllib.error  # imported here: a process without a webhook never loads urllib's HTTP stack
        import urllib.request

        cfg = self.cfg
        body = json.dumps(event, allow_nan=False, default=str).encode()
        error, attempts = "", 0
        for attempt in range(cfg.retries + 1):
            if attempt and self._stop.wait(cfg.backoff_s * 2 ** (attempt - 1)):
                return False  # closing: not a failure of the endpoint
            attempts += 1
            req = urllib.request.Request(
                cfg.webhook_url or "",
                data=body,
                method="POST",
                headers={"content-type": "application/json", "user-agent": "kairos-serving"},
            )
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout_s) as r:
                    r.read(1024)
                self.delivered += 1
                if self.metrics is not None:
                    self.metrics.webhook_delivered.inc()
                return True
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}"
                e.close()
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break  # the endpoint refuses this request: retrying will not help
            except (OSError, ValueError) as e:  # refused, timeout, DNS, reset
                error = f"{type(e).__name__}: {e}"
        self.failures += 1
        if self.metrics is not None:
            self.metrics.webhook_failures.inc()
        now = time.monotonic()
        if now - self._last_failure_log > 60:  # one line a minute at most, a dead endpoint is not news
            self._last_failure_log = now
            log.warning(
                "alert webhook %s failed after %d attempt(s) (%s); %d alert(s) undelivered so far",
                cfg.webhook_url,
                attempts,
                error,
                self.failures,
            )
        return False
