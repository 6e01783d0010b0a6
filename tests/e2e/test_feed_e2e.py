"""The feeder test: `kairos feed`'s loop against the fake exchange's kline stream and a real serving process.

Two symbols (real FILUSDT and NEARUSDT minutes of 2023-08-01), 600 candles of history, then 30 minutes
of simulated time: the fake exchange's clock moves only when the test moves it, so nothing waits for
real minutes. On the way:
- serving is down when the feeder starts (nothing listens on its port) and comes up at minute 5;
- the stream drops at 10:05 and refuses reconnections until 14:00 (candles 10–13 are never streamed);
- the exchange withholds NEARUSDT 12:00–15:59 (REST and stream) until 19:00, so after the reconnect
  its REST answers have a hole that the feeder waits for, then fills.
At the end the store and serving both hold every candle exactly once: the store has 630 contiguous
candles per symbol equal to the exchange's final rows (no still-open candle slipped in), and serving,
whose streams refuse any gap or duplicate (409), logged one prediction per candle from its warm-up on.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pandas as pd
import pytest

from tests.conftest import SHARED_DATA
from tests.fixtures.fake_exchange import FakeBinance, load_kline_rows

pytestmark = pytest.mark.slow

MIN = 60_000
SYMBOLS = ("FILUSDT", "NEARUSDT")
KEY = "feeder-" + "Qw3rTy7u" * 5


def _rows(symbol: str, n: int) -> list[list]:
    return load_kline_rows(SHARED_DATA / f"{symbol}-1m-2023-08.zip", n)


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    """Poll `cond` until true; AssertionError naming `what` after `timeout` s (a hang, not a timing)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _expected(symbol: str, n: int) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines

    return read_klines(SHARED_DATA / f"{symbol}-1m-2023-08.zip", symbol).iloc[:n].reset_index(drop=True)


def test_feed_two_symbols_30_simulated_minutes_with_a_disconnect_and_a_gap(
    tmp_path, kairos_home, monkeypatch, caplog
):
    from flows.cli.feed import build_feeder
    from pipelines.live import FeedConfig
    from pipelines.store import CandleStore
    from tests.fixtures import serving_process
    from tests.fixtures.bundles import linear_bundle
    from tests.fixtures.servers import free_port

    history, live = 600, 30
    fil, near = _rows("FILUSDT", history + live + 5), _rows("NEARUSDT", history + live + 5)
    t0 = fil[history][0]  # 2023-08-01 10:00 UTC: simulated minute 0
    assert near[history][0] == t0
    at = lambda minute: t0 + minute * MIN + 5_000  # noqa: E731  (5 s into the minute)
    bundles = [linear_bundle(tmp_path / f"bundle-{s}", bias=1e-3, symbol=s) for s in SYMBOLS]
    port = free_port()  # serving will listen here; nothing does yet
    caplog.set_level(logging.INFO, logger="kairos.feed")

    with FakeBinance(fil).add_market("NEARUSDT", "NEAR", "USDT", near) as fake:
        fake.set_time(at(0))
        cfg = FeedConfig(
            exchange="binance",
            symbols=SYMBOLS,
            exchange_config=fake.ccxt_config(ws=True),
            mode="ws",
            since=fil[0][0],
            gap_wait=10,
            push_retry_max_s=0.2,
            reconnect_s=0.05,
            reconnect_max_s=0.2,
        )
        feeder = build_feeder(cfg, f"http://127.0.0.1:{port}", KEY, clock=lambda: fake.now_ms)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                feeder.run()
            except BaseException as e:  # noqa: BLE001 - surfaced by the test below
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        server = None
        try:
            wait_for(lambda: feeder.pusher is not None, "the feeder to start")
            st = feeder.stats.symbols
            stored_to = lambda m, syms=SYMBOLS: all(st[s].cursor == t0 + m * MIN for s in syms)  # noqa: E731
            fake.subscribed(2)  # both symbols' streams

            # minutes 1-5 with serving down: stored, nothing pushed
            for m in range(1, 6):
                fake.set_time(at(m))
            wait_for(lambda: stored_to(5) and feeder.pusher.outages == 1, "minutes 0-4 stored, serving down")
            assert all(st[s].sent == 0 for s in SYMBOLS)

            # serving comes up: each stream re-synced from the store (warm-up history up to minute 4)
            monkeypatch.setattr(serving_process, "free_port", lambda: port)
            server = serving_process.ServingProcess(
                tmp_path / "serving",
                [a for b in bundles for a in ("--bundle", str(b))],
                "routing:\n  mode: champion_only\napi:\n  auth:\n    open_paths: [/healthz, /readyz, /metrics]\n",
                env={"KAIROS_API_KEYS": f"feeder:{KEY}:stream"},
            ).wait()
            wait_for(lambda: all(st[s].pushed == t0 + 4 * MIN for s in SYMBOLS), "the backlog pushed")

            for m in range(6, 11):
                fake.set_time(at(m))
            wait_for(lambda: stored_to(10), "minutes 5-9 stored")

            # the gap: NEARUSDT 12:00-15:59 unpublished until 19:00; the disconnect: 10:05 to 14:00
            fake.withhold("NEARUSDT", t0 + 12 * MIN, t0 + 15 * MIN, t0 + 19 * MIN)
            fake.drop(until_ms=t0 + 14 * MIN)
            fake.set_time(at(13))  # nobody subscribed: minutes 10-12 are never streamed
            wait_for(lambda: stored_to(13, ("FILUSDT",)) and stored_to(12, ("NEARUSDT",)), "REST backfill")
            subscribes = fake.ws_subscribes
            fake.set_time(at(14))  # the stream accepts connections again
            fake.subscribed(subscribes + 2)
            wait_for(lambda: stored_to(14, ("FILUSDT",)), "minute 13 backfilled after the reconnect")
            for m in range(15, 19):
                fake.set_time(at(m))
            wait_for(
                lambda: stored_to(18, ("FILUSDT",)) and st["NEARUSDT"].waiting_hole == t0 + 12 * MIN,
                "FILUSDT to minute 17, NEARUSDT waiting for its hole",
            )
            assert st["NEARUSDT"].cursor == t0 + 12 * MIN  # nothing after the hole stored yet
            fake.set_time(at(19))  # the exchange publishes NEARUSDT 12-15
            wait_for(lambda: stored_to(19), "the hole filled")

            for m in range(20, live + 1):
                fake.set_time(at(m))
            last = t0 + (live - 1) * MIN
            wait_for(
                lambda: stored_to(live) and all(st[s].pushed == last for s in SYMBOLS),
                "all 30 minutes stored and pushed",
            )
            metrics = httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
        finally:
            feeder.stop()
            thread.join(30)
            rc = server.stop() if server is not None else None  # SIGTERM: the prediction log is fsynced
        assert not thread.is_alive() and not errors, errors
        assert rc == 0, server.log_text()[-2000:]

    # the store: every candle once, contiguous, the exchange's final values (all 11 raw fields)
    store = CandleStore(kairos_home / "candles.duckdb")
    status = store.status().set_index("symbol")
    for s in SYMBOLS:
        got = store.load(s, "1m")
        pd.testing.assert_frame_equal(got, _expected(s, history + live), check_exact=True)
        assert (status.loc[s, "candles"], status.loc[s, "gaps"]) == (history + live, 0)

    # serving: one prediction per candle from the end of its warm-up (minute 4) to minute 29, no 409
    records = server.records()
    warm_end = 4
    for s in SYMBOLS:
        times = sorted(int(r["open_time"]) for r in records if r["symbol"] == s and r["served"])
        assert times == [t0 + m * MIN for m in range(warm_end, live)], (s, len(times))
    for s in SYMBOLS:  # serving's own counter agrees, and it refused nothing (a gap or duplicate: 409)
        counted = [
            ln
            for ln in metrics
            if ln.startswith("kairos_predictions_total{") and f'model="returns-{s}-1m"' in ln
        ]
        assert sum(float(ln.split()[-1]) for ln in counted) == live - warm_end, counted
    assert not [ln for ln in metrics if ln.startswith("kairos_request_errors_total")], metrics
    st = feeder.stats.symbols
    warmup = 554  # core27's
    for s in SYMBOLS:  # the re-sync pushed the warm-up window once, then each new candle once
        assert (st[s].sent, st[s].stored, st[s].quarantined) == (
            warmup + live - 1 - warm_end,
            history + live,
            0,
        )
    assert (feeder.pusher.outages, feeder.pusher.resyncs) == (1, 2)  # no 409 re-sync
    assert feeder.stats.reconnects >= 1
    log = caplog.text
    assert f"serving at http://127.0.0.1:{port} is unreachable" in log
    assert "answers again" in log and "stream dropped" in log
    assert "NEARUSDT: the exchange has not published 2023-08-01 10:12..2023-08-01 10:15 (4 candle(s))" in log
    assert "hole filled" in log
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    print(
        f"\nfeed e2e: {len(records)} predictions logged, {feeder.stats.passes} passes, "
        f"{feeder.stats.reconnects} reconnect attempt(s), sent {[st[s].sent for s in SYMBOLS]}"
    )
