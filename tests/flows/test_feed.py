"""`kairos feed` in REST polling mode on the fake exchange's simulated clock, and the command as a user runs it.

- a bad candle: its batch is quarantined (the log names the folder), the loop goes on, the other symbol
  is stored; a candle the exchange never publishes: stored around once `gap_wait` candles old;
- the command in a subprocess: catches up, reports serving down on one line, stops on Ctrl-C (SIGINT)
  with exit status 0, a summary table and no traceback.
The two-symbol run with a dropped stream and a real serving process is tests/e2e/test_feed_e2e.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from tests.conftest import REPO, SHARED_DATA
from tests.fixtures.fake_exchange import FakeBinance, load_kline_rows

MIN = 60_000


def _rows(symbol: str, n: int) -> list[list]:
    return load_kline_rows(SHARED_DATA / f"{symbol}-1m-2023-08.zip", n)


def _minutes(df: pd.DataFrame, t0: int) -> list[int]:
    t = (df["open_time"] - pd.Timestamp(t0, unit="ms", tz="UTC")) // pd.Timedelta(minutes=1)
    return [int(x) for x in t if x >= 0]


def test_rest_polling_quarantines_a_bad_batch_and_stores_around_a_missing_candle(kairos_home, caplog):
    from flows.cli.feed import build_feeder
    from pipelines.live import FeedConfig
    from pipelines.store import CandleStore

    history, bad_minute, missing_minute, until = 30, 1, 4, 6
    fil, near = _rows("FILUSDT", history + 12), _rows("NEARUSDT", history + 12)
    t0 = fil[history][0]
    fil[history + bad_minute][2] = f"{float(fil[history + bad_minute][3]) / 2:.4f}"  # high below low
    caplog.set_level(logging.INFO, logger="kairos.feed")

    with FakeBinance(fil).add_market("NEARUSDT", "NEAR", "USDT", near) as fake:
        never = t0 + 10**9
        fake.withhold("NEARUSDT", t0 + missing_minute * MIN, t0 + missing_minute * MIN, never)
        fake.set_time(t0 + 5_000)
        cfg = FeedConfig(
            exchange="binance",
            symbols=("FILUSDT", "NEARUSDT"),
            exchange_config=fake.ccxt_config(),
            mode="rest",
            since=fil[0][0],
            until=t0 + until * MIN,
            gap_wait=1,  # (waiting for a hole the exchange then fills: tests/e2e/test_feed_e2e.py)
        )
        # the process oversleeps every poll by a minute (a busy host): passes see several candles
        sleep = lambda s: fake.set_time(fake.now_ms + int(s * 1000) + MIN)  # noqa: E731
        feeder = build_feeder(cfg, clock=lambda: fake.now_ms, sleep=sleep)
        feeder.run()  # returns once every candle before `until` is handled

    store = CandleStore(kairos_home / "candles.duckdb")
    st = feeder.stats.symbols
    # FILUSDT: the batch holding the bad candle is skipped whole, everything after it stored
    fil_minutes = _minutes(store.load("FILUSDT", "1m"), t0)
    skipped = sorted(set(range(until)) - set(fil_minutes))
    assert bad_minute in skipped and skipped == list(range(skipped[0], skipped[-1] + 1)), skipped
    assert fil_minutes[-1] >= until - 1 and st["FILUSDT"].quarantined == 1
    folders = list((kairos_home / "quarantine").iterdir())
    bad = [f for f in folders if "FILUSDT" in f.name and "NEARUSDT" not in f.name]
    assert len(bad) == 1, [f.name for f in folders]
    quarantined = pd.read_parquet(bad[0] / "candles.parquet")
    assert _minutes(quarantined, t0) == skipped
    hhmm = lambda m: pd.Timestamp(t0 + m * MIN, unit="ms").strftime("%Y-%m-%d %H:%M")  # noqa: E731
    assert f"FILUSDT: candles {hhmm(skipped[0])}..{hhmm(skipped[-1])} skipped" in caplog.text
    assert str(bad[0]) in caplog.text  # the log names the quarantine folder
    # NEARUSDT: everything but the candle the exchange never published
    near_minutes = _minutes(store.load("NEARUSDT", "1m"), t0)
    assert sorted(set(range(near_minutes[-1] + 1)) - set(near_minutes)) == [missing_minute]
    assert (st["NEARUSDT"].quarantined, st["NEARUSDT"].gaps_accepted) == (0, 1)
    hole = f"{hhmm(missing_minute)}..{hhmm(missing_minute)}"
    assert (
        f"NEARUSDT: the exchange still lacks {hole} (1 candle(s)) 1 candle(s) later; storing around"
        in caplog.text
    )
    assert "hole filled" not in caplog.text
    assert store.count("NEARUSDT", "1m") == history + near_minutes[-1]  # history + minutes 0.. - 1 hole
    assert not [r for r in caplog.records if r.exc_info]


def test_feed_command_catches_up_reports_serving_down_and_stops_on_ctrl_c(tmp_path):
    from tests.fixtures.servers import free_port

    rows = _rows("FILUSDT", 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(KAIROS_HOME=str(tmp_path / "home"), COLUMNS="200")
    with FakeBinance(rows) as fake:  # no clock: every row is an old, closed candle
        args = ["--exchange", "binance", "--symbols", "FILUSDT", "--mode", "rest", "--since", "2023-08-01"]
        args += ["--exchange-config", json.dumps(fake.ccxt_config())]
        args += ["--serve-url", f"http://127.0.0.1:{free_port()}"]  # nothing listens there
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "feed", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            err_lines = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the loop logs "polling" once it has caught up
                line = proc.stderr.readline()
                if not line:
                    break
                err_lines.append(line)
                if "polling binance REST" in line:
                    break
            proc.send_signal(signal.SIGINT)
            out, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = "".join(err_lines) + rest
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "is unreachable (ConnectError" in err and "candles stay in the store" in err
    assert "SIGINT: stopping after the step in progress" in err
    row = next(ln for ln in out.splitlines() if "FILUSDT" in ln)
    assert row.split("│")[2].strip() == "120", out  # stored
