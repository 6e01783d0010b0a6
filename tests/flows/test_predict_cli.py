"""`kairos predict` through the real registry (MLflow on SQLite in KAIROS_HOME) and the candle store:
CSV and Parquet files with one row per candle, values equal to `score_candles`, one-line errors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.sources.synthetic import generate
from pipelines.training.predict import score_candles
from tests.unit.test_predict_batch import train

RETURNS, VOLATILITY = "returns-SYNTHUSDT-1m", "volatility-SYNTHUSDT-1m"


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return generate("SYNTHUSDT", n=6000, seed=7)


@pytest.fixture(scope="module")
def trained(candles):
    return {task: train(candles, task) for task in ("returns", "volatility")}


@pytest.fixture()
def registered(kairos_home, template_db, monkeypatch, tmp_path, candles, trained):
    """Candles of SYNTHUSDT (6000) and SYNTHETH (1500) in the store; returns v1 (champion) and v2
    (challenger) and volatility v1 (champion) registered through the ordinary registry code."""
    from flows.runtime import Runtime
    from registry.promotion import assign_new_version
    from registry.runs import log_training

    kairos_home.mkdir(parents=True)
    shutil.copy(template_db, kairos_home / "mlflow.db")  # skips ~5 s of MLflow migrations
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # `prepare()` would set it for good
    rt = Runtime.from_env()
    store = rt.store()
    store.upsert(candles)
    store.upsert(generate("SYNTHETH", n=1500, seed=11, start_price=2000.0))
    for task in ("returns", "volatility"):
        assign_new_version(rt.mlflow, log_training(rt.mlflow, trained[task]), actor="test")
    assign_new_version(rt.mlflow, log_training(rt.mlflow, trained["returns"]), actor="test")  # v2: challenger
    return rt, trained


def kairos(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, ["predict", *args])


def output_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("symbol", "open_time", "scored")]


def test_predict_writes_csv_and_parquet_equal_to_score_candles(registered, tmp_path):
    rt, results = registered
    res = results["returns"]
    stored = rt.store().load("SYNTHUSDT", "1m")
    expected = score_candles(stored, res.onnx_bytes, res.manifest)  # every stored candle, warm-up unscored
    cols = output_columns(expected)
    assert cols == [f"returns_h{h}" for h in res.manifest.horizons]

    # Parquet, the whole series, the champion by default
    run = kairos("--model", RETURNS, "--symbol", "SYNTHUSDT", "--out", str(tmp_path / "all.parquet"))
    assert run.exit_code == 0, run.output
    warm = res.manifest.feature_set.warmup
    assert f"{RETURNS} v1 on SYNTHUSDT 1m" in run.output and "wrote 6,000 rows" in run.output
    assert f"{6000 - warm + 1:,} scored, {warm - 1:,} not scored" in run.output, run.output
    pq = pd.read_parquet(tmp_path / "all.parquet")
    assert len(pq) == 6000 and pq["scored"].sum() == 6000 - warm + 1
    assert str(pq["open_time"].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(pq, expected, check_dtype=False)

    # CSV, a range in the middle: history before --start is loaded, so every row in range is scored
    start, end = stored["open_time"].iloc[3000], stored["open_time"].iloc[3999]
    run = kairos(
        "--model",
        RETURNS,
        "--alias",
        "challenger",
        "--symbol",
        "SYNTHUSDT",
        "--start",
        start.isoformat(),
        "--end",
        end.strftime("%Y-%m-%d %H:%M"),  # no zone: UTC
        "--out",
        str(tmp_path / "out" / "range.csv"),  # the folder is created
    )
    assert run.exit_code == 0, run.output
    assert f"{RETURNS} v2" in run.output and "wrote 1,000 rows (1,000 scored, 0 not scored" in run.output
    csv = pd.read_csv(tmp_path / "out" / "range.csv")
    assert list(csv.columns) == ["symbol", "open_time", "scored", *cols] and len(csv) == 1000
    assert csv["open_time"].iloc[0] == start.strftime("%Y-%m-%dT%H:%M:%SZ") and csv["scored"].all()
    want = expected.iloc[3000:4000]
    np.testing.assert_array_equal(csv[cols].to_numpy(), want[cols].to_numpy())  # CSV floats round-trip
    assert (pd.to_datetime(csv["open_time"], utc=True).to_numpy() == want["open_time"].to_numpy()).all()


def test_predict_scores_any_task_and_other_symbols(registered, tmp_path):
    rt, results = registered
    vol = results["volatility"]
    run = kairos("--model", VOLATILITY, "--symbol", "SYNTHUSDT", "--out", str(tmp_path / "vol.csv"))
    assert run.exit_code == 0, run.output
    csv = pd.read_csv(tmp_path / "vol.csv")
    assert output_columns(csv) == ["log_variance_h5", "log_variance_h15", "log_variance_h60"]
    unscored = csv[~csv["scored"]]
    assert (
        len(unscored) == vol.manifest.feature_set.warmup - 1
        and unscored[output_columns(csv)].isna().all().all()
    )

    run = kairos(
        "--model", RETURNS, "--version", "1", "--symbol", "SYNTHETH", "--out", str(tmp_path / "eth.csv")
    )
    assert run.exit_code == 0, run.output
    assert "note: returns-SYNTHUSDT-1m was trained on SYNTHUSDT; scoring SYNTHETH candles" in run.output
    eth = pd.read_csv(tmp_path / "eth.csv")
    expected = score_candles(
        rt.store().load("SYNTHETH", "1m"), results["returns"].onnx_bytes, results["returns"].manifest
    )
    assert len(eth) == 1500 and (eth["symbol"] == "SYNTHETH").all()
    np.testing.assert_array_equal(
        eth[output_columns(eth)].to_numpy(), expected[output_columns(expected)].to_numpy()
    )


BAD = [
    (
        ["--model", "returns-NOPE-1m", "--symbol", "SYNTHUSDT"],
        "registered model 'returns-NOPE-1m' does not exist",
    ),
    (["--model", RETURNS, "--symbol", "NOPEUSDT"], "no 1m candles stored for NOPEUSDT"),
    (["--model", RETURNS, "--symbol", "SYNTHUSDT", "--interval", "5m"], "scores 1m candles, not 5m"),
    (["--model", RETURNS, "--symbol", "SYNTHUSDT", "--alias", "staging"], "has no alias 'staging'"),
    (["--model", RETURNS, "--symbol", "SYNTHUSDT", "--version", "9"], "has no version 9"),
    (["--model", RETURNS, "--symbol", "SYNTHUSDT", "--alias", "champion", "--version", "1"], "not both"),
    (["--model", RETURNS, "--symbol", "SYNTHUSDT", "--start", "yesterday-ish"], "--start 'yesterday-ish'"),
    (
        ["--model", RETURNS, "--symbol", "SYNTHUSDT", "--start", "2030-01-01"],
        "no stored SYNTHUSDT 1m candles",
    ),
    (["--model", RETURNS, "--symbol", "SYNTHUSDT", "--out", "x.txt"], "write a .csv or a .parquet"),
]


def test_bad_input_ends_in_one_line(registered, tmp_path):
    for args, needle in BAD:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "p.csv")]
        run = kairos(*args)
        assert run.exit_code == 1, (args, run.output)
        assert "Traceback" not in run.output
        errors = [line for line in run.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], (needle, run.output)
        assert not (tmp_path / "p.csv").exists()
