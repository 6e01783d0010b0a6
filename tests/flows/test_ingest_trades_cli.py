"""`kairos ingest trades` as a user runs it: a real pump file into an isolated store, re-ingest, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, SHARED_DATA

KAIROS = [sys.executable, "-m", "flows.cli"]
BRD = SHARED_DATA / "pumps" / "BRD_2021-02-24_17.00.zip"


def run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(KAIROS + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(KAIROS_HOME=str(tmp_path / "home"), COLUMNS="200")
    return env


def test_help():
    from flows.cli import app

    res = CliRunner().invoke(app, ["ingest", "trades", "--help"])
    assert res.exit_code == 0 and "Usage" in res.output and "--symbol" in res.output


@pytest.mark.slow
def test_a_pump_file_ingests_candles_and_trade_minutes(cli_env, tmp_path, shared_data):
    from pipelines.sources.trades import build_series
    from pipelines.store import CandleStore

    first = run(["ingest", "trades", str(BRD), "--symbol", "BRDBTC"], cli_env)
    out = first.stdout + first.stderr
    assert first.returncode == 0 and "Traceback" not in out, out
    want = build_series([BRD], "BRDBTC")
    assert f"BRDBTC 1m: {len(want.candles):,} candles read, {len(want.candles):,} added" in first.stdout, out
    assert "0 gap(s)" in first.stdout and "expectations checked" in first.stdout
    assert (
        f"{want.trades:,} trades ({want.duplicates_dropped:,} exact duplicates dropped), "
        f"{want.orders:,} taker orders, {len(want.minutes):,} trade minutes added"
    ) in first.stdout, out

    store = CandleStore(tmp_path / "home" / "candles.duckdb")
    pd.testing.assert_frame_equal(store.load("BRDBTC", "1m"), want.candles)
    pd.testing.assert_frame_equal(store.load_trade_minutes("BRDBTC", "1m"), want.minutes)
    assert store.status().iloc[0]["gaps"] == 0

    again = run(["ingest", "trades", str(BRD), "--symbol", "BRDBTC"], cli_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert " 0 added" in again.stdout and "0 trade minutes added" in again.stdout, again.stdout


def test_bad_files_end_in_one_line_and_store_nothing(cli_env, tmp_path):
    from pipelines.store import CandleStore

    def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out, out
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out
        for n in needles:
            assert n in errors[0], errors[0]
        return errors[0]

    one_line_error(
        run(["ingest", "trades", str(tmp_path / "nope.zip"), "--symbol", "X"], cli_env), "nope.zip"
    )
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("symbol,timestamp,price,amount\nBRD/BTC,1614013209849,1e-6,5\n")
    one_line_error(run(["ingest", "trades", str(wrong), "--symbol", "X"], cli_env), "wrong.csv", "'side'")
    nan_price = tmp_path / "nan.csv"  # readable, but a price is not a number: the candle suite rejects it
    nan_price.write_text(
        "symbol,timestamp,datetime,side,price,amount,btc_volume\n"
        "BRD/BTC,1614013209849,x,buy,1e-6,5,5e-6\n"
        "BRD/BTC,1614013269849,x,sell,n/a,5,5e-6\n"
    )
    line = one_line_error(
        run(["ingest", "trades", str(nan_price), "--symbol", "X"], cli_env), "failed validation"
    )
    assert "quarantined to" in line
    store = CandleStore(tmp_path / "home" / "candles.duckdb")
    assert store.count("X", "1m") == 0 and store.load_trade_minutes("X").empty
