"""The whole feature library through the product: `kairos train --features core27,ta,mtf,risk` trains
walk-forward (risk's HMM refitted per fold), exports with parity and registers; `kairos serve --bundle`
serves that version, and its streaming answers equal the batch predictions of the same bundle."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.conftest import FIL_FILES, REPO
from tests.fixtures.flow_helpers import write_small_configs
from tests.fixtures.servers import free_port, wait_until

pytestmark = pytest.mark.slow
FEATURES = "core27,ta,mtf,risk"
KAIROS = [sys.executable, "-m", "flows.cli"]


def test_train_with_every_feature_set_then_serve_stream_equals_batch(tmp_path):
    from pipelines.contracts.bundle import read_bundle
    from pipelines.sources.binance_files import read_klines
    from pipelines.training.predict import predict_bundle
    from registry.bundles import download_bundle
    from registry.client import make_client
    from tests.fixtures.bundles import api_candle, candle_records

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(
        KAIROS_HOME=str(home),
        KAIROS_CONFIGS_DIR=str(write_small_configs(tmp_path / "configs")),
        COLUMNS="200",
    )

    def kairos(*args: str) -> str:
        proc = subprocess.run(
            KAIROS + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in out, out
        return out

    kairos("ingest", "binance-files", str(FIL_FILES[0]), "--symbol", "FILUSDT")
    out = kairos("train", "--symbol", "FILUSDT", "--features", FEATURES)
    assert "registered returns-FILUSDT-1m version 1" in out, out

    client = make_client(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")
    bundle = download_bundle(client, "returns-FILUSDT-1m", version="1", dst=tmp_path / "bundle")
    onnx_bytes, manifest = read_bundle(bundle)
    fs = manifest.feature_set
    assert fs.name == "core27+ta+mtf+risk" and set(fs.components) == {"core27", "ta", "mtf", "risk"}
    assert set(fs.params) == {"risk"} and len(fs.params["risk"]["transmat"]) == 4  # the HMM travels
    assert manifest.extra["parity_max_abs"] <= manifest.extra["parity_tolerance"]

    candles = read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:6000].reset_index(drop=True)
    batch = predict_bundle(onnx_bytes, manifest, candles)  # open_time + h1..h5, NaN during warm-up
    recs = candle_records(candles)
    port = free_port()
    serve_env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        cfg = tmp_path / "serving.yaml"
        # every horizon served (even one below the naive rules), so each can be compared with batch
        cfg.write_text("prediction_log:\n  enabled: false\nruntime:\n  withhold_below_baselines: false\n")
        proc = subprocess.Popen(
            KAIROS + ["serve", "--bundle", str(bundle), "--port", str(port), "--config", str(cfg)],
            cwd=REPO,
            env=serve_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(f"{base}/readyz", proc, 120, log)
            warm = fs.warmup + 100
            with httpx.Client(base_url=base, timeout=30) as http:
                for a in range(0, warm, 1000):  # the history, in batches: no prediction compared yet
                    body = {
                        "symbol": "FILUSDT",
                        "candles": [api_candle(r) for r in recs[a : min(a + 1000, warm)]],
                    }
                    assert http.post("/v1/candles", json=body).status_code == 200
                served = []
                for r in recs[warm : warm + 300]:  # then one candle per request, as a live feed
                    res = http.post("/v1/candles", json={"symbol": "FILUSDT", "candles": [api_candle(r)]})
                    assert res.status_code == 200, res.text
                    p = res.json()["prediction"]
                    served.append(
                        (
                            p["open_time"],
                            [h["value"] for h in p["horizons"]],
                            [h["horizon"] for h in p["horizons"]],
                        )
                    )
        finally:
            proc.terminate()
            proc.wait(20)
    t = batch["open_time"].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    rows = {int(x): i for i, x in enumerate(t)}
    for open_time, values, horizons in served:
        want = batch.iloc[rows[open_time]][[f"h{h}" for h in horizons]].to_numpy(np.float64)
        np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-7)  # float32 model outputs
