"""The prediction log: append-only JSON Lines, written off the request path by one background thread.

Layout: `<directory>/<model name>/<YYYY-MM-DD>.jsonl` (UTC date of the record's `time`), one JSON object
per line. The request path only does `PredictionLog.append(record)`: a `deque.append` (atomic under the
GIL, < 1 µs); `record` may be a dict or a zero-argument callable that builds it, called on the writer
thread (the Predictor passes one, so building and timestamp formatting stay off the request path). The
writer is woken only by the first record of a batch and when `flush_every` records are pending, not per
record (a per-record `queue.Queue.put` woke it every time and the two threads fought over the GIL: ~100 µs
per prediction on 2 busy cores). It writes lines and calls `flush()` + `os.fsync()` after every
`flush_every` records or `flush_interval_ms` after the first unflushed record, whichever comes first.
Encoding a record takes ~15 µs of Python (dict + `json.dumps`) under the GIL; a 256-record batch in one
go made requests wait for the GIL (shadow-mode `Predictor.update` p99 2.3–3.3 ms against 0.46 ms with no
log). So the writer sleeps `YIELD_S` after every `YIELD_EVERY` records it encodes (p99 0.78–0.83 ms,
`benchmarks/bench_serving.py`); a full batch then takes ~12 ms to write, and its writer tops out near
20,000 records/s.

Durability: a record is durable once its batch is fsynced. After `kill -9` of the serving process at
most the records not yet fsynced are lost: at most `flush_every` (default 256) records, or the records
received in the last `flush_interval_ms` (default 50 ms) plus the batch's write time (~12 ms for a full
batch) if fewer; a torn last line is skipped by the reader. When the queue is full (`queue_size`)
records are dropped and counted (`dropped`), never blocking a request.

Record schema and layout: `pipelines.contracts.predlog` (the A/B review reads the log with its
`read_prediction_log`; this module only writes). Records of bundles with more outputs carry optional
fields beyond its 16 `FIELDS` (schema version unchanged: a record without them is exactly as before,
and readers that select `FIELDS` read both):

| field          | type                          | when                                                      |
|----------------|-------------------------------|-----------------------------------------------------------|
| `extras`       | dict[str, float or null]      | width-1 outputs beyond the task's (whale: anomaly_score, threat_level) |
| `top_features` | list[{"name", "deviation"}]   | a `feature_deviation` output (the 3 largest, largest first) |
| `alert`        | {"level", "model", "version"} | the champion raised an alert at this candle (its model, version) |
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.contracts.predlog import FIELDS, SCHEMA_VERSION, iso_from_epoch, now_iso
from pipelines.contracts.predlog import OPTIONAL_FIELDS as _OPTIONAL

__all__ = [
    "FIELDS",
    "OPTIONAL_FIELDS",
    "SCHEMA_VERSION",
    "PredictionLog",
    "Record",
    "iso_from_epoch",
    "now_iso",
]

OPTIONAL_FIELDS = tuple(_OPTIONAL)  # written only when present (table above)

YIELD_EVERY, YIELD_S = 8, 200e-6  # the writer sleeps 200 µs after every 8 records it encodes

Record = dict[str, Any] | Callable[[], dict[str, Any]]  # a record, or a builder run on the writer


def _fsync_dir(path: Path) -> None:
    """fsync a directory (its entries: files created in it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PredictionLog:
    """Batched, fsynced JSONL writer on a daemon thread. `start()` it, `append()` records, `close()` it."""

    def __init__(
        self,
        directory: Path,
        flush_every: int = 256,
        flush_interval_ms: float = 50.0,
        queue_size: int = 100_000,
    ):
        self.directory = Path(directory)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_ms / 1e3
        self.queue_size = queue_size
        self._q: deque[Record] = deque()  # appended by requests, popped by the writer (both GIL-atomic)
        self._wake = threading.Event()  # set on a batch's first record, at flush_every pending, at close
        self._stop = False
        self._thread: threading.Thread | None = None
        self._files: dict[Path, Any] = {}
        self.written = 0  # records fsynced so far
        self.dropped = 0  # records refused because the queue was full
        self.errors = 0  # write errors (disk full...): counted and logged, never raised into requests

    def start(self) -> PredictionLog:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kairos-predlog", daemon=True)
        self._thread.start()
        return self

    def append(self, record: Record) -> bool:
        """Queue one record (a dict, or a callable returning it; non-blocking); False if the queue was
        full and the record was dropped."""
        q = self._q
        n = len(q)
        if n >= self.queue_size:
            self.dropped += 1
            return False
        q.append(record)
        if n == 0 or n + 1 == self.flush_every:  # start the batch deadline / the batch is full
            self._wake.set()
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Write and fsync every record queued so far, then stop the writer (graceful shutdown).

        The writer drains the queue without yielding (~15 µs a record: 100,000 queued records take
        ~2 s); records appended while it exits are written here, on the caller's thread. Then the log's
        directories are fsynced, so that files created since start-up survive a power loss too. Only a
        writer still busy after `timeout` seconds (a hung disk) leaves records unwritten: logged."""
        t = self._thread
        if t is not None and t.is_alive():
            self._stop = True
            self._wake.set()
            t.join(timeout)
            if t.is_alive():
                logging.getLogger("kairos.serving").error(
                    "prediction log: the writer is still busy after %.0f s; %d records not written",
                    timeout,
                    len(self._q),
                )
                return
        self._thread = None
        if self._q:  # appended after the writer's last look at the queue
            try:
                self._write(self._take(len(self._q)))
            except (OSError, ValueError, TypeError) as e:
                self.errors += 1
                logging.getLogger("kairos.serving").error("prediction log write failed: %s", e)
            for f in self._files.values():
                f.close()
            self._files.clear()
        if self.directory.is_dir():
            for d in [self.directory, *(p for p in self.directory.iterdir() if p.is_dir())]:
                _fsync_dir(d)

    @property
    def pending(self) -> int:
        return len(self._q)

    def _path(self, rec: dict[str, Any]) -> Path:
        day = str(rec.get("time", ""))[:10] or datetime.now(UTC).date().isoformat()
        return self.directory / str(rec.get("model", "unknown")) / f"{day}.jsonl"

    def _write(self, batch: list[Record]) -> None:
        if len(self._files) > 64:  # days rolled over or many models: close (all fsynced last batch)
            for f in self._files.values():
                f.close()
            self._files.clear()
        touched = set()
        for i, item in enumerate(batch):
            if i and i % YIELD_EVERY == 0 and not self._stop:
                time.sleep(YIELD_S)  # hand the GIL back to requests (see the module docstring)
            rec = item() if callable(item) else item
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

    def _take(self, n: int) -> list[Record]:
        q, out = self._q, []
        while q and len(out) < n:
            out.append(q.popleft())
        return out

    def _run(self) -> None:
        q = self._q
        while True:
            self._wake.wait()
            self._wake.clear()
            if q and not self._stop:
                # the batch's first record is here: it must be durable flush_interval_s from now,
                # unless flush_every records arrive first (append sets the event again)
                deadline = time.monotonic() + self.flush_interval_s
                while len(q) < self.flush_every and not self._stop:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                    self._wake.clear()
            stop = self._stop
            while q:
                batch = self._take(self.flush_every)
                try:
                    self._write(batch)
                except (OSError, ValueError, TypeError) as e:
                    self.errors += 1
                    logging.getLogger("kairos.serving").error("prediction log write failed: %s", e)
                if not stop and len(q) < self.flush_every:
                    break  # the rest starts a new batch with its own deadline
            if q:
                self._wake.set()  # records arrived while writing: go round again
            if stop and not q:
                break
        for f in self._files.values():
            f.close()
        self._files.clear()
