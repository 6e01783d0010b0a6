"""Candle sources; each returns a frame obeying the candle contract (`pipelines.contracts.schema`).

- `pipelines.sources.synthetic`: seeded synthetic series with real-market stylised facts
  (`generate`, `generate_continuation`, `is_synthetic_symbol`).
- `pipelines.sources.binance_files`: Binance kline dumps, .zip or .csv (`read_klines`, `read_many`).
- `pipelines.sources.ccxt_source`: any CCXT exchange, paged backfill and incremental top-up
  (`fetch_ohlcv_range`, `incremental`).

Submodules are not imported here: ccxt is slow to import and only the ccxt source needs it.
"""
