"""The prediction log: append-only JSON Lines, written off the request path by one background thread.

Layout: `<directory>/<model name>/<YYYY-MM-DD>.jsonl` (UTC date of the record's `time`), one JSON object
per line. The request path only does `PredictionLog.append(record)` (a `queue.put_nowait`, ~1 µs);
the writer thread drains the queue, writes lines and calls `flush()` + `os.fsync()` after every
`flush_every` records or `flush_interval_ms` after the first unflushed record, whichever comes first.

Durability: a record is durable once its batch is fsynced. After `kill -9` of the serving process at
most the records not yet fsynced are lost: at most `flush_every` (default 256) records, or the records
received in the last `flush_interval_ms` (default 50 ms) if fewer; a torn last line is skipped by the
reader. When the queue is full (`queue_size`) records are dropped and counted (`dropped`), never
blocking a request.

Record schema (version 1; the A/B review reads it with `read_prediction_log`):

| field        | type            | meaning                                                             |
|--------------|-----------------|---------------------------------------------------------------------|
| `v`          | int             | schema version (1)                                                  |
| `request_id` | str             | id of the request (shared by both arms of one shadow request)      |
| `time`       | str             | ISO-8601 UTC time the prediction was made (microseconds)            |
| `symbol`     | str             | e.g. "FILUSDT"                                                      |
| `interval`   | str             | e.g. "1m"                                                           |
| `open_time`  | int             | epoch ms of the candle the prediction was made at (its last input) |
| `arm`        | str             | "champion" or "challenger"                                          |
| `served`     | bool            | true if this answer was returned to the client (false: shadow)      |
| `mode`       | str             | routing mode: "split", "shadow" or "champion_only"                  |
| `routing_key`| str             | the key hashed for the split (client id header or symbol)           |
| `model`      | str             | registered model name, e.g. "returns-FILUSDT-1m"                    |
| `version`    | str             | registered model version (or "local" for a bundle directory)       |
| `horizons`   | list[int]       | candles ahead, e.g. [1, 2, 3, 4, 5]                                 |
| `predictions`| list[float]     | predicted log return ln(close[t+h]/close[t]) per horizon           |
| `confidence` | list[float]/null| per-horizon confidence if the model outputs one                     |
| `latency_us` | float           | features + model time of this arm, microseconds                    |
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is for the reader only; the serving process never imports it for the log
    import pandas as pd

SCHEMA_VERSION = 1
FIELDS = [
    "v", "request_id", "time", "symbol", "interval", "open_time", "arm", "served", "mode",
    "routing_key", "model", "version", "horizons", "predictions", "confidence", "latency_us",
]  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class PredictionLog:
    """Batched, fsynced JSONL writer on a daemon thread. `start()` it, `append()` records, `close()` it."""

    def __init__(self, directory: Path, flush_every: int = 256, flush_interval_ms: float = 50.0, queue_size: int = 100_000):
        self.directory = Path(directory)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_ms / 1e3
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._files: dict[Path, Any] = {}
        self.written = 0  # records fsynced so far
        self.dropped = 0  # records refused because the queue was full
        self.errors = 0  # write errors (disk full...): counted and logged, never raised into requests

    def start(self) -> "PredictionLog":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="kairos-predlog", daemon=True)
        self._thread.start()
        return self

    def append(self, record: dict[str, Any]) -> bool:
        """Queue one record (non-blocking); False if the queue was full and the record was dropped."""
        try:
            self._q.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 5.0) -> None:
        """Flush everything queued so far and stop the writer."""
        if self._thread is not None and self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)
        self._thread = None

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def _path(self, rec: dict[str, Any]) -> Path:
        day = str(rec.get("time", ""))[:10] or datetime.now(UTC).date().isoformat()
        return self.directory / str(rec.get("model", "unknown")) / f"{day}.jsonl"

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if len(self._files) > 64:  # days rolled over or many models: close (all fsynced last batch)
            for f in self._files.values():
                f.close()
            self._files.clear()
        touched = set()
        for rec in batch:
            path = self._path(rec)
            fh = self._files.get(path)
            if fh is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fh = self._files[path] = open(path, "a", encoding="utf-8")
            fh.write(json.dumps(rec, separators=(",", ":"), allow_nan=False, default=str) + "\n")
            touched.add(path)
        for path in touched:
            fh = self._files[path]
            fh.flush()
            os.fsync(fh.fileno())
        self.written += len(batch)

    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        deadline = None  # monotonic time by which the first unflushed record must be durable
        stop = False
        while not stop:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._q.get(timeout=timeout)
                if item is None:
                    stop = True
                else:
                    batch.append(item)
                    if deadline is None:
                        deadline = time.monotonic() + self.flush_interval_s
            except queue.Empty:
                pass
            if batch and (stop or len(batch) >= self.flush_every or time.monotonic() >= deadline):
                try:
                    self._write(batch)
                except (OSError, ValueError) as e:
                    self.errors += 1
                    logging.getLogger("kairos.serving").error("prediction log write failed: %s", e)
                batch, deadline = [], None
        for f in self._files.values():
            f.close()
        self._files.clear()


def read_prediction_log(directory: Path, model: str) -> "pd.DataFrame":
    """All records of `model` under `directory`, oldest file first, as a DataFrame with `FIELDS`.

    `time` becomes datetime64[ns, UTC]; `open_time` stays int epoch ms; a torn last line (kill -9
    mid-write) is skipped. Returns an empty frame with `FIELDS` when there is no log.
    """
    import pandas as pd

    rows = []
    for path in sorted((Path(directory) / model).glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # torn tail of a killed writer
    df = pd.DataFrame(rows, columns=FIELDS) if rows else pd.DataFrame({c: [] for c in FIELDS})
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601")
    return df
