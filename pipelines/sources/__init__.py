"""Candle sources behind one protocol, found by name: `get_source(name, options).fetch(...)`.

A source is ONE module `pipelines/sources/<name>.py` (`-` in the name becomes `_`; a module that would
share its name with the library it wraps takes a `_source` suffix, as `ccxt_source.py` does) exposing
`SOURCE`: a class with a typed `Config` (a `SourceConfig`, parsed from the options dict) whose
instances implement `Source`. Nothing else lists the sources, and no flow branches on one.

- `synthetic`: seeded synthetic series with real-market stylised facts (`generate`, `is_synthetic_symbol`).
- `binance-files`: Binance kline dumps, .zip or .csv (`read_klines`, `read_many`).
- `ccxt`: any CCXT exchange, paged backfill and incremental top-up (`fetch_ohlcv_range`).
- `trades`: trade files (ccxt trades, Binance aggTrades) → 1m candles + per-minute taker-order facts
  (`read_trades`, `trades_to_minutes`, `build_series`; the minutes go to the store's `trade_minutes`).

Submodules are imported only when asked for: ccxt is slow to import and only the ccxt source needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.contracts.errors import SourceError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Source", "SourceConfig", "available_sources", "get_source"]


@runtime_checkable
class Source(Protocol):
    """Where candles come from."""

    def fetch(
        self, symbol: str, interval: str, *, last_open_time: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        """Candles of `symbol` at `interval` (a `pipelines.contracts.schema` frame, possibly empty).

        `last_open_time` is the newest candle already stored (None: nothing stored); a source that can
        continue a series starts after it, so a daily run appends only what is new.
        """
        ...


class SourceConfig(BaseModel):
    """Base of every source's typed config: immutable, and an unknown option is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _module_names(name: str) -> list[str]:
    base = name.replace("-", "_")
    return [f"{__name__}.{base}", f"{__name__}.{base}_source"]


def available_sources() -> list[str]:
    """Names of the source modules in this package (read from the folder, nothing imported)."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            names.append(info.name.removesuffix("_source").replace("_", "-"))
    return sorted(names)


def _unset(value: Any) -> bool:
    """An option left unset: None or empty (one CLI command may offer every source's options)."""
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def get_source(name: str, options: Mapping[str, Any] | None = None) -> Source:
    """The source `name`, configured from `options` (parsed into its typed `Config`).

    Options that are None or empty count as not given.

    Raises:
        SourceError: unknown source (naming the known ones) or a bad option (naming it and the fix).
    """
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SourceError(f"unknown source {name!r}; known sources: {available_sources()}")
    module_name = next((m for m in _module_names(name) if importlib.util.find_spec(m) is not None), None)
    if module_name is None:
        raise SourceError(
            f"unknown source {name!r}; known sources: {available_sources()} "
            "(a source is one module pipelines/sources/<name>.py exposing SOURCE)"
        )
    cls = getattr(importlib.import_module(module_name), "SOURCE", None)
    config_class = getattr(cls, "Config", None)
    if not (isinstance(config_class, type) and issubclass(config_class, SourceConfig)):
        raise SourceError(
            f"{module_name} must define SOURCE, a class with a `Config` (a SourceConfig) and `fetch`"
        )
    given = {k: v for k, v in (options or {}).items() if not _unset(v)}
    try:
        config = config_class.model_validate(given)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(options)"
        takes = sorted(config_class.model_fields)
        if first["type"] == "extra_forbidden":
            raise SourceError(f"source {name!r} has no option {where!r}; it takes {takes}") from None
        raise SourceError(f"source {name!r}: option {where}: {first['msg']} (options: {takes})") from None
    return cls(config)
