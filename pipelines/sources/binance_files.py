"""Binance kline dump files (data.binance.vision): `.zip` with one CSV inside, or a bare `.csv`.

Layouts accepted: USDⓈ-M futures dumps have a header row, spot dumps have none; open times are in
epoch milliseconds, or microseconds in spot dumps from 2025 on (told apart by magnitude, per row).

Parsing policy. Structural damage (missing file, not a zip/CSV, empty file, a row without exactly
12 fields, a non-numeric open_time or trade count) raises `SourceError` naming the file and line:
such a row cannot be placed or typed. A non-numeric price or volume is coerced to NaN and kept, so
the candle suite (`validation.candles`, finite values) names the failed expectation and the batch is
quarantined rather than half-read. No other value checks happen here.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.contracts.errors import SourceError
from pipelines.contracts.schema import INTERVALS, empty_candles, normalize_candles
from pipelines.sources import SourceConfig

log = logging.getLogger(__name__)

KLINE_FIELDS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]
RENAME = {
    "quote_volume": "quote_asset_volume",
    "count": "number_of_trades",
    "taker_buy_volume": "taker_buy_base_asset_volume",
    "taker_buy_quote_volume": "taker_buy_quote_asset_volume",
}
FLOAT_FIELDS = [
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_volume",
    "taker_buy_quote_volume",
]
_NS_PER = {"ms": 1_000_000, "us": 1_000}


def _read_text(path: Path) -> str:
    """The CSV text of a dump file; SourceError for a missing, non-zip or multi-file archive."""
    if not path.is_file():
        raise SourceError(f"kline file not found: {path}; check the path (expected a Binance .zip or .csv)")
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if not n.endswith("/")]
                if len(members) != 1:
                    raise SourceError(
                        f"{path}: expected one CSV inside the zip, found {len(members)} files {members[:3]}"
                    )
                raw = zf.read(members[0])
        except zipfile.BadZipFile:
            raise SourceError(f"{path}: not a valid zip archive; re-download the Binance dump") from None
    elif path.suffix.lower() == ".csv":
        raw = path.read_bytes()
    else:
        raise SourceError(f"{path}: unsupported file type {path.suffix!r}; pass a Binance kline .zip or .csv")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(
            f"{path}: not a text CSV (byte {e.start} is not UTF-8); pass a Binance kline dump"
        ) from None


def _data_lines(text: str, path: Path) -> tuple[list[str], int]:
    """(data lines, number of header lines skipped); checks every row has exactly 12 fields."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SourceError(f"{path}: empty file; expected Binance kline rows")
    first = lines[0].split(",")[0].strip()
    skip = 0
    if first and not first.lstrip("-").isdigit():
        header = [f.strip() for f in lines[0].split(",")]
        if header[:1] != ["open_time"] or len(header) != len(KLINE_FIELDS):
            raise SourceError(
                f"{path}: line 1: unrecognised header {lines[0][:80]!r}; expected {','.join(KLINE_FIELDS)}"
            )
        skip = 1
    data = lines[skip:]
    if not data:
        raise SourceError(f"{path}: header but no rows; expected Binance kline rows")
    counts = np.fromiter((ln.count(",") + 1 for ln in data), dtype=np.int64, count=len(data))
    bad = np.flatnonzero(counts != len(KLINE_FIELDS))
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{path}: line {i + 1 + skip}: expected {len(KLINE_FIELDS)} comma-separated kline fields, found "
            f"{counts[i]} ({bad.size} bad rows); the file is truncated or not a Binance kline dump"
        )
    return data, skip


def _strict_numeric(col: pd.Series, name: str, path: Path, skip: int) -> np.ndarray:
    """Column as float64; SourceError naming the first non-numeric cell (for key/integer columns)."""
    vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{path}: line {i + 1 + skip}: column {name!r} has non-numeric value {col.iloc[i]!r} "
            f"({bad.size} such rows); fix or re-download the file"
        )
    return vals


def _open_time_ns(ms_or_us: np.ndarray, path: Path, skip: int) -> np.ndarray:
    """Epoch open times → int64 ns. Below 1e14 the unit is ms (until year 5138), else µs."""
    raw = ms_or_us.astype(np.int64)
    if (raw < 1e11).any():  # before 1973 in ms: likely seconds or garbage
        i = int(np.flatnonzero(raw < 1e11)[0])
        raise SourceError(f"{path}: line {i + 1 + skip}: open_time {raw[i]} is not epoch ms or µs")
    return np.where(raw < 1e14, raw * _NS_PER["ms"], raw * _NS_PER["us"])


def read_klines(path: str | Path, symbol: str, interval: str = "1m") -> pd.DataFrame:
    """Read one Binance kline dump into a candle-contract frame, in file order.

    Args:
        path: a `.zip` (one CSV inside) or `.csv` kline dump, with or without header row.
        symbol: the store's symbol for these candles, e.g. "FILUSDT".
        interval: candle interval the file holds, e.g. "1m" (not inferred from the name).

    Returns:
        Frame with `CANDLE_COLUMNS`; non-numeric prices/volumes are NaN (validation flags them).

    Raises:
        SourceError: missing file, bad archive, empty file, wrong field count, unparsable open_time
            or trade count; the message names the file and line.
    """
    path = Path(path)
    if interval not in INTERVALS:
        raise SourceError(f"unknown interval {interval!r} for {path.name}; use one of {sorted(INTERVALS)}")
    if not symbol or not isinstance(symbol, str):
        raise SourceError(f"{path}: a symbol is required (e.g. 'FILUSDT')")
    data, skip = _data_lines(_read_text(path), path)
    text = "\n".join(data)
    try:  # fast path: the C parser types clean files directly (~5x faster than via strings)
        raw = pd.read_csv(
            io.StringIO(text), header=None, names=KLINE_FIELDS, dtype="float64", usecols=range(11)
        )
        if raw.isna().to_numpy().any():  # empty cells: take the path that names them
            raise ValueError("empty cells")
    except ValueError:
        raw = pd.read_csv(io.StringIO(text), header=None, names=KLINE_FIELDS, dtype=str, na_filter=False)
    out = pd.DataFrame({"symbol": symbol, "interval": interval}, index=raw.index)
    times = _strict_numeric(raw["open_time"], "open_time", path, skip)
    out["open_time"] = pd.to_datetime(_open_time_ns(times, path, skip), utc=True)
    n_coerced = 0
    for field in FLOAT_FIELDS:
        col = raw[field] if raw[field].dtype == np.float64 else raw[field].str.strip()
        vals = pd.to_numeric(col, errors="coerce").astype("float64")
        n_coerced += int(vals.isna().sum())
        out[RENAME.get(field, field)] = vals.to_numpy()
    out["number_of_trades"] = _strict_numeric(raw["count"], "count", path, skip).astype(np.int64)
    if n_coerced:
        log.warning(
            "%s: %d non-numeric price/volume cells read as NaN; validation will reject them", path, n_coerced
        )
    return normalize_candles(out)


def read_many(paths: Iterable[str | Path], symbol: str, interval: str = "1m") -> pd.DataFrame:
    """Read several dumps of one series (e.g. monthly files) into one frame sorted by open_time.

    Duplicates across files are kept (validation reports them; the store's upsert is keyed).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SourceError(f"no kline files given for {symbol} {interval}; pass at least one .zip or .csv")
    frames = [read_klines(p, symbol, interval) for p in paths]
    if not any(len(f) for f in frames):
        return empty_candles()
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values("open_time", kind="mergesort", ignore_index=True)


class BinanceFilesConfig(SourceConfig):
    """`kairos ingest binance-files` options."""

    paths: tuple[Path, ...] = ()  # .zip or .csv kline dumps of one series


class BinanceFilesSource:
    """The given dump files, whole: the store's keyed upsert makes re-reading overlapping files harmless,
    so `last_open_time` is not needed."""

    Config = BinanceFilesConfig

    def __init__(self, config: BinanceFilesConfig) -> None:
        self.config = config

    def fetch(
        self, symbol: str, interval: str, *, last_open_time: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        return read_many(self.config.paths, symbol, interval)


SOURCE = BinanceFilesSource
