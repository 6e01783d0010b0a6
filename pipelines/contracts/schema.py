"""The candle contract (docs/architecture.md): the 11 raw Binance kline fields plus symbol/interval keys.

A candle frame has exactly `CANDLE_COLUMNS`, one row per (symbol, interval, open_time), with
`open_time` a tz-aware UTC `datetime64[ns, UTC]`. `spread_bps` is nullable (only a book feed
gives it); `taker_buy_ratio` is derived = taker_buy_base_asset_volume / volume (0 when volume is 0).

pandas is imported lazily (inside the frame functions and for `INTERVALS`): the serving process
uses `INTERVAL_MS` / `interval_ms` and the column names only, and never loads pandas (~70 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
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

INTERVAL_MS: dict[str, int] = {  # candle length in epoch milliseconds
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}


def __getattr__(name: str) -> Any:
    """`INTERVALS` (interval → pd.Timedelta) is built on first use, so importing this module does
    not import pandas; `from pipelines.contracts.schema import INTERVALS` works as for a plain global."""
    if name == "INTERVALS":
        import pandas as pd

        value = {k: pd.Timedelta(milliseconds=ms) for k, ms in INTERVAL_MS.items()}
        globals()["INTERVALS"] = value  # later look-ups find the global, not this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def interval_ms(interval: str) -> int:
    """The candle length of `interval` in milliseconds (no pandas); ValueError naming the allowed values."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise ValueError(f"unknown interval {interval!r}; expected one of {sorted(INTERVAL_MS)}") from None


def interval_delta(interval: str) -> pd.Timedelta:
    """The candle length of `interval` as a pd.Timedelta; raises ValueError naming the allowed values."""
    import pandas as pd

    return pd.Timedelta(milliseconds=interval_ms(interval))


def taker_buy_ratio(taker_buy_base: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """taker_buy_base / volume, 0 where volume is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(volume > 0, taker_buy_base / np.where(volume > 0, volume, 1.0), 0.0)
    return r


def empty_candles() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in DTYPES.items()})[CANDLE_COLUMNS]


def normalize_candles(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame to the candle contract (column order, dtypes, derived taker_buy_ratio).

    Does not validate values (that is `validation.candles`); raises KeyError naming missing columns.
    """
    import pandas as pd

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
