"""`kairos train --task whale --symbols ... --universe NAME` and `kairos predict` as a user runs them, on real
pump windows stored in an isolated home: a pooled model over 5 coins (RCN's two overlapping windows are
one stored series, cut into 4-day windows), evaluated on the latest windows, registered as
`whale-TEST-1m` with its universe, and scored back in batch through the registered bundle."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
KAIROS = [sys.executable, "-m", "flows.cli"]
FILES = {
    "ARNBTC": ["ARN_2020-04-07_18.00.zip"],
    "BNTBTC": ["BNT_2020-04-24_15.59.zip"],
    "GRSBTC": ["GRS_2020-04-02_16.00.zip"],
    "APPCBTC": ["APPC_2020-11-18_18.00.zip"],
    "RCNBTC": ["RCN_2021-01-07_21.00.zip", "RCN_2021-01-10_17.00.zip"],
}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(KAIROS + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_pooled_whale_model_trains_registers_and_scores(kairos_home, tmp_path, shared_data):
    from pipelines.sources.trades import build_series
    from pipelines.store import CandleStore

    home = kairos_home  # the subprocesses and this test share it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(KAIROS_HOME=str(home), COLUMNS="200")
    store = CandleStore(home / "candles.duckdb")
    for sym, names in FILES.items():  # what `kairos ingest trades` stores (tested in test_ingest_trades_cli)
        series = build_series([shared_data / "pumps" / n for n in names], sym)
        store.upsert(series.candles)
        store.upsert_trade_minutes(sym, "1m", series.minutes)
    events = shared_data / "pumps" / "events.csv"

    res = run(
        ["train", "--task", "whale", "--symbols", ",".join(FILES), "--universe", "TEST",
         "--events", str(events), "--test-windows", "2"],
        env,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Traceback" not in out, out
    for text in ("held-out windows (2, latest) — whale-TEST-1m", "PR-AUC", "volume_spike", "return_spike",
                 "threat levels on the held-out windows' normal minutes", "flagged within 2 min",
                 "registered whale-TEST-1m version 1"):  # fmt: skip
        assert text in out, (text, out)
    # RCN's two overlapping files are one stored series of ~7 days, cut into 4-day windows
    # (options.max_segment): the latest two windows are RCN's two pieces, one announced pump each
    assert "│ threat>=2    │ 2 " in out, out

    from flows.runtime import Runtime
    from pipelines.contracts.bundle import read_bundle
    from registry.bundles import download_bundle

    path = download_bundle(Runtime.from_env().mlflow, "whale-TEST-1m", version="1", dst=tmp_path / "b")
    _, manifest = read_bundle(path)
    assert manifest.task == "whale" and manifest.symbol == "TEST"
    assert manifest.extra["universe"] == {"name": "TEST", "symbols": sorted(FILES)}
    assert [o.name for o in manifest.outputs][:3] == ["whale_probability", "anomaly_score", "threat_level"]
    assert len(manifest.training["segments"]) == 6  # ARN, BNT, GRS, APPC + RCN's two pieces

    # one symbol: its own windows pooled (`whale-RCNBTC-1m`); RCN's two 4-day windows are too few
    res = run(["train", "--task", "whale", "--symbol", "RCNBTC", "--test-windows", "1"], env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert (
        "error: 2 segments (event windows) leave no room for 1 test window(s) and at least 2 training"
        in " ".join((res.stdout + res.stderr).split())
    )

    dst = tmp_path / "brd.parquet"
    res = run(
        ["predict", "--model", "whale-TEST-1m", "--version", "1", "--symbol", "RCNBTC", "--out", str(dst)],
        env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    df = pd.read_parquet(dst)
    assert len(df) == len(store.load("RCNBTC", "1m"))
    scored = df[df["scored"]]
    assert {"whale_probability_h15", "anomaly_score", "threat_level"} <= set(df.columns)
    assert scored["threat_level"].between(1, 5).all() and np.isfinite(scored["whale_probability_h15"]).all()
    # the announced pump minute (2021-01-10 17:00) scores a threat level >= 2 within 2 minutes
    pump = pd.Timestamp("2021-01-10 17:00", tz="UTC")
    near = scored[(pd.to_datetime(scored["open_time"], utc=True) >= pump - pd.Timedelta("1min"))
                  & (pd.to_datetime(scored["open_time"], utc=True) <= pump + pd.Timedelta("1min"))]  # fmt: skip
    assert (near["threat_level"] >= 2).any(), near
