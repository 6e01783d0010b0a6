"""Outcome join: realised returns per (record, horizon), pending rows kept, missing candles reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.contracts.predlog import read_prediction_log
from pipelines.review.outcomes import (
    LONG_COLUMNS,
    OutcomeError,
    experiment_arms,
    join_outcomes,
    log_time_range,
)
from serving.predlog import PredictionLog

T0 = pd.Timestamp("2024-01-01", tz="UTC")
MIN = 60_000
T0_MS = int(T0.value // 1_000_000)


def make_candles(n: int = 20, drop: tuple[int, ...] = ()) -> pd.DataFrame:
    close = np.exp(np.cumsum(np.random.default_rng(0).normal(0, 1e-3, n))) * 5.0
    df = pd.DataFrame({"open_time": T0 + pd.to_timedelta(np.arange(n), unit="min"), "close": close})
    return df.drop(index=list(drop)).reset_index(drop=True)


def record(
    i: int,
    arm: str = "champion",
    version: str = "1",
    rid: str | None = None,
    preds=(0.1, -0.2, 0.3),
    mode: str = "shadow",
    symbol: str = "FILUSDT",
) -> dict:
    return {
        "v": 1,
        "request_id": rid or f"r{i}",
        "time": (T0 + pd.Timedelta(minutes=i, seconds=59.5)).isoformat(),
        "symbol": symbol,
        "interval": "1m",
        "open_time": T0_MS + i * MIN,
        "arm": arm,
        "served": arm == "champion",
        "mode": mode,
        "routing_key": "k",
        "model": "returns-FILUSDT-1m",
        "version": version,
        "horizons": [1, 2, 3],
        "predictions": list(preds),
        "confidence": None,
        "latency_us": 50.0,
    }


def log_frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(records)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    return df


def test_realised_returns_pending_and_missing():
    candles = make_candles(20, drop=(12,))  # a gap at candle 12
    close = make_candles(20)["close"].to_numpy()
    log = log_frame([record(5), record(10), record(18)])
    now = T0 + pd.Timedelta(minutes=30)
    oc = join_outcomes(log, candles, interval="1m", now=now)
    assert list(oc.resolved.columns) == LONG_COLUMNS
    got = {(r.request_id, r.horizon): r.realised for r in oc.resolved.itertuples()}
    # t=5: all three horizons; t=10: h=1 and h=3 (h=2 lands on the gap); t=18: h=1 (candle 19 is the last)
    assert set(got) == {("r5", 1), ("r5", 2), ("r5", 3), ("r10", 1), ("r10", 3), ("r18", 1)}
    for (rid, h), val in got.items():
        t = int(rid[1:])
        assert val == pytest.approx(np.log(close[t + h] / close[t]), abs=1e-15)
    assert [(r.request_id, r.horizon) for r in oc.missing.itertuples()] == [("r10", 2)]
    # candles 20, 21 are not in the store yet: pending (kept for the next review), not missing
    assert sorted((r.request_id, r.horizon) for r in oc.pending.itertuples()) == [("r18", 2), ("r18", 3)]
    assert sum(oc.counts().values()) == 3 * 3  # nothing dropped
    assert oc.pending["realised"].isna().all() and oc.missing["realised"].isna().all()
    # predictions stay attached to their horizon
    assert oc.resolved.set_index(["request_id", "horizon"]).loc[("r5", 2), "prediction"] == -0.2


def test_clock_decides_what_has_elapsed():
    candles = make_candles(20)
    log = log_frame([record(15)])
    # candle 16 closes at 17:00 min; at 16:59 its close is not final even though the store has the row
    early = join_outcomes(log, candles, interval="1m", now=T0 + pd.Timedelta(minutes=16, seconds=59))
    assert early.counts() == {"resolved": 0, "pending": 3, "missing": 0}
    later = join_outcomes(log, candles, interval="1m", now=T0 + pd.Timedelta(minutes=18))
    assert sorted(later.resolved["horizon"]) == [1, 2] and list(later.pending["horizon"]) == [3]
    # the next review resolves what was pending, from the same (append-only) log
    last = join_outcomes(log, candles, interval="1m", now=T0 + pd.Timedelta(hours=1))
    assert last.counts() == {"resolved": 3, "pending": 0, "missing": 0}


def test_store_behind_is_pending_not_missing():
    log = log_frame([record(5)])
    oc = join_outcomes(log, make_candles(0), interval="1m", now=T0 + pd.Timedelta(days=1))
    assert oc.counts() == {"resolved": 0, "pending": 3, "missing": 0}
    # the store says it holds candles up to minute 30 but minute 5 is absent: that is a gap → missing
    oc = join_outcomes(
        log,
        make_candles(20, drop=(5,)),
        interval="1m",
        now=T0 + pd.Timedelta(days=1),
        store_last=T0 + pd.Timedelta(minutes=30),
    )
    assert oc.counts() == {"resolved": 0, "pending": 0, "missing": 3}


def test_paired_and_split_experiments():
    candles = make_candles(20)
    recs = []
    for i in range(3, 12):
        recs += [
            record(i, "champion", "1", f"q{i}", (1e-3,) * 3),
            record(i, "challenger", "2", f"q{i}", (-1e-3,) * 3),
        ]
    recs.append(record(12, "challenger", "3", "other"))  # another version: not part of the experiment
    oc = join_outcomes(log_frame(recs), candles, interval="1m", now=T0 + pd.Timedelta(hours=1))
    exp = experiment_arms(oc.resolved, "1", "2", horizon=2)
    assert exp.paired and len(exp.champion) == len(exp.challenger) == 9
    np.testing.assert_array_equal(exp.champion.time, exp.challenger.time)
    np.testing.assert_array_equal(exp.champion.realised, exp.challenger.realised)
    assert (exp.champion.prediction == 1e-3).all() and (exp.challenger.prediction == -1e-3).all()

    split = [
        record(i, "champion" if i % 2 else "challenger", "1" if i % 2 else "2", mode="split")
        for i in range(3, 12)
    ]
    oc = join_outcomes(log_frame(split), candles, interval="1m", now=T0 + pd.Timedelta(hours=1))
    exp = experiment_arms(oc.resolved, "1", "2", horizon=1)
    assert not exp.paired and (len(exp.champion), len(exp.challenger)) == (5, 4)
    assert np.all(np.diff(exp.champion.time) > 0)


def test_a_universe_log_is_joined_symbol_by_symbol():
    """A model over several symbols logs them all; each record meets its own symbol's candles."""
    fil, near = make_candles(20).assign(symbol="FILUSDT"), make_candles(20).assign(symbol="NEARUSDT")
    near["close"] = near["close"] * 3.0 + np.linspace(0, 1, 20)  # a different path
    log = log_frame([record(1), record(2, symbol="NEARUSDT", rid="n2"), record(3)])
    oc = join_outcomes(log, pd.concat([fil, near]), interval="1m", now=T0 + pd.Timedelta(hours=1))
    got = oc.resolved.set_index(["request_id", "horizon"])["realised"]
    c_f, c_n = fil["close"].to_numpy(), near["close"].to_numpy()
    assert got[("r1", 2)] == pytest.approx(np.log(c_f[3] / c_f[1]), abs=1e-15)
    assert got[("n2", 1)] == pytest.approx(np.log(c_n[3] / c_n[2]), abs=1e-15)
    assert got[("r3", 3)] == pytest.approx(np.log(c_f[6] / c_f[3]), abs=1e-15)
    assert len(oc.resolved) == 9 and oc.counts()["missing"] == 0


def test_whale_outcomes_are_the_event_labels():
    """The whale task realises (t, t+15] from the trade-minute columns, exactly as its training labels."""
    from pipelines.tasks import get_task

    task = get_task("whale", (15,), {"trade_multiple": 2.0})
    n = 60
    frame = make_candles(n).assign(max_order_quote=1.0, order_p999_24h=1.0)
    frame.loc[[20, 41], "max_order_quote"] = 5.0  # events at minutes 20 and 41
    frame.loc[50, "order_p999_24h"] = np.nan  # an undefined minute
    want = task.frame_labels(frame)[:, 0]
    recs = [dict(record(i), horizons=[15], predictions=[0.1], rid=f"w{i}") for i in range(0, 40)]
    for r, i in zip(recs, range(0, 40)):
        r["request_id"] = f"w{i}"
    oc = join_outcomes(log_frame(recs), frame, interval="1m", now=T0 + pd.Timedelta(hours=2), task=task)
    got = pd.concat([oc.resolved, oc.missing]).set_index("request_id")["realised"]
    for i in range(0, 40):
        w = want[i]
        assert (np.isnan(w) and np.isnan(got[f"w{i}"])) or got[f"w{i}"] == w, i
    assert set(oc.missing["request_id"]) == {f"w{i}" for i in range(35, 40)}  # (t, t+15] reads minute 50
    with pytest.raises(OutcomeError, match="lacks \\['max_order_quote', 'order_p999_24h'\\]"):
        join_outcomes(log_frame(recs), make_candles(n), interval="1m", task=task)


def test_bad_logs_are_refused():
    candles = make_candles(20)
    mixed = record(2)
    mixed["interval"] = "5m"
    with pytest.raises(OutcomeError, match="mixes intervals"):
        join_outcomes(log_frame([record(1), mixed]), candles, interval="1m")
    with pytest.raises(OutcomeError, match="lacks columns"):
        join_outcomes(log_frame([record(1)]).drop(columns=["open_time"]), candles, interval="1m")
    bad = record(1)
    bad["predictions"] = [0.1]
    with pytest.raises(OutcomeError, match="horizons and predictions"):
        join_outcomes(log_frame([bad]), candles, interval="1m")


def test_round_trip_through_the_serving_log(tmp_path):
    log = PredictionLog(tmp_path / "log", flush_every=4, flush_interval_ms=5).start()
    for i in range(2, 9):
        log.append(record(i))
    log.close()
    df = read_prediction_log(tmp_path / "log", "returns-FILUSDT-1m")
    start, end = log_time_range(df, "1m")
    assert (start, end) == (T0 + pd.Timedelta(minutes=2), T0 + pd.Timedelta(minutes=11))
    oc = join_outcomes(df, make_candles(20), interval="1m", now=T0 + pd.Timedelta(hours=1))
    assert oc.counts() == {"resolved": 21, "pending": 0, "missing": 0}
    assert oc.resolved["time_ms"].is_monotonic_increasing
