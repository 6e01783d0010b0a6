"""Live candles: follow an exchange (ccxt stream or REST polling), store each closed candle once, push it
to serving once (`kairos feed`).

- `loop`: `FeedConfig`, `LiveFeeder` (fetch → validate → store → push; the REST polling loop).
- `stream`: `follow_stream`, the websocket loop (ccxt.pro `watch_ohlcv`).
- `pusher`: `Pusher`, the per-symbol watermark, serving re-syncs and outage backoff.
- `client`: `ServingClient`, serving's stream routes over HTTP (no `serving` import).
"""

from pipelines.live.client import ServingClient, ServingDown
from pipelines.live.loop import FeedConfig, FeedStats, LiveFeeder, SymbolState, ws_supported

__all__ = [
    "FeedConfig",
    "FeedStats",
    "LiveFeeder",
    "ServingClient",
    "ServingDown",
    "SymbolState",
    "ws_supported",
]
