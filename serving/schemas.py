"""Request/response bodies of the HTTP/WebSocket API (pydantic), and the candle checks at the boundary.

A candle follows the candle contract of `pipelines/contracts/schema.py`: `open_time` as epoch milliseconds or
an ISO-8601 UTC string, the price and volume fields, optional `spread_bps`. Every value must be
finite (NaN/inf are refused), prices positive, volumes non-negative, and high/low must bracket
open/close. A refused body gets a 422 naming the field and the problem.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_MS = 946_684_800_000  # 2000-01-01: smaller values are seconds or microseconds by mistake
MAX_MS = 4_102_444_800_000  # 2100-01-01

Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Volume = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Symbol = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._:/-]+$")]


class Candle(BaseModel):
    """One closed candle (Binance kline field names)."""

    model_config = ConfigDict(extra="forbid")

    open_time: int | str = Field(
        description="epoch milliseconds, or ISO-8601 UTC (e.g. 2023-08-01T00:00:00Z)"
    )
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Volume
    quote_asset_volume: Volume
    number_of_trades: Annotated[int, Field(ge=0, le=10**12)]
    taker_buy_base_asset_volume: Volume
    taker_buy_quote_asset_volume: Volume
    spread_bps: Annotated[float | None, Field(ge=0, allow_inf_nan=False)] = None

    @field_validator("open_time", mode="before")
    @classmethod
    def _time_ms(cls, v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("open_time must be epoch milliseconds or an ISO-8601 UTC string, not a boolean")
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                raise ValueError("open_time must be a whole number of epoch milliseconds")
            v = int(v)
        if isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"open_time {v[:40]!r} is not ISO-8601 (e.g. 2023-08-01T00:00:00Z)"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            v = round(dt.timestamp() * 1000)
        if not isinstance(v, int):
            raise ValueError("open_time must be epoch milliseconds or an ISO-8601 UTC string")
        if not MIN_MS <= v < MAX_MS:
            raise ValueError(
                f"open_time {v} is outside 2000..2100 in epoch milliseconds (seconds or µs by mistake?)"
            )
        return v

    @model_validator(mode="after")
    def _ohlc(self) -> Candle:
        if self.high < max(self.open, self.close, self.low) or self.low > min(self.open, self.close):
            raise ValueError(
                f"inconsistent OHLC: high={self.high} low={self.low} must bracket open={self.open} close={self.close}"
            )
        return self

    def to_record(self, symbol: str, interval: str) -> dict[str, Any]:
        """Plain dict in candle-contract names (+ derived taker_buy_ratio), open_time in epoch ms."""
        d = self.__dict__.copy()  # faster than model_dump on the hot path; fields are flat
        d["symbol"], d["interval"] = symbol, interval
        d["taker_buy_ratio"] = d["taker_buy_base_asset_volume"] / d["volume"] if d["volume"] > 0 else 0.0
        return d


class CandlesIn(BaseModel):
    """Closed candle(s) of one symbol, oldest first, pushed into that symbol's stream."""

    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    interval: str | None = Field(
        None, max_length=8, description="must match the model's; default: the model's"
    )
    candles: list[Candle] = Field(min_length=1, max_length=100_000)
    model: str | None = Field(
        None,
        max_length=200,
        description="registered model name; default: the model serving the symbol (first loaded, if several)",
    )


class PredictIn(CandlesIn):
    """A window of consecutive closed candles, oldest first; the prediction is made at the last one."""


class StreamIn(BaseModel):
    """One WebSocket message: a candle for a symbol."""

    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    candle: Candle
    model: str | None = Field(None, max_length=200, description="registered model name; default: by symbol")


class HorizonOut(BaseModel):
    horizon: int
    value: float = Field(description="the task's output at this horizon (manifest outputs[0].meaning)")
    log_return: float | None = Field(None, description="returns models: the predicted log return (= value)")
    direction: int | None = Field(None, description="returns models: +1 up, -1 down, 0 flat")
    confidence: float | None


class FeatureDeviationOut(BaseModel):
    name: str
    deviation: float


class AlertRefOut(BaseModel):
    level: int = Field(description="threat level of the alert raised at this candle")
    model: str
    version: str = Field(description="the champion's version (alerts follow the champion)")


class PredictionOut(BaseModel):
    request_id: str
    symbol: str
    interval: str
    open_time: int
    model: str
    version: str
    arm: str
    horizons: list[HorizonOut]
    latency_us: float
    extras: dict[str, float | None] | None = Field(
        None,
        description="the bundle's other width-1 outputs (whale: anomaly_score, threat_level); absent if none",
    )
    top_features: list[FeatureDeviationOut] | None = Field(
        None, description="largest entries of the bundle's feature_deviation output; absent if none"
    )
    alert: AlertRefOut | None = Field(None, description="present when this candle raised an alert")


class CandlesOut(BaseModel):
    symbol: str
    accepted: int
    prediction: PredictionOut | None
    warmup_remaining: int = Field(description="candles still needed before predictions start (0 = ready)")


class ErrorOut(BaseModel):
    error: str
    detail: Any = None
