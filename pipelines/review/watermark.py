"""Reading the prediction log incrementally (a byte watermark per day file), and pruning old log files.

The A/B review parsed every JSON line of a model's log on every run (`read_prediction_log`: 27 µs a record
on CI's 2 busy cores; a model serving one shadow request a second logs 172,800 records a day), so its cost
grew with the log's age. `read_log_incremental` keeps, next to each day file `<model>/<day>.jsonl`, a
columnar copy of the records already parsed, `<model>/.cache/<day>.parquet`, whose metadata holds the byte
offset the copy reaches (the watermark). A review parses only the bytes appended since, rewrites that day's
copy (atomic rename: records and watermark change together) and loads older days from their copies.

Why the review still loads every record: its statistics (always-valid sequential test, HAC variance,
pairing of shadow requests) and the naive-baseline gate need every realised outcome row, and an outcome
realises up to max-horizon candles after its record; running sums per arm would mean re-deriving those
tests as streaming updates. The columnar copy is the compact summary instead: the same frame as
`read_prediction_log` (tests compare them), 4.3 µs a record to load instead of 27 to parse
(benchmarks/bench_review_log.py: 6.3x on 200,000 records), and pending outcomes are simply re-joined.

The cache is only a cache: deleting `.cache/` costs one full parse, never a wrong answer. A copy whose
source changed under it (shorter than the watermark, or different leading bytes) is rebuilt. Incomplete
last lines (a writer killed mid-line) stay after the watermark until complete, as in the full reader.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts.predlog import FIELDS, OPTIONAL_FIELDS

CACHE_DIR = ".cache"
_HEAD = 4096  # leading bytes fingerprinted: a replaced file is noticed even when it is not shorter
_SCHEMA = pa.schema(
    [
        ("v", pa.int64()),
        ("request_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("symbol", pa.string()),
        ("interval", pa.string()),
        ("open_time", pa.int64()),
        ("arm", pa.string()),
        ("served", pa.bool_()),
        ("mode", pa.string()),
        ("routing_key", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("horizons", pa.list_(pa.int64())),
        ("predictions", pa.list_(pa.float64())),
        ("confidence", pa.list_(pa.float64())),
        ("latency_us", pa.float64()),
        *((f, pa.string()) for f in OPTIONAL_FIELDS),  # nested and optional: kept as JSON text
    ]
)
_LISTS = ("horizons", "predictions", "confidence")
_NAN = float("nan")


@dataclass(frozen=True)
class LogRead:
    """What `read_log_incremental` read: the model's whole log, and how much of it was parsed now."""

    log: pd.DataFrame  # as `pipelines.contracts.predlog.read_prediction_log` returns it
    records_parsed: int  # JSON records parsed by this call (the new ones)
    bytes_parsed: int
    records_cached: int  # records loaded from the columnar copies


def _fingerprint(path: Path, upto: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read(min(upto, _HEAD))).hexdigest()


def _parse(path: Path, offset: int) -> tuple[list[dict], int]:
    """Records of the complete lines after `offset`, and the offset after the last complete line."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the torn tail of a killed writer, completed by the next record: skipped as in the full reader
    return rows, offset + end


def _cell(rec: dict, field: str):
    value = rec.get(field)
    if field in OPTIONAL_FIELDS and value is not None:
        return json.dumps(value)
    if field == "version" and value is not None:
        return str(value)
    return value


def _to_table(rows: list[dict]) -> pa.Table:
    cols = {f: [_cell(r, f) for r in rows] for f in _SCHEMA.names}
    cols["time"] = pa.array(pd.to_datetime(pd.Series(cols["time"]), utc=True, format="ISO8601")).cast(
        _SCHEMA.field("time").type
    )  # parsed once, when first read
    return pa.Table.from_pydict(cols, schema=_SCHEMA)


def _lists(col: pa.ChunkedArray) -> list:
    """A list column as Python lists (what json.loads gives). Lists of one length (a model's horizons)
    come out of one numpy `reshape(...).tolist()` in C, much faster than pyarrow's `to_pylist`."""
    arr = col.combine_chunks()
    flat_arr = arr.flatten()
    if flat_arr.null_count:
        return arr.to_pylist()
    flat = flat_arr.to_numpy(zero_copy_only=False)
    offsets = arr.offsets.to_numpy()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    sizes = np.diff(offsets)
    if len(arr) and valid.all() and (sizes == sizes[0]).all():
        return flat.reshape(len(arr), int(sizes[0])).tolist()
    flat_list, bounds = flat.tolist(), offsets.tolist()
    return [flat_list[bounds[i] : bounds[i + 1]] if ok else None for i, ok in enumerate(valid.tolist())]


def _read_day(path: Path, cache: Path) -> tuple[pa.Table, int, int, int]:
    """The day file's records (from its copy + new bytes); refreshes the copy. -> (table, parsed, bytes, cached)."""
    size = path.stat().st_size
    table, offset = None, 0
    if cache.exists():
        try:
            meta = pq.read_schema(cache).metadata or {}
            offset = int(meta[b"kairos.offset"])
            if offset > size or meta[b"kairos.head"].decode() != _fingerprint(path, offset):
                offset = 0  # the file was replaced: rebuild its copy
            else:
                table = pq.read_table(cache, schema=_SCHEMA)
        except (OSError, KeyError, ValueError, pa.ArrowException):
            table, offset = None, 0  # an unreadable copy is rebuilt
    cached = 0 if table is None else table.num_rows
    if offset == size and table is not None:
        return table, 0, 0, cached
    rows, new_offset = _parse(path, offset)
    if rows:
        fresh = _to_table(rows)
        table = fresh if table is None else pa.concat_tables([table, fresh])
    elif table is None:
        table = _SCHEMA.empty_table()
    if new_offset != offset or not cache.exists():
        meta = {
            b"kairos.offset": str(new_offset).encode(),
            b"kairos.head": _fingerprint(path, new_offset).encode(),
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, cache)  # records and watermark change together
    return table, len(rows), new_offset - offset, cached


def read_log_incremental(directory: Path, model: str) -> LogRead:
    """All records of `model` under `directory`, parsing only what earlier calls have not parsed.

    Returns the frame `read_prediction_log(directory, model)` returns (FIELDS, + the OPTIONAL_FIELDS any
    record has; `time` as UTC datetimes), plus the number of JSON records parsed by this call.
    """
    folder = Path(directory) / model
    tables, parsed, nbytes, cached = [], 0, 0, 0
    for path in sorted(folder.glob("*.jsonl")):
        t, p, b, c = _read_day(path, folder / CACHE_DIR / f"{path.stem}.parquet")
        tables.append(t)
        parsed, nbytes, cached = parsed + p, nbytes + b, cached + c
    table = pa.concat_tables(tables) if tables else _SCHEMA.empty_table()
    if table.num_rows == 0:
        df = pd.DataFrame({c: [] for c in FIELDS})
        df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601")
        return LogRead(df, parsed, nbytes, cached)
    extra = [f for f in OPTIONAL_FIELDS if table.column(f).null_count < table.num_rows]
    cols = {}
    for f in FIELDS + extra:
        col = table.column(f)
        if f in _LISTS:
            cols[f] = _lists(col)  # Python lists, as json.loads gives them
        elif f in OPTIONAL_FIELDS:
            cols[f] = [
                _NAN if v is None else json.loads(v) for v in col.to_pylist()
            ]  # absent: NaN, as pandas
        else:
            cols[f] = col.to_pandas()
    df = pd.DataFrame(cols)
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601")
    return LogRead(df, parsed, nbytes, cached)


def prune_prediction_logs(
    directory: Path, max_age_days: int, *, now: datetime | None = None, dry_run: bool = False
) -> list[Path]:
    """Delete day files `<model>/<YYYY-MM-DD>.jsonl` (and their columnar copies) whose day ended more than
    `max_age_days` days before `now` (UTC). Returns the deleted (or, with `dry_run`, deletable) log files."""
    if max_age_days < 1:
        raise ValueError(f"max_age_days must be >= 1 (today's file is being written), got {max_age_days}")
    now = now or datetime.now(UTC)
    cutoff = (now - timedelta(days=max_age_days)).date().isoformat()
    gone = []
    for path in sorted(Path(directory).glob("*/*.jsonl")):
        if len(path.stem) == 10 and path.stem < cutoff:  # ISO dates sort as strings
            gone.append(path)
            if not dry_run:
                path.unlink()
                (path.parent / CACHE_DIR / f"{path.stem}.parquet").unlink(missing_ok=True)
    return gone
