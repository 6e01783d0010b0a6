"""Flow tests: the daily loop, run as Prefect flows under `prefect_test_harness`, on real components
(DuckDB store, GX validation, LightGBM, onnxruntime, MLflow on SQLite)."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import FIL_FILES
from tests.fixtures.flow_helpers import write_small_configs


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def small(kairos_home, tmp_path, monkeypatch):
    from pipelines.contracts.settings import get_settings

    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(write_small_configs(tmp_path / "configs")))
    get_settings.cache_clear()
    return kairos_home


def test_daily_retrain_twice_registers_champion_then_judges_challenger(small, harness):
    from flows.retrain import daily_retrain
    from flows.runtime import Runtime
    from registry.history import history
    from registry.promotion import current_aliases

    out1 = daily_retrain("SYNTHUSDT", "1m", "synthetic", {"days": 5}, "lightgbm")
    assert out1["ingest"]["added"] == 5 * 1440
    assert out1["registered"].version == "1"
    assert out1["promote"]["decision"] is None  # nothing to compare yet
    rt = Runtime.from_env()
    name = "returns-SYNTHUSDT-1m"
    assert current_aliases(rt.mlflow, name) == {"champion": "1"}

    out2 = daily_retrain("SYNTHUSDT", "1m", "synthetic", {"days": 1}, "lightgbm")
    assert out2["ingest"]["added"] == 1440  # continues after the last stored candle, no overlap
    cmp, decision = out2["promote"]["comparison"], out2["promote"]["decision"]
    # compared only on rows after the champion's training window: the newly ingested day at most
    assert 0 < cmp.rows <= 1440
    assert cmp.champion_score is not None and 0 < cmp.champion_score < 1
    # the task's naive baselines were scored on the same rows, so the policy can require beating them
    assert cmp.baseline_name in ("always_up", "persistence", "reversal") and 0 < cmp.baseline_score < 1
    # every training run logs its calibration and coverage curves
    for reg in (out1["registered"], out2["registered"]):
        files = {a.path for a in rt.mlflow.list_artifacts(reg.run_id)}
        assert {"calibration.png", "coverage.png", "curves.json"} <= files, files
    # each run records at which horizons walk-forward did not beat the best naive rule (the policy's gate)
    from registry.runs import version_below_baselines

    for out, v in ((out1, "1"), (out2, "2")):
        assert version_below_baselines(rt.mlflow, name, v) == out["result"].below_baselines
    aliases = current_aliases(rt.mlflow, name)
    assert aliases["champion"] == ("2" if decision.promote else "1")
    moves = history(rt.mlflow, name)
    assert moves[0].alias == "champion" and moves[0].to_version == "1"
    assert any(m.to_version == "2" for m in moves)
    assert f"{cmp.challenger_score:.2%}"[:-1] in decision.reason or "rows" in decision.reason


def test_corrupt_batch_is_quarantined_and_store_unchanged(small, harness, tmp_path):
    from flows.ingest import ingest
    from flows.runtime import Runtime
    from pipelines.contracts.errors import ValidationFailed

    good = ingest("binance-files", "FILUSDT", "1m", {"paths": [str(FIL_FILES[0])]})
    assert good["added"] == 44640
    store = Runtime.from_env().store()
    before = (store.count("FILUSDT", "1m"), store.data_hash("FILUSDT", "1m"))

    with zipfile.ZipFile(FIL_FILES[1]) as z:
        lines = z.read(z.namelist()[0]).decode().splitlines()
    row = lines[100].split(",")
    row[2], row[3] = row[3], str(float(row[3]) + 1.0)  # high < low
    lines[100] = ",".join(row)
    lines.insert(200, lines[199])  # duplicated row
    row = lines[300].split(",")
    row[4] = "abc"  # non-numeric close
    lines[300] = ",".join(row)
    bad = tmp_path / "FILUSDT-1m-2023-09-corrupt.csv"
    bad.write_text("\n".join(lines) + "\n")

    with pytest.raises(ValidationFailed) as err:
        ingest("binance-files", "FILUSDT", "1m", {"paths": [str(bad)]})
    msg = str(err.value)
    for name in ("high", "unique", "not_be_null"):
        assert name in msg, msg
    assert (store.count("FILUSDT", "1m"), store.data_hash("FILUSDT", "1m")) == before
    quarantined = list((small / "quarantine").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "report.json").exists()


@pytest.mark.slow
def test_real_fil_months_ingest_validate_train_and_bundle_parity(small, harness, tmp_path):
    from flows.ingest import ingest
    from flows.runtime import Runtime
    from flows.train import train
    from pipelines.contracts.bundle import read_bundle
    from pipelines.features import feature_matrix
    from pipelines.training.predict import predict_bundle
    from registry.bundles import download_bundle

    out = ingest("binance-files", "FILUSDT", "1m", {"paths": [str(p) for p in FIL_FILES]})
    assert (out["rows"], out["added"], out["gaps"]) == (175_680, 175_680, 0)
    again = ingest("binance-files", "FILUSDT", "1m", {"paths": [str(p) for p in FIL_FILES]})
    assert again["added"] == 0
    rt = Runtime.from_env()
    st = rt.store().status().set_index("symbol").loc["FILUSDT"]
    assert int(st["candles"]) == 175_680 and int(st["gaps"]) == 0

    trained = train("FILUSDT", "1m", "lightgbm")
    result, reg = trained["result"], trained["registered"]
    assert result.parity_max_abs <= 1e-5
    # the report holds the model and the three naive baselines on the same rows
    for h in result.horizons:
        ns = {
            who: result.report[who][f"h{h}"]["n"] for who in ("model", "always_up", "persistence", "reversal")
        }
        assert len(set(ns.values())) == 1, ns

    # model.onnx + manifest.json ALONE (downloaded from the registry) reproduce the native model
    onnx_bytes, manifest = read_bundle(
        download_bundle(rt.mlflow, reg.name, version=reg.version, dst=tmp_path / "b")
    )
    candles = rt.store().load("FILUSDT", "1m").tail(3000)
    from_bundle = predict_bundle(onnx_bytes, manifest, candles)
    assert manifest.feature_set.name == "core18"  # the returns default: no price/volume levels
    X = feature_matrix(candles, manifest.feature_set.name)
    ok = np.isfinite(X).all(axis=1)
    pred = result.model.predict(X[ok])  # the native LightGBM boosters
    native = pd.DataFrame(
        {
            "open_time": candles["open_time"].to_numpy()[ok],
            **{f"h{h}": pred[:, j] for j, h in enumerate(result.horizons)},
        }
    )
    both = from_bundle.merge(native, on="open_time", suffixes=("_onnx", "_native")).dropna()
    assert len(both) > 2000
    for h in manifest.horizons:
        diff = np.abs(both[f"h{h}_onnx"] - both[f"h{h}_native"]).max()
        assert diff <= 1e-5, (h, diff)


def test_train_uses_tuned_params_and_records_their_study(small, harness):
    """`kairos tune` writes best params; the next `kairos train` applies them and tags its run."""
    from flows.ingest import ingest
    from flows.runtime import Runtime
    from flows.train import train
    from pipelines.tuning.objective import write_best_params

    ingest("synthetic", "SYNTHUSDT", "1m", {"days": 5})
    rt = Runtime.from_env()
    write_best_params(
        rt.settings.home_abs,
        "lightgbm",
        "SYNTHUSDT",
        "1m",
        {"lightgbm": {"num_leaves": 7, "learning_rate": 0.11}},
        {
            "study_name": "lgbm-SYNTHUSDT",
            "storage": "postgresql://u:secret@db/optuna",
            "trial_number": 17,
            "value": 0.531,
            "metric": "accuracy",
        },
    )
    out = train("SYNTHUSDT", "1m", "lightgbm")
    result, reg = out["result"], out["registered"]
    assert result.params["num_leaves"] == 7 and result.params["learning_rate"] == 0.11
    tags = rt.mlflow.get_run(reg.run_id).data.tags
    assert tags["kairos.tuned.study_name"] == "lgbm-SYNTHUSDT"
    assert tags["kairos.tuned.trial_number"] == "17"
    assert "secret" not in tags["kairos.tuned.storage"]


def test_ccxt_backfill_then_incremental_through_the_ingest_flow(small, harness):
    """The ccxt source through the flow: backfill a day, then an incremental run continues after it."""
    from flows.ingest import ingest
    from flows.runtime import Runtime
    from tests.fixtures.fake_exchange import FakeBinance, load_kline_rows

    with FakeBinance(load_kline_rows(FIL_FILES[0], 3000)) as fake:  # 2023-08-01 00:00 .. 08-03 01:59
        opts = {"exchange": "binance", "market": "FIL/USDT", "exchange_config": fake.ccxt_config()}
        first = ingest("ccxt", "FILUSDT", "1m", {**opts, "since": "2023-08-01", "until": "2023-08-02"})
        assert (first["added"], first["gaps"]) == (1440, 0)
        second = ingest("ccxt", "FILUSDT", "1m", {**opts, "until": "2023-08-03"})  # since = last stored + 1m
        assert second["added"] == 1440 and second["first"].startswith("2023-08-02 00:00")
    store = Runtime.from_env().store()
    assert store.count("FILUSDT", "1m") == 2880
    assert int(store.status().set_index("symbol").loc["FILUSDT", "gaps"]) == 0
