"""Acceptance (task contract issue): the volatility task end to end on real FILUSDT candles.

`kairos train --task volatility --symbol FILUSDT` trains walk-forward on Oct-Nov 2023, prints QLIKE / MSE /
MZ-R² for the model beside persistence, EWMA and HAR-RV, exports one parity-gated ONNX graph and registers
`volatility-FILUSDT-1m` on a real `mlflow server`; `kairos serve --model volatility-FILUSDT-1m` follows the
registry and serves it (stream == batch); `kairos review` compares two volatility versions with the task's own
loss (QLIKE).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FIL_FILES, REPO
from tests.fixtures.servers import free_port, wait_until

pytestmark = pytest.mark.slow

NAME = "volatility-FILUSDT-1m"
KAIROS = [sys.executable, "-m", "flows.cli"]


def kairos(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(KAIROS + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data, mlflow_server):
    home = tmp_path_factory.mktemp("vol") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    # These tests exercise the volatility task's mechanics, so the model serves even where it loses to
    # a naive rule: on Oct-Nov 2023 HAR-RV beats it at the policy horizon (h15) in walk-forward, and the
    # default policy (require_beats_baselines) would keep it a challenger — asserted below from its run.
    configs = home.parent / "configs"
    shutil.copytree(REPO / "configs", configs)
    policy = configs / "promotion.yaml"
    policy.write_text(
        policy.read_text().replace("require_beats_baselines: true", "require_beats_baselines: false")
    )
    serving = configs / "serving.yaml"  # and serving would withhold every horizon of it
    serving.write_text(
        serving.read_text().replace("withhold_below_baselines: true", "withhold_below_baselines: false")
    )
    env.update(
        KAIROS_HOME=str(home),
        COLUMNS="200",
        MLFLOW_TRACKING_URI=mlflow_server,
        KAIROS_CONFIGS_DIR=str(configs),
    )
    files = [str(p) for p in FIL_FILES if p.name.endswith(("2023-10.zip", "2023-11.zip"))]
    assert len(files) == 2
    kairos(["ingest", "binance-files", *files, "--symbol", "FILUSDT"], env)
    out = kairos(["train", "--task", "volatility", "--symbol", "FILUSDT"], env).stdout
    return home, env, out


def test_train_prints_the_task_metrics_beside_its_baselines_and_registers(trained, monkeypatch):
    home, env, out = trained
    for word in (
        "QLIKE",
        "MSE (log var)",
        "MZ R²",
        "persistence",
        "ewma",
        "har_rv",
        f"registered {NAME} version 1",
    ):
        assert word in out, out
    monkeypatch.setenv("KAIROS_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    from flows.runtime import Runtime
    from pipelines.contracts.settings import get_settings
    from registry.promotion import current_aliases

    get_settings.cache_clear()
    client = Runtime.from_env().mlflow
    assert current_aliases(client, NAME) == {"champion": "1"}
    run = client.get_run(client.get_model_version(NAME, "1").run_id)
    from registry.runs import version_below_baselines

    below = version_below_baselines(client, NAME, "1")  # the honest verdict is recorded either way
    assert below is not None and 15 in below and set(below) <= {5, 15, 60}  # HAR-RV wins at h15 here
    assert run.data.tags["kairos.below_baselines"] == (",".join(map(str, sorted(below))) or "none")
    m = run.data.metrics
    for h in (5, 15, 60):
        n = {who: m[f"{who}.h{h}.n"] for who in ("model", "persistence", "ewma", "har_rv")}
        assert len(set(n.values())) == 1 and n["model"] > 10_000, n  # same rows for everyone
        # volatility clusters: HAR-RV (fitted on each training fold) beats the last window's RV
        assert m[f"har_rv.h{h}.qlike"] < m[f"persistence.h{h}.qlike"]
        assert 0 < m[f"model.h{h}.mz_r2"] < 1
    assert run.data.tags["task"] == "volatility" and "newest.h15.qlike" in m
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"calibration.png", "curves.json"} <= files and "coverage.png" not in files  # not a signed task
    get_settings.cache_clear()


def test_bundle_serves_stream_equal_to_batch(trained, tmp_path, monkeypatch):
    home, env, _ = trained
    monkeypatch.setenv("KAIROS_HOME", str(home))
    monkeypatch.setenv("KAIROS_CONFIGS_DIR", env["KAIROS_CONFIGS_DIR"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    from fastapi.testclient import TestClient

    from flows.runtime import Runtime
    from pipelines.contracts.bundle import read_bundle
    from pipelines.contracts.settings import get_settings
    from pipelines.training.predict import predict_bundle
    from registry.bundles import download_bundle
    from serving.app import create_app
    from serving.config import load_serving_config
    from serving.server import build_state
    from tests.fixtures.bundles import api_candle, candle_records

    get_settings.cache_clear()
    rt = Runtime.from_env()
    bundle = download_bundle(rt.mlflow, NAME, alias="champion", dst=tmp_path / "bundle")
    onnx_bytes, manifest = read_bundle(bundle)
    assert manifest.task == "volatility" and manifest.outputs[0].name == "log_variance"
    assert manifest.horizons == [5, 15, 60] and not manifest.signed
    candles = rt.store().load("FILUSDT", "1m").iloc[-800:].reset_index(drop=True)
    batch = predict_bundle(onnx_bytes, manifest, candles).set_index("open_time")

    state = build_state(load_serving_config(None), [], [bundle])
    with TestClient(create_app(state)) as api:
        got = {}
        for rec in candle_records(candles):
            body = api.post("/v1/candles", json={"symbol": "FILUSDT", "candles": [api_candle(rec)]}).json()
            if body.get("prediction"):
                p = body["prediction"]
                got[p["open_time"]] = [h["value"] for h in p["horizons"]]
                assert "direction" not in p["horizons"][0] and p["horizons"][0]["horizon"] == 5
    times = (batch.index.astype("datetime64[ms, UTC]").astype("int64")).tolist()
    common = [t for t in times if t in got]
    assert len(common) > 200
    stream = np.array([got[t] for t in common])
    want = batch.loc[batch.index[[times.index(t) for t in common]], ["h5", "h15", "h60"]].to_numpy()
    np.testing.assert_allclose(stream, want, rtol=1e-6, atol=1e-6)  # same kernel, same graph, float32 out
    get_settings.cache_clear()


def test_kairos_serve_follows_the_registry_and_serves_the_volatility_model(trained, tmp_path):
    """`kairos serve --model volatility-FILUSDT-1m` (its own process, REST to the MLflow server) loads the
    champion and answers with the task's output for every horizon."""
    import httpx

    from pipelines.sources.binance_files import read_klines
    from tests.fixtures.bundles import api_candle, candle_records

    home, env, _ = trained
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            KAIROS + ["serve", "--model", NAME, "--port", str(port), "--log-level", "warning"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(f"{base}/readyz", proc, 120, log_path)
            models = httpx.get(f"{base}/v1/models", timeout=5).json()
            assert NAME in str(models) and "log_variance" in str(models), models
            nov = [f for f in FIL_FILES if f.name.endswith("2023-11.zip")][0]
            window = [api_candle(r) for r in candle_records(read_klines(nov, "FILUSDT").iloc[-700:])]
            body = httpx.post(f"{base}/v1/candles", json={"symbol": "FILUSDT", "candles": window}, timeout=30)
            assert body.status_code == 200, body.text
            hs = body.json()["prediction"]["horizons"]
            assert [h["horizon"] for h in hs] == [5, 15, 60] and all(-30 < h["value"] < 0 for h in hs)
            assert "direction" not in hs[0]
        finally:
            proc.terminate()
            proc.wait(15)


def test_review_compares_two_volatility_versions_with_qlike(trained, tmp_path, monkeypatch):
    home, env, _ = trained
    monkeypatch.setenv("KAIROS_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    from onnx import TensorProto, helper, numpy_helper

    from flows.runtime import Runtime
    from pipelines.contracts.bundle import read_bundle, write_bundle
    from pipelines.contracts.settings import get_settings
    from registry.bundles import download_bundle
    from registry.client import ensure_experiment
    from registry.promotion import current_aliases, set_alias
    from serving.config import RoutingConfig, RuntimeConfig
    from serving.predictor import Predictor
    from serving.predlog import PredictionLog
    from serving.runtime import load_model
    from tests.fixtures.bundles import candle_records

    get_settings.cache_clear()
    rt = Runtime.from_env()
    client = rt.mlflow
    champion_dir = download_bundle(client, NAME, alias="champion", dst=tmp_path / "v1")
    _, manifest = read_bundle(champion_dir)
    # v2: a constant forecast (the mean log variance per horizon): a real bundle, clearly worse than v1
    consts = np.array([manifest.metrics[f"model.h{h}.mean_forecast"] for h in manifest.horizons], np.float32)
    n_f = len(manifest.feature_set.names)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "Z"], ["xz"]),
            helper.make_node("Add", ["xz", "c"], ["log_variance"]),
        ],
        "constant",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_f])],
        [helper.make_tensor_value_info("log_variance", TensorProto.FLOAT, [None, 3])],
        initializer=[
            numpy_helper.from_array(np.zeros((n_f, 3), np.float32), "Z"),
            numpy_helper.from_array(consts, "c"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    v2_dir = write_bundle(tmp_path / "v2", model.SerializeToString(), manifest)
    run = client.create_run(ensure_experiment(client, "kairos-training"))
    client.log_artifacts(run.info.run_id, str(v2_dir), "bundle")
    client.set_terminated(run.info.run_id)
    v2 = str(
        client.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id).version
    )
    set_alias(client, NAME, "challenger", v2, reason="constant forecast", actor="test")

    # shadow serving over the newest 3,000 candles (their outcomes are in the store), every request logged
    rtc = RuntimeConfig(warmup_runs=2, withhold_below_baselines=False)
    champ, chall = load_model(champion_dir, rtc, version="1"), load_model(v2_dir, rtc, version=v2)
    log = PredictionLog(home / "predictions", flush_every=512).start()
    pred = Predictor(champ, chall, RoutingConfig(mode="shadow"), log=log)
    candles = rt.store().load("FILUSDT", "1m").iloc[-3600:].reset_index(drop=True)
    served = [p for r in candle_records(candles) if (p := pred.update(r)) is not None]
    log.close()
    assert len(served) > 2900

    out = kairos(["review", "--model", NAME], env).stdout
    flat = " ".join(out.split())
    assert "qlike" in flat and "KEEP CHAMPION" in flat and "champion is better at h15" in flat, out
    assert current_aliases(client, NAME) == {"champion": "1", "challenger": v2}
    # which version served when, with the task's live metric (QLIKE at the policy's horizon)
    hist = " ".join(kairos(["history", "--model", NAME], env).stdout.split())
    assert "live qlike" in hist, hist
    get_settings.cache_clear()
