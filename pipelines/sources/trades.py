"""Trade files → 1-minute candles, and per-minute taker-order facts for whale detection.

Layouts accepted (`.zip` with one CSV inside, or a bare `.csv`; told apart by the first line):
- ccxt public trades (`../shared/data/pumps/*.zip`): header `symbol,timestamp,datetime,side,price,amount,
  btc_volume`; `timestamp` epoch ms, `side` the taker's side, `amount` in the base asset. Only
  timestamp, side, price and amount are needed; other columns are read and ignored.
- Binance aggTrades dumps (data.binance.vision): `agg_trade_id,price,quantity,first_trade_id,last_trade_id,
  transact_time,is_buyer_maker` (+ `is_best_match` in spot dumps), with or without a header row;
  `transact_time` in ms, or µs in spot dumps from 2025 on (told apart by magnitude per row, as for klines);
  `is_buyer_maker` true means the taker sold.

Parsing policy (as `binance_files`). Structural damage (missing file, not a zip/CSV, unknown layout, missing
columns, a non-numeric time, id or side) raises `SourceError` naming the file and row. A non-numeric price or
amount is read as NaN and kept: the candle it lands in fails `validation.candles` (finite values) and the batch
is quarantined rather than half-read. Exact duplicate rows are dropped (ccxt downloads page with overlap and
leave 0.5-7 % of them); aggTrades rows are keyed by `agg_trade_id` (one id with two different rows is an error).

Candles: every minute from the first trade's to the last trade's is present; a minute without trades is a
zero-volume candle with OHLC = the previous close and 0 trades, as an exchange's klines are.

Minutes (`MINUTE_COLUMNS`), one row per candle. An ORDER is all trades of one taker side at one timestamp
(one taker order filled against several makers). Per minute: `n_orders`; `max_order_quote` (the largest
order in quote units, 0.0 without trades) and its side `max_order_side` (+1 buy, -1 sell, 0 none);
`order_p999_24h`, the `quantile` (default 0.999) of all order quote sizes in the trailing `order_window`
(default 24h) strictly before the minute's start (numpy's default linear interpolation; NaN until the data
covers a whole window before the minute); `large_orders`, the orders of the minute above it (0 where NaN).
A minute's row uses trades up to its own end only (no look-ahead).

Several files of one symbol (`build_series`, the `trades` source): files whose trades overlap or abut to the
minute are joined into one continuous series, and where two overlap in time they must hold the same trades
there (else `SourceError`); files further apart stay separate series, with a gap between them in the store
(a silence between files cannot be told from missing data).
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from pipelines.contracts.errors import SourceError
from pipelines.contracts.schema import empty_candles, normalize_candles
from pipelines.sources import SourceConfig

log = logging.getLogger(__name__)

TRADE_COLUMNS = ["timestamp", "price", "amount", "side", "n_trades"]
CCXT_FIELDS = ["symbol", "timestamp", "datetime", "side", "price", "amount", "btc_volume"]
CCXT_REQUIRED = ["timestamp", "side", "price", "amount"]
AGG_FIELDS = [
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
]
AGG_EXTRA = "is_best_match"  # spot dumps only

MINUTE_DTYPES: dict[str, str] = {
    "open_time": "datetime64[ns, UTC]",
    "n_orders": "int64",
    "max_order_quote": "float64",
    "max_order_side": "int64",
    "order_p999_24h": "float64",
    "large_orders": "int64",
}
MINUTE_COLUMNS = list(MINUTE_DTYPES)

MINUTE_MS = 60_000
_BOOL = {"true": True, "false": False, "1": True, "0": False}


def empty_minutes() -> pd.DataFrame:
    """A minutes frame with no rows (the `MINUTE_COLUMNS` contract)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in MINUTE_DTYPES.items()})


def empty_trades() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.Series(dtype="int64"),
            "price": pd.Series(dtype="float64"),
            "amount": pd.Series(dtype="float64"),
            "side": pd.Series(dtype="str"),
            "n_trades": pd.Series(dtype="int64"),
        }
    )


# ---------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    """The CSV text of a trade file; SourceError for a missing, non-zip or multi-file archive."""
    if not path.is_file():
        raise SourceError(f"trade file not found: {path}; check the path (expected a .zip or .csv of trades)")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if not n.endswith("/")]
                if len(members) != 1:
                    raise SourceError(
                        f"{path}: expected one CSV inside the zip, found {len(members)} files {members[:3]}"
                    )
                raw = zf.read(members[0])
        except zipfile.BadZipFile:
            raise SourceError(f"{path}: not a valid zip archive; re-download the trade file") from None
    elif suffix == ".csv":
        raw = path.read_bytes()
    else:
        raise SourceError(f"{path}: unsupported file type {suffix!r}; pass a trade .zip or .csv")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not a text CSV (byte {e.start} is not UTF-8); pass a trade CSV") from None


def _csv(text: str, path: Path, width: int, **kwargs) -> pd.DataFrame:
    """All cells as strings (empty cells as ""); SourceError for a row without `width` fields."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    counts = np.fromiter((ln.count(",") + 1 for ln in lines), dtype=np.int64, count=len(lines))
    bad = np.flatnonzero(counts != width)
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{path}: line {i + 1}: expected {width} comma-separated fields, found {counts[i]} "
            f"({bad.size} bad rows); the file is truncated or damaged"
        )
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, index_col=False, **kwargs)
    except (pd.errors.ParserError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise SourceError(
            f"{path}: not a readable trade CSV ({reason}); the file is truncated or damaged"
        ) from None


def _integers(col: pd.Series, name: str, path: Path, line0: int) -> np.ndarray:
    """Column as int64; SourceError naming the first cell that is not an integer (keys and times)."""
    vals = pd.to_numeric(col.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals) | (vals != np.floor(vals))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SourceError(
            f"{path}: line {i + line0}: column {name!r} has non-integer value {col.iloc[i]!r} "
            f"({int(bad.sum())} such rows); fix or re-download the file"
        )
    return vals.astype(np.int64)


def _epoch_ms(raw: np.ndarray, name: str, path: Path, line0: int) -> np.ndarray:
    """Epoch times in ms or µs (below 1e14 the unit is ms, until year 5138) → int64 epoch ms."""
    if (raw < 1e11).any():  # before 1973 in ms: seconds or garbage
        i = int(np.flatnonzero(raw < 1e11)[0])
        raise SourceError(f"{path}: line {i + line0}: {name} {raw[i]} is not epoch ms or µs")
    return np.where(raw < 1e14, raw, raw // 1000)


def _floats(col: pd.Series, name: str, path: Path) -> np.ndarray:
    vals = pd.to_numeric(col.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    n_bad = int(np.isnan(vals).sum())
    if n_bad:
        log.warning("%s: %d non-numeric %s cells read as NaN; validation will reject them", path, n_bad, name)
    return vals


def _read_ccxt(text: str, path: Path, first: list[str]) -> tuple[pd.DataFrame, int]:
    raw = _csv(text, path, len(first))
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in CCXT_REQUIRED if c not in raw.columns]
    if missing:
        raise SourceError(
            f"{path}: line 1: header lacks columns {missing}; expected a ccxt trades header "
            f"{','.join(CCXT_FIELDS)} or a Binance aggTrades dump {','.join(AGG_FIELDS)}"
        )
    if raw.empty:
        raise SourceError(f"{path}: header but no rows; expected trades")
    dup = raw.duplicated(keep="first").to_numpy()
    line0 = 2  # data row i is file line i + 2 (after the header)
    ts = _epoch_ms(_integers(raw["timestamp"], "timestamp", path, line0), "timestamp", path, line0)
    side = raw["side"].str.strip().str.lower()
    bad = ~side.isin(["buy", "sell"]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SourceError(
            f"{path}: line {i + line0}: side {raw['side'].iloc[i]!r} is not 'buy' or 'sell' "
            f"({int(bad.sum())} such rows); the taker side is needed to split buys from sells"
        )
    out = pd.DataFrame(
        {
            "timestamp": ts,
            "price": _floats(raw["price"], "price", path),
            "amount": _floats(raw["amount"], "amount", path),
            "side": side.to_numpy(dtype=object),
            "n_trades": np.ones(len(raw), dtype=np.int64),
        }
    )
    return out[~dup], int(dup.sum())


def _read_agg(text: str, path: Path, first: list[str]) -> tuple[pd.DataFrame, int]:
    has_header = first[0] == "agg_trade_id"
    if has_header and first not in (AGG_FIELDS, [*AGG_FIELDS, AGG_EXTRA]):
        raise SourceError(
            f"{path}: line 1: unrecognised aggTrades header {','.join(first)[:100]!r}; "
            f"expected {','.join(AGG_FIELDS)}[,{AGG_EXTRA}]"
        )
    if len(first) not in (len(AGG_FIELDS), len(AGG_FIELDS) + 1):
        raise SourceError(
            f"{path}: line 1: {len(first)} fields; a Binance aggTrades row has {len(AGG_FIELDS)} "
            f"({','.join(AGG_FIELDS)}) or {len(AGG_FIELDS) + 1} (spot dumps add {AGG_EXTRA})"
        )
    names = AGG_FIELDS + ([AGG_EXTRA] if len(first) > len(AGG_FIELDS) else [])
    raw = _csv(text, path, len(names), header=None, names=names, skiprows=1 if has_header else 0)
    if raw.empty:
        raise SourceError(f"{path}: header but no rows; expected aggTrades")
    line0 = 2 if has_header else 1
    ids = _integers(raw["agg_trade_id"], "agg_trade_id", path, line0)
    dup = raw.duplicated(keep="first").to_numpy()
    clash = pd.Series(ids).duplicated(keep="first").to_numpy() & ~dup
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise SourceError(
            f"{path}: line {i + line0}: agg_trade_id {ids[i]} appears again with different values "
            f"({int(clash.sum())} such rows); the file mixes two downloads, re-download it"
        )
    first_id = _integers(raw["first_trade_id"], "first_trade_id", path, line0)
    last_id = _integers(raw["last_trade_id"], "last_trade_id", path, line0)
    n_trades = last_id - first_id + 1
    if (n_trades < 1).any():
        i = int(np.flatnonzero(n_trades < 1)[0])
        raise SourceError(
            f"{path}: line {i + line0}: last_trade_id {last_id[i]} < first_trade_id {first_id[i]}; "
            "not a Binance aggTrades row"
        )
    ts_raw = _integers(raw["transact_time"], "transact_time", path, line0)
    ts = _epoch_ms(ts_raw, "transact_time", path, line0)
    maker = raw["is_buyer_maker"].str.strip().str.lower().map(_BOOL)
    bad = maker.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SourceError(
            f"{path}: line {i + line0}: is_buyer_maker {raw['is_buyer_maker'].iloc[i]!r} is not true/false "
            f"({int(bad.sum())} such rows)"
        )
    out = pd.DataFrame(
        {
            "timestamp": ts,
            "price": _floats(raw["price"], "price", path),
            "amount": _floats(raw["quantity"], "quantity", path),
            "side": np.where(maker.to_numpy(dtype=bool), "sell", "buy").astype(object),
            "n_trades": n_trades,
        }
    )
    return out[~dup], int(dup.sum())


def read_trades(path: str | Path) -> pd.DataFrame:
    """Read one trade file (ccxt trades or Binance aggTrades, see the module doc) into a trade frame.

    Returns:
        Columns `TRADE_COLUMNS`: `timestamp` int64 epoch ms, `price` float64, `amount` float64 (base
        asset), `side` str ("buy"/"sell", the taker's side), `n_trades` int64 (exchange trades the row stands
        for: 1 for ccxt rows, last_trade_id - first_trade_id + 1 for aggTrades); exact duplicates dropped,
        stably sorted by timestamp. `attrs` holds `path`, `layout` ("ccxt" | "aggTrades"), `rows_read` and
        `duplicates_dropped`.

    Raises:
        SourceError: missing file, bad archive, empty file, unknown layout or header, rows the CSV parser
            cannot split, a non-integer time/id, an unknown side; the message names the file and line.
    """
    path = Path(path)
    text = _read_text(path)
    head = text.lstrip("\r\n").split("\n", 1)[0].strip()
    if not head:
        raise SourceError(f"{path}: empty file; expected trades (ccxt CSV or Binance aggTrades)")
    first = [f.strip() for f in head.split(",")]
    if first[0] == "agg_trade_id" or first[0].lstrip("-").isdigit():
        df, dups = _read_agg(text, path, first)
        layout = "aggTrades"
    else:
        df, dups = _read_ccxt(text, path, first)
        layout = "ccxt"
    out = df.sort_values("timestamp", kind="mergesort", ignore_index=True)
    out["side"] = out["side"].astype("str")
    out.attrs = {
        "path": str(path),
        "layout": layout,
        "rows_read": len(out) + dups,
        "duplicates_dropped": dups,
    }
    return out[TRADE_COLUMNS]


# ---------------------------------------------------------------- trades → candles + minutes


def _window_ms(order_window: str | pd.Timedelta) -> int:
    try:
        w = pd.Timedelta(order_window)
    except (ValueError, TypeError):
        raise SourceError(
            f"order_window {order_window!r} is not a duration; use e.g. '24h' or '90min'"
        ) from None
    if pd.isna(w) or w <= pd.Timedelta(0):
        raise SourceError(f"order_window {order_window!r} must be a positive duration, e.g. '24h'")
    return int(w / pd.Timedelta(milliseconds=1))


def _segment_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in sorted `keys` (non-empty)."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def trades_to_minutes(
    trades: pd.DataFrame,
    symbol: str,
    *,
    interval: str = "1m",
    order_window: str = "24h",
    quantile: float = 0.999,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """1-minute candles and the per-minute taker-order frame of one continuous series of trades.

    Args:
        trades: a `read_trades` frame (any row order; sorted here, stably, by timestamp).
        symbol: the store's symbol for the candles, e.g. "BRDBTC" (the files' own naming is ignored).
        interval: only "1m".
        order_window: trailing window of the order-size quantile (a pandas duration, default "24h").
        quantile: which quantile of order quote sizes `order_p999_24h` holds (default 0.999).

    Returns:
        (candles, minutes): candles in the `pipelines.contracts.schema` contract, one per minute from the
        first trade's minute to the last's (zero-volume candles where no trade happened); minutes with
        `MINUTE_COLUMNS`, one row per candle, same open_time. Empty frames for no trades.

    Raises:
        SourceError: another interval, a bad window or quantile, a frame without the trade columns or
            with a side other than buy/sell.
    """
    if interval != "1m":
        raise SourceError(f"trades are aggregated to 1m candles only, not {interval!r}; use --interval 1m")
    if not isinstance(symbol, str) or not symbol:
        raise SourceError("a symbol is required for candles built from trades (e.g. 'BRDBTC')")
    if not 0.0 <= float(quantile) <= 1.0:
        raise SourceError(f"quantile {quantile!r} must be between 0 and 1 (e.g. 0.999)")
    window = _window_ms(order_window)
    missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
    if missing:
        raise SourceError(f"trade frame lacks columns {missing}; read trade files with read_trades")
    if trades.empty:
        return empty_candles(), empty_minutes()

    ts = trades["timestamp"].to_numpy(dtype=np.int64)
    perm = np.argsort(ts, kind="stable")
    ts = ts[perm]
    price = trades["price"].to_numpy(dtype=np.float64)[perm]
    amount = trades["amount"].to_numpy(dtype=np.float64)[perm]
    n_trades = trades["n_trades"].to_numpy(dtype=np.int64)[perm]
    side = trades["side"].astype(str).to_numpy()[perm]
    buy = side == "buy"
    if not (buy | (side == "sell")).all():
        bad = side[~(buy | (side == "sell"))][0]
        raise SourceError(f"trade side {bad!r} is not 'buy' or 'sell' (the taker's side)")
    quote = price * amount

    # candles: one per minute of the span; per-minute reductions over the (time-sorted) trades
    minute = ts // MINUTE_MS
    m0 = int(minute[0])
    idx = minute - m0
    n_min = int(idx[-1]) + 1
    starts = _segment_starts(idx)
    ends = np.r_[starts[1:], len(ts)]
    present = idx[starts]

    def per_minute(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(n_min, fill, dtype=values.dtype)
        out[present] = np.add.reduceat(values, starts)
        return out

    close_p = np.full(n_min, np.nan)
    close_p[present] = price[ends - 1]
    has = np.zeros(n_min, dtype=bool)
    has[present] = True
    prev_close = close_p[np.maximum.accumulate(np.where(has, np.arange(n_min), 0))]
    o, h, lo, c = (prev_close.copy() for _ in range(4))
    o[present] = price[starts]
    h[present] = np.maximum.reduceat(price, starts)
    lo[present] = np.minimum.reduceat(price, starts)
    c[present] = price[ends - 1]
    open_ms = (m0 + np.arange(n_min, dtype=np.int64)) * MINUTE_MS
    open_time = pd.to_datetime(open_ms, unit="ms", utc=True)
    candles = normalize_candles(
        pd.DataFrame(
            {
                "symbol": symbol,
                "interval": interval,
                "open_time": open_time,
                "open": o,
                "high": h,
                "low": lo,
                "close": c,
                "volume": per_minute(amount, 0.0),
                "quote_asset_volume": per_minute(quote, 0.0),
                "number_of_trades": per_minute(n_trades, 0),
                "taker_buy_base_asset_volume": per_minute(np.where(buy, amount, 0.0), 0.0),
                "taker_buy_quote_asset_volume": per_minute(np.where(buy, quote, 0.0), 0.0),
            }
        )
    )

    # orders: all trades of one taker side at one timestamp, summed; sorted by (time, side)
    operm = np.lexsort((buy, ts))
    okey_ts, okey_buy = ts[operm], buy[operm]
    ostarts = np.flatnonzero(np.r_[True, (okey_ts[1:] != okey_ts[:-1]) | (okey_buy[1:] != okey_buy[:-1])])
    o_ts = okey_ts[ostarts]
    o_side = np.where(okey_buy[ostarts], 1, -1).astype(np.int64)
    o_quote = np.add.reduceat(quote[operm], ostarts)
    o_min = o_ts // MINUTE_MS - m0

    n_orders = np.bincount(o_min, minlength=n_min).astype(np.int64)
    mstarts = _segment_starts(o_min)
    mgroup = np.repeat(np.arange(len(mstarts)), np.diff(np.r_[mstarts, len(o_min)]))
    mmax = np.maximum.reduceat(o_quote, mstarts)
    max_quote = np.zeros(n_min)
    max_quote[o_min[mstarts]] = mmax
    max_side = np.zeros(n_min, dtype=np.int64)
    is_max = np.flatnonzero(o_quote == mmax[mgroup])  # NaN sizes never match: side stays 0
    groups, first = np.unique(mgroup[is_max], return_index=True)
    max_side[o_min[mstarts[groups]]] = o_side[is_max[first]]

    # trailing quantile of order sizes over [start - window, start), from a full window on
    p = np.full(n_min, np.nan)
    valid = np.flatnonzero(open_ms - ts[0] >= window)
    if valid.size:
        lo_i = np.searchsorted(o_ts, open_ms[valid] - window, side="left")
        hi_i = np.searchsorted(o_ts, open_ms[valid], side="left")
        last_key, last_val = (-1, -1), np.nan
        for j, a, b in zip(valid.tolist(), lo_i.tolist(), hi_i.tolist(), strict=True):
            if (a, b) != last_key:  # the window changed only if an order entered or left it
                last_key = (a, b)
                last_val = float(np.quantile(o_quote[a:b], quantile)) if b > a else np.nan
            p[j] = last_val
    with np.errstate(invalid="ignore"):
        big = o_quote > p[o_min]  # NaN threshold: False
    minutes = pd.DataFrame(
        {
            "open_time": open_time,
            "n_orders": n_orders,
            "max_order_quote": max_quote,
            "max_order_side": max_side,
            "order_p999_24h": p,
            "large_orders": np.bincount(o_min, weights=big, minlength=n_min).astype(np.int64),
        }
    ).astype(MINUTE_DTYPES)
    return candles, minutes


# ---------------------------------------------------------------- several files → one or more series


@dataclass(frozen=True)
class TradeSeries:
    """What `build_series` made of some trade files: candles, minutes and counts for the ingest summary."""

    candles: pd.DataFrame
    minutes: pd.DataFrame
    trades: int  # trades used (after dropping duplicates and the second copy of overlaps)
    duplicates_dropped: int  # exact duplicate rows dropped inside the files
    overlapping: int  # trades present in two overlapping files, counted once
    orders: int  # taker orders (trades of one side at one timestamp)
    segments: int  # continuous series the files formed


def _same_trades(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    def canon(f: pd.DataFrame) -> pd.DataFrame:
        f = f[TRADE_COLUMNS].astype({"side": object})
        return f.sort_values(TRADE_COLUMNS, kind="mergesort", ignore_index=True)

    return len(a) == len(b) and canon(a).equals(canon(b))


def _join(files: list[pd.DataFrame]) -> tuple[list[pd.DataFrame], int]:
    """Group trade frames into continuous series (overlapping or abutting to the minute); returns the
    series and the number of trades that two overlapping files both held (counted once)."""
    segments: list[list[pd.DataFrame]] = []
    overlapping, last_ts, last_path = 0, 0, ""
    for f in sorted(files, key=lambda f: int(f["timestamp"].iloc[0])):
        path = str(f.attrs.get("path", "a trade file"))
        t0, t1 = int(f["timestamp"].iloc[0]), int(f["timestamp"].iloc[-1])
        if segments and t0 // MINUTE_MS <= last_ts // MINUTE_MS + 1:
            if t0 <= last_ts:  # overlap in time: both must hold the same trades there
                hi = min(last_ts, t1)
                seg = pd.concat(segments[-1], ignore_index=True)
                mine = seg[(seg["timestamp"] >= t0) & (seg["timestamp"] <= hi)]
                theirs = f[(f["timestamp"] >= t0) & (f["timestamp"] <= hi)]
                if not _same_trades(mine, theirs):
                    span = f"{pd.Timestamp(t0, unit='ms')} to {pd.Timestamp(hi, unit='ms')} UTC"
                    raise SourceError(
                        f"{path} overlaps {last_path} from {span} but the trades there differ "
                        f"({len(theirs)} vs {len(mine)}); pass files that agree where they overlap, or one of them"
                    )
                overlapping += len(theirs)
                f = f[f["timestamp"] > last_ts]
            segments[-1].append(f)
            last_ts = max(last_ts, t1)
        else:
            segments.append([f])
            last_ts = t1
        last_path = path
    return [pd.concat(s, ignore_index=True) for s in segments], overlapping


def build_series(
    paths: Iterable[str | Path],
    symbol: str,
    interval: str = "1m",
    *,
    order_window: str = "24h",
    quantile: float = 0.999,
) -> TradeSeries:
    """Read trade files of one symbol and build its candles and minutes (see the module doc for joins).

    Raises:
        SourceError: no files, a bad file (see `read_trades`), overlapping files that disagree, or a bad
            interval/window/quantile (see `trades_to_minutes`).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SourceError(f"no trade files given for {symbol} {interval}; pass at least one .zip or .csv")
    if interval != "1m":
        raise SourceError(f"trades are aggregated to 1m candles only, not {interval!r}; use --interval 1m")
    files = [read_trades(p) for p in paths]
    dups = sum(int(f.attrs["duplicates_dropped"]) for f in files)
    segments, overlapping = _join(files)
    built = [
        trades_to_minutes(s, symbol, interval=interval, order_window=order_window, quantile=quantile)
        for s in segments
    ]
    candles = pd.concat([c for c, _ in built], ignore_index=True)
    minutes = pd.concat([m for _, m in built], ignore_index=True)
    order = np.argsort(candles["open_time"].to_numpy(), kind="stable")
    candles = candles.iloc[order].reset_index(drop=True)
    minutes = minutes.iloc[order].reset_index(drop=True)
    return TradeSeries(
        candles=candles,
        minutes=minutes,
        trades=sum(len(s) for s in segments),
        duplicates_dropped=dups,
        overlapping=overlapping,
        orders=int(minutes["n_orders"].sum()),
        segments=len(segments),
    )


# ---------------------------------------------------------------- the source


class TradesConfig(SourceConfig):
    """`kairos ingest trades` options."""

    paths: tuple[Path, ...] = ()  # trade files of one symbol: ccxt trade CSVs or Binance aggTrades dumps
    order_window: str = Field("24h", description="trailing window of the order-size quantile")
    quantile: float = Field(0.999, gt=0, lt=1, description="quantile of order sizes a large order exceeds")

    @field_validator("order_window")
    @classmethod
    def _window(cls, v: str) -> str:
        try:
            ok = pd.Timedelta(v) > pd.Timedelta(0)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{v!r} is not a positive duration (e.g. '24h')")
        return v


class TradesSource:
    """1-minute candles built from the given trade files, whole (the store's upsert is keyed);
    `fetch_minutes` gives the matching per-minute order facts, `build` both in one read."""

    Config = TradesConfig

    def __init__(self, config: TradesConfig) -> None:
        self.config = config

    def build(self, symbol: str, interval: str = "1m") -> TradeSeries:
        c = self.config
        return build_series(c.paths, symbol, interval, order_window=c.order_window, quantile=c.quantile)

    @staticmethod
    def _after(df: pd.DataFrame, last_open_time: pd.Timestamp | None) -> pd.DataFrame:
        if last_open_time is None or df.empty:
            return df
        t = pd.Timestamp(last_open_time)
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        return df[df["open_time"] > t].reset_index(drop=True)

    def fetch(
        self, symbol: str, interval: str, *, last_open_time: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        return self._after(self.build(symbol, interval).candles, last_open_time)

    def fetch_minutes(
        self, symbol: str, interval: str = "1m", *, last_open_time: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        return self._after(self.build(symbol, interval).minutes, last_open_time)


SOURCE = TradesSource
