"""The candle contract (DESIGN.md): the 11 raw Binance kline fields plus symbol/interval keys.

A candle frame has exactly `CANDLE_COLUMNS`, one row per (symbol, interval, open_time), with
`open_time` a tz-aware UTC `datetime64[ns, UTC]`. `spread_bps` is nullable (only a book feed
gives it); `taker_buy_ratio` is derived = taker_buy_base_asset_volume / volume (0 when volume is 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEY_COLUMNS = ["symbol", "interval", "open_time"]
PRICE_COLUMNS = ["open", "high", "low", "close"]
VOLUME_COLUMNS = [
    "volume",
    "quote_asset_volume",
    "number_of_trades",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
]
CANDLE_COLUMNS = KEY_COLUMNS + PRICE_COLUMNS + VOLUME_COLUMNS + ["spread_bps", "taker_buy_ratio"]

DTYPES: dict[str, str] = {
    "symbol": "string",
    "interval": "string",
    "open_time": "datetime64[ns, UTC]",
    **{c: "float64" for c in PRICE_COLUMNS},
    "volume": "float64",
    "quote_asset_volume": "float64",
    "number_of_trades": "int64",
    "taker_buy_base_asset_volume": "float64",
    "taker_buy_quote_asset_volume": "float64",
    "spread_bps": "float64",
    "taker_buy_ratio": "float64",
}

INTERVALS: dict[str, pd.Timedelta] = {
    "1m": pd.Timedelta(minutes=1),
    "3m": pd.Timedelta(minutes=3),
    "5m": pd.Timedelta(minutes=5),
    "15m": pd.Timedelta(minutes=15),
    "30m": pd.Timedelta(minutes=30),
    "1h": pd.Timedelta(hours=1),
    "4h": pd.Timedelta(hours=4),
    "1d": pd.Timedelta(days=1),
}


def interval_delta(interval: str) -> pd.Timedelta:
    """The candle length of `interval`; raises ValueError naming the allowed values."""
    try:
        return INTERVALS[interval]
    except KeyError:
        raise ValueError(f"unknown interval {interval!r}; expected one of {sorted(INTERVALS)}") from None


def taker_buy_ratio(taker_buy_base: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """taker_buy_base / volume, 0 where volume is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(volume > 0, taker_buy_base / np.where(volume > 0, volume, 1.0), 0.0)
    return r


def empty_candles() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in DTYPES.items()})[CANDLE_COLUMNS]


def normalize_candles(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame to the candle contract (column order, dtypes, derived taker_buy_ratio).

    Does not validate values (that is `validation.candles`); raises KeyError naming missing columns.
    """
    out = df.copy()
    if "spread_bps" not in out:
        out["spread_bps"] = np.nan
    if "taker_buy_ratio" not in out:
        out["taker_buy_ratio"] = taker_buy_ratio(
            out["taker_buy_base_asset_volume"].to_numpy(float), out["volume"].to_numpy(float)
        )
    missing = [c for c in CANDLE_COLUMNS if c not in out]
    if missing:
        raise KeyError(f"candle frame lacks columns {missing}")
    out["open_time"] = pd.to_datetime(out["open_time"], utc=True)
    return out[CANDLE_COLUMNS].astype(DTYPES).reset_index(drop=True)
