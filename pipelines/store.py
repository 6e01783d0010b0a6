"""The candle store: one DuckDB file, table `candles` keyed (symbol, interval, open_time).

A second table, `trade_minutes`, holds the per-minute taker-order facts of candles built from trades
(`pipelines.sources.trades.MINUTE_COLUMNS`: n_orders, max_order_quote, max_order_side, order_p999_24h,
large_orders), keyed the same way and upserted with the same semantics; it is created on its first write.

Connections are short-lived (one per call, opened and closed inside it), so the CLI, Prefect tasks
and tests can use the same file one after another; DuckDB allows one writing process at a time, so
a call that finds the file locked retries for `lock_timeout_s` and then raises `StoreError`.

Upsert semantics: insert new keys; for a key already stored, replace the row only when some value
differs (a re-downloaded, corrected file fixes the store; re-ingesting the same frame writes
nothing and adds 0). Everything happens in one transaction: on any failure the store is exactly as
it was. Batches are validated (`validation.candles`) before they reach the store; the store itself
only refuses rows it cannot key (null/duplicate keys, unknown interval).

`open_time` is stored as a naive TIMESTAMP holding UTC (no time-zone extension needed); frames
going in and out carry tz-aware UTC times. `taker_buy_ratio` is derived, so it is not stored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from pipelines.contracts.errors import StoreError
from pipelines.contracts.schema import (
    CANDLE_COLUMNS,
    INTERVALS,
    KEY_COLUMNS,
    empty_candles,
    normalize_candles,
)
from pipelines.sources.trades import MINUTE_COLUMNS, MINUTE_DTYPES, empty_minutes

STORED_COLUMNS = [c for c in CANDLE_COLUMNS if c != "taker_buy_ratio"]
VALUE_COLUMNS = [c for c in STORED_COLUMNS if c not in KEY_COLUMNS]
_SQL_TYPES = {
    "symbol": "VARCHAR",
    "interval": "VARCHAR",
    "open_time": "TIMESTAMP",
    "number_of_trades": "BIGINT",
}

_CREATE = (
    "CREATE TABLE IF NOT EXISTS candles (\n"
    + ",\n".join(
        f"  {c} {_SQL_TYPES.get(c, 'DOUBLE')}{' NOT NULL' if c in KEY_COLUMNS else ''}"
        for c in STORED_COLUMNS
    )
    + ",\n  PRIMARY KEY (symbol, interval, open_time)\n)"
)
_JOIN_ON = " AND ".join(f"c.{k} = i.{k}" for k in KEY_COLUMNS)

MINUTE_STORED = [*KEY_COLUMNS, *MINUTE_COLUMNS[1:]]
MINUTE_VALUES = MINUTE_COLUMNS[1:]
_MINUTE_SQL = {"int64": "BIGINT", "float64": "DOUBLE"}
_CREATE_MINUTES = (
    "CREATE TABLE IF NOT EXISTS trade_minutes (\n"
    + ",\n".join(
        f"  {c} {_SQL_TYPES[c] if c in KEY_COLUMNS else _MINUTE_SQL[MINUTE_DTYPES[c]]}"
        f"{' NOT NULL' if c in KEY_COLUMNS else ''}"
        for c in MINUTE_STORED
    )
    + ",\n  PRIMARY KEY (symbol, interval, open_time)\n)"
)


@dataclass(frozen=True)
class MergeResult:
    """What an upsert did: rows added (new keys) and rows replaced (same key, different values)."""

    added: int
    replaced: int


def candles_hash(df: pd.DataFrame) -> str:
    """sha256 of a candle frame's canonical form: rows sorted by key, stored columns only.

    Independent of row order, index and the derived `taker_buy_ratio`; NaN and -0.0 are
    canonicalised, so a frame read from files and the same rows loaded from the store agree.
    """
    f = normalize_candles(df).sort_values(KEY_COLUMNS, kind="mergesort", ignore_index=True)
    h = hashlib.sha256(("|".join(STORED_COLUMNS) + f"|rows={len(f)}").encode())
    for c in STORED_COLUMNS:
        if c in ("symbol", "interval"):
            h.update("\x1f".join(f[c].tolist()).encode() + b"\x1e")
        elif c == "open_time":
            h.update(f[c].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view("<i8").tobytes())
        elif c == "number_of_trades":
            h.update(f[c].to_numpy().astype("<i8").tobytes())
        else:
            x = f[c].to_numpy(dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0
            x[np.isnan(x)] = np.nan  # one NaN bit pattern
            h.update(x.astype("<f8").tobytes())
    return h.hexdigest()


def _to_naive_utc(ts: pd.Timestamp | str | None) -> pd.Timestamp | None:
    if ts is None:
        return None
    t = pd.Timestamp(ts)
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).tz_localize(None)


def _range_where(
    symbol: str, interval: str, start: pd.Timestamp | str | None, end: pd.Timestamp | str | None
) -> tuple[str, list]:
    """WHERE clause and arguments selecting one series, start <= open_time <= end (UTC)."""
    where, args = ["symbol = ?", "interval = ?"], [symbol, interval]
    if start is not None:
        where.append("open_time >= ?")
        args.append(_to_naive_utc(start).to_pydatetime())
    if end is not None:
        where.append("open_time <= ?")
        args.append(_to_naive_utc(end).to_pydatetime())
    return " AND ".join(where), args


def _stage(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as stored: contract-typed, naive-UTC open_time; StoreError if it cannot be keyed."""
    try:
        f = normalize_candles(df)
    except (KeyError, ValueError, TypeError) as e:
        raise StoreError(
            f"frame does not fit the candle contract ({e}); build it with a pipelines.sources reader"
        ) from None
    null_keys = f[KEY_COLUMNS].isna().any(axis=1)
    if null_keys.any():
        i = int(np.flatnonzero(null_keys.to_numpy())[0])
        key = f.loc[i, KEY_COLUMNS].to_dict()
        raise StoreError(f"row {i} has an empty key {key}; drop or fix keyless rows")
    unknown = sorted(set(f["interval"]) - set(INTERVALS))
    if unknown:
        raise StoreError(f"unknown interval(s) {unknown}; use one of {sorted(INTERVALS)}")
    dup = f.duplicated(KEY_COLUMNS)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise StoreError(
            f"frame has {int(dup.sum())} duplicate keys, first {f.loc[i, 'symbol']} {f.loc[i, 'interval']} "
            f"{f.loc[i, 'open_time']}; deduplicate (or validate) before storing"
        )
    out = f[STORED_COLUMNS].copy()
    out["open_time"] = out["open_time"].dt.tz_convert("UTC").dt.tz_localize(None)
    out["symbol"] = out["symbol"].astype(object)  # plain Python strings scan fastest into VARCHAR
    out["interval"] = out["interval"].astype(object)
    return out


def _stage_minutes(symbol: str, interval: str, df: pd.DataFrame) -> pd.DataFrame:
    """A trade-minutes frame as stored (keys added, naive-UTC open_time); StoreError if it cannot be keyed."""
    if not isinstance(symbol, str) or not symbol:
        raise StoreError("trade minutes need a symbol, e.g. 'BRDBTC'")
    if interval not in INTERVALS:
        raise StoreError(f"unknown interval {interval!r}; use one of {sorted(INTERVALS)}")
    missing = [c for c in MINUTE_COLUMNS if c not in df.columns]
    if missing:
        raise StoreError(
            f"trade-minutes frame lacks columns {missing}; build it with pipelines.sources.trades"
        )
    try:
        f = df[MINUTE_COLUMNS].astype(MINUTE_DTYPES).reset_index(drop=True)
    except (ValueError, TypeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise StoreError(f"trade-minutes frame does not fit {MINUTE_DTYPES} ({reason})") from None
    if f["open_time"].isna().any():
        i = int(np.flatnonzero(f["open_time"].isna().to_numpy())[0])
        raise StoreError(f"trade-minutes row {i} has no open_time; drop or fix keyless rows")
    dup = f["open_time"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise StoreError(
            f"trade-minutes frame has {int(dup.sum())} duplicate open_times, first {f.loc[i, 'open_time']}"
        )
    f["open_time"] = f["open_time"].dt.tz_convert("UTC").dt.tz_localize(None)
    f.insert(0, "interval", interval)
    f.insert(0, "symbol", symbol)
    f["symbol"] = f["symbol"].astype(object)
    f["interval"] = f["interval"].astype(object)
    return f[MINUTE_STORED]


def _insert_new(con: duckdb.DuckDBPyConnection) -> int:
    return _insert_rows(con, "candles", STORED_COLUMNS)


def _replace_changed(con: duckdb.DuckDBPyConnection) -> int:
    return _replace_rows(con, "candles", VALUE_COLUMNS)


def _insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> int:
    """Insert the rows of `incoming` whose key `table` does not hold yet; returns how many."""
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT {', '.join('i.' + c for c in columns)} "
        f"FROM incoming i WHERE NOT EXISTS (SELECT 1 FROM {table} c WHERE {_JOIN_ON})"
    )
    return int(con.execute(sql).fetchone()[0])


def _replace_rows(con: duckdb.DuckDBPyConnection, table: str, values: list[str]) -> int:
    """Overwrite the rows of `table` whose values differ from `incoming`'s for the same key."""
    differs = " OR ".join(f"c.{c} IS DISTINCT FROM i.{c}" for c in values)
    sets = ", ".join(f"{c} = i.{c}" for c in values)
    sql = f"UPDATE {table} AS c SET {sets} FROM incoming AS i WHERE {_JOIN_ON} AND ({differs})"
    return int(con.execute(sql).fetchone()[0])


class CandleStore:
    """Candles in a DuckDB file. Each method opens and closes its own connection.

    Args:
        path: the DuckDB file (created with its parent folder on first write).
        lock_timeout_s: how long to wait for another process holding the file.
    """

    def __init__(self, path: str | Path, lock_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"CandleStore({str(self.path)!r})"

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; write connections create the file and table on first use."""
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise StoreError(
                        f"cannot open store {self.path}: {str(e).splitlines()[0]}; "
                        "close the process holding it"
                    ) from None
                time.sleep(0.1)
        try:
            if not read_only:
                con.execute(_CREATE)
            yield con
        finally:
            con.close()

    def _has_table(self, table: str = "candles") -> bool:
        if not self.path.exists():
            return False
        with self.connect(read_only=True) as con:
            sql = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?"
            return bool(con.execute(sql, [table]).fetchone()[0])

    def merge(self, df: pd.DataFrame) -> MergeResult:
        """Insert new keys and replace changed rows, in one transaction (all or nothing)."""
        return self._merge_staged(  # looked up at call time, so a test can inject a failure
            _stage(df), None, lambda con: _insert_new(con), lambda con: _replace_changed(con)
        )

    def _merge_staged(self, staged: pd.DataFrame, create: str | None, insert, replace) -> MergeResult:
        """Register `staged` as `incoming`, then `create` (DDL or None), `insert` and `replace` (each
        con -> rows) in one transaction."""
        if staged.empty:
            return MergeResult(0, 0)
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                if create:
                    con.execute(create)
                con.register("incoming", staged)
                added = insert(con)
                replaced = replace(con)
                con.execute("COMMIT")
            except Exception as e:
                con.execute("ROLLBACK")
                reason = (str(e).splitlines() or [type(e).__name__])[0]
                raise StoreError(
                    f"upsert into {self.path} failed and was rolled back, store unchanged: {reason}"
                ) from e
            finally:
                con.unregister("incoming")
        return MergeResult(added, replaced)

    def upsert(self, df: pd.DataFrame) -> int:
        """`merge(df)` and return the number of rows added (0 when re-ingesting the same frame)."""
        return self.merge(df).added

    def merge_trade_minutes(self, symbol: str, interval: str, df: pd.DataFrame) -> MergeResult:
        """`merge` for a trade-minutes frame (`pipelines.sources.trades.MINUTE_COLUMNS`) of one series."""
        staged = _stage_minutes(symbol, interval, df)
        return self._merge_staged(
            staged,
            _CREATE_MINUTES,  # the table is created on its first write, inside the transaction
            lambda con: _insert_rows(con, "trade_minutes", MINUTE_STORED),
            lambda con: _replace_rows(con, "trade_minutes", MINUTE_VALUES),
        )

    def upsert_trade_minutes(self, symbol: str, interval: str, df: pd.DataFrame) -> int:
        """Store the per-minute order facts of one series; rows added (0 when re-ingesting the same frame)."""
        return self.merge_trade_minutes(symbol, interval, df).added

    def load_trade_minutes(
        self,
        symbol: str,
        interval: str = "1m",
        start: pd.Timestamp | str | None = None,
        end: pd.Timestamp | str | None = None,
    ) -> pd.DataFrame:
        """Trade minutes (`MINUTE_COLUMNS`) of one series, start <= open_time <= end (UTC), sorted by time."""
        if not self._has_table("trade_minutes"):
            return empty_minutes()
        where, args = _range_where(symbol, interval, start, end)
        sql = f"SELECT {', '.join(MINUTE_COLUMNS)} FROM trade_minutes WHERE {where} ORDER BY open_time"
        with self.connect(read_only=True) as con:
            df = con.execute(sql, args).df()
        if df.empty:
            return empty_minutes()
        df["open_time"] = pd.to_datetime(df["open_time"]).dt.tz_localize("UTC")
        return df.astype(MINUTE_DTYPES)

    def load(
        self,
        symbol: str,
        interval: str,
        start: pd.Timestamp | str | None = None,
        end: pd.Timestamp | str | None = None,
    ) -> pd.DataFrame:
        """Candles of one series with start <= open_time <= end (both inclusive, UTC), sorted by time."""
        if not self._has_table():
            return empty_candles()
        where, args = _range_where(symbol, interval, start, end)
        cols = ", ".join(STORED_COLUMNS)
        sql = f"SELECT {cols} FROM candles WHERE {where} ORDER BY open_time"
        with self.connect(read_only=True) as con:
            df = con.execute(sql, args).df()
        return normalize_candles(df) if len(df) else empty_candles()

    def last_open_time(self, symbol: str, interval: str) -> pd.Timestamp | None:
        """Open time (UTC) of the newest stored candle of the series, or None when it has none."""
        if not self._has_table():
            return None
        with self.connect(read_only=True) as con:
            (t,) = con.execute(
                "SELECT max(open_time) FROM candles WHERE symbol = ? AND interval = ?", [symbol, interval]
            ).fetchone()
        return None if t is None else pd.Timestamp(t).tz_localize("UTC")

    def count(self, symbol: str, interval: str) -> int:
        """Number of stored candles of the series."""
        if not self._has_table():
            return 0
        with self.connect(read_only=True) as con:
            sql = "SELECT count(*) FROM candles WHERE symbol = ? AND interval = ?"
            return int(con.execute(sql, [symbol, interval]).fetchone()[0])

    def symbols(self) -> list[tuple[str, str]]:
        """Stored (symbol, interval) series, sorted."""
        if not self._has_table():
            return []
        with self.connect(read_only=True) as con:
            sql = "SELECT DISTINCT symbol, interval FROM candles ORDER BY symbol, interval"
            rows = con.execute(sql).fetchall()
        return [(str(s), str(i)) for s, i in rows]

    def status(self) -> pd.DataFrame:
        """Per series: first, last, candles, expected, gaps (missing runs), missing, longest_gap.

        Computed in SQL with LAG over open_time, so it stays fast on millions of rows. `expected`
        counts the grid slots between first and last; `longest_gap` is the longest missing stretch
        (missing candles x interval) as a Timedelta, 0 when the series is contiguous.
        """
        cols = ["symbol", "interval", "first", "last", "candles"]
        cols += ["expected", "gaps", "missing", "longest_gap"]
        if not self._has_table():
            return pd.DataFrame({c: [] for c in cols})
        steps = ", ".join(f"('{k}', {int(v / pd.Timedelta(milliseconds=1))})" for k, v in INTERVALS.items())
        sql = f"""
        WITH iv(interval, step_ms) AS (VALUES {steps}),
        t AS (
            SELECT c.symbol, c.interval, c.open_time, iv.step_ms,
                   epoch_ms(c.open_time) - epoch_ms(LAG(c.open_time) OVER (
                       PARTITION BY c.symbol, c.interval ORDER BY c.open_time)) AS dt_ms
            FROM candles c JOIN iv USING (interval))
        SELECT symbol, interval, min(open_time) AS first, max(open_time) AS last, count(*) AS candles,
               (epoch_ms(max(open_time)) - epoch_ms(min(open_time))) // any_value(step_ms) + 1 AS expected,
               count(*) FILTER (WHERE dt_ms > step_ms) AS gaps,
               coalesce(sum(dt_ms // step_ms - 1) FILTER (WHERE dt_ms > step_ms), 0) AS missing,
               coalesce(max(dt_ms - step_ms) FILTER (WHERE dt_ms > step_ms), 0) AS longest_gap_ms
        FROM t GROUP BY symbol, interval ORDER BY symbol, interval"""
        with self.connect(read_only=True) as con:
            df = con.execute(sql).df()
        df["first"] = pd.to_datetime(df["first"], utc=True)
        df["last"] = pd.to_datetime(df["last"], utc=True)
        for c in ("candles", "expected", "gaps", "missing"):
            df[c] = df[c].astype("int64")
        df["longest_gap"] = pd.to_timedelta(df.pop("longest_gap_ms").astype("int64"), unit="ms")
        return df[cols]

    def data_hash(
        self,
        symbol: str,
        interval: str,
        start: pd.Timestamp | str | None = None,
        end: pd.Timestamp | str | None = None,
    ) -> str:
        """`candles_hash` of `load(symbol, interval, start, end)`: identifies a training window's data."""
        return candles_hash(self.load(symbol, interval, start, end))


def open_store(location: str | Path):
    """The candle store at `location`: a `postgresql://` URL → `pipelines.store_postgres.PostgresCandleStore`
    (many writers), anything else → a DuckDB file (`CandleStore`, the embedded default). Both have the same
    methods and semantics; `Settings.store_location` gives the configured one (`KAIROS_STORE_URL`)."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        from pipelines.store_postgres import PostgresCandleStore

        return PostgresCandleStore(text)
    if "://" in text:
        from pipelines.store_postgres import redact

        raise StoreError(
            f"unknown store URL {redact(text)!r}; use postgresql://user@host:port/database or a DuckDB file path"
        )
    return CandleStore(text)
