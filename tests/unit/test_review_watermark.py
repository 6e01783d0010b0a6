"""The review reads the prediction log incrementally (pipelines.review.watermark) and old logs are pruned.

The log is written by serving's real writer (`serving.predlog.PredictionLog`); every incremental read is
compared with the full reader the review used before (`read_prediction_log`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from pipelines.contracts.predlog import read_prediction_log
from pipelines.review.watermark import CACHE_DIR, prune_prediction_logs, read_log_incremental
from serving.predlog import PredictionLog

MODEL = "returns-SYNTHUSDT-1m"


def _record(i: int, day: str, **extra) -> dict:
    return {
        "v": 1,
        "request_id": f"r{i}",
        "time": f"{day}T12:00:00.{i:06d}+00:00",
        "symbol": "SYNTHUSDT",
        "interval": "1m",
        "open_time": 1704067200000 + 60_000 * i,
        "arm": "champion" if i % 2 else "challenger",
        "served": bool(i % 2),
        "mode": "split",
        "routing_key": "SYNTHUSDT",
        "model": MODEL,
        "version": str(1 + i % 2),
        "horizons": [1, 2, 3],
        "predictions": [1e-4 * i, -2e-4, 3e-4],
        "confidence": None if i % 3 else [0.5, 0.6, 0.7],
        "latency_us": 40.0 + i,
        **extra,
    }


def _write(directory, records) -> None:
    log = PredictionLog(directory, flush_every=256, flush_interval_ms=1000).start()
    for r in records:
        log.append(r)
    log.close()


def _same_as_full_read(directory, read) -> None:
    pd.testing.assert_frame_equal(read.log, read_prediction_log(directory, MODEL))


def test_second_review_parses_only_new_records(tmp_path):
    _write(
        tmp_path,
        [_record(i, "2024-03-01") for i in range(500)] + [_record(i, "2024-03-02") for i in range(500, 800)],
    )
    first = read_log_incremental(tmp_path, MODEL)
    assert (first.records_parsed, first.records_cached, len(first.log)) == (800, 0, 800)
    _same_as_full_read(tmp_path, first)

    alert = {"extras": {"anomaly_score": 0.9}, "alert": {"level": 4, "model": MODEL, "version": "2"}}
    _write(
        tmp_path, [_record(i, "2024-03-02") for i in range(800, 849)] + [_record(849, "2024-03-02", **alert)]
    )
    second = read_log_incremental(tmp_path, MODEL)
    assert (second.records_parsed, second.records_cached, len(second.log)) == (
        50,
        800,
        850,
    )  # only the new ones
    _same_as_full_read(tmp_path, second)
    assert second.log["alert"].iloc[-1] == alert["alert"] and pd.isna(second.log["extras"].iloc[0])

    third = read_log_incremental(tmp_path, MODEL)
    assert (third.records_parsed, third.bytes_parsed, len(third.log)) == (0, 0, 850)


def test_torn_tail_replaced_files_and_a_lost_cache_give_the_full_answer(tmp_path):
    _write(tmp_path, [_record(i, "2024-03-01") for i in range(100)])
    assert read_log_incremental(tmp_path, MODEL).records_parsed == 100
    day = tmp_path / MODEL / "2024-03-01.jsonl"
    with open(day, "a") as fh:  # a writer killed mid-line: the torn tail waits after the watermark
        fh.write('{"v": 1, "request_id": "torn"')
    torn = read_log_incremental(tmp_path, MODEL)
    assert (torn.records_parsed, len(torn.log)) == (0, 100)
    _same_as_full_read(tmp_path, torn)

    _write(tmp_path, [_record(i, "2024-03-01") for i in range(100, 110)])  # the restarted writer appends
    after = read_log_incremental(tmp_path, MODEL)
    _same_as_full_read(tmp_path, after)  # the torn line swallowed one record, in both readers
    assert len(after.log) == 109

    day.write_text(day.read_text().splitlines()[0] + "\n")  # the file replaced by a shorter one
    rebuilt = read_log_incremental(tmp_path, MODEL)
    assert (rebuilt.records_parsed, len(rebuilt.log)) == (1, 1)
    _same_as_full_read(tmp_path, rebuilt)

    for p in (tmp_path / MODEL / CACHE_DIR).iterdir():  # the cache is only a cache
        p.unlink()
    again = read_log_incremental(tmp_path, MODEL)
    assert again.records_parsed == 1
    _same_as_full_read(tmp_path, again)
    assert read_log_incremental(tmp_path, "nothing-logged-1m").log.empty


def test_old_day_files_and_their_copies_are_pruned(tmp_path):
    days = ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]
    _write(tmp_path, [_record(i, d) for i, d in enumerate(days)])
    read_log_incremental(tmp_path, MODEL)  # builds the copies
    now = datetime(2024, 3, 1, 6, tzinfo=UTC)
    listed = prune_prediction_logs(tmp_path, 2, now=now, dry_run=True)
    assert [p.name for p in listed] == ["2024-02-27.jsonl"] and listed[0].exists()
    gone = prune_prediction_logs(tmp_path, 1, now=now)
    assert [p.name for p in gone] == ["2024-02-27.jsonl", "2024-02-28.jsonl"]
    assert sorted(p.name for p in (tmp_path / MODEL).glob("*.jsonl")) == [
        "2024-02-29.jsonl",
        "2024-03-01.jsonl",
    ]
    assert sorted(p.stem for p in (tmp_path / MODEL / CACHE_DIR).glob("*.parquet")) == [
        "2024-02-29",
        "2024-03-01",
    ]
    read = read_log_incremental(tmp_path, MODEL)
    assert (read.records_parsed, len(read.log)) == (0, 2)
