"""Hot reload against a real `mlflow server` (SQLite backend, artifact proxy) and a real serving process.

The test process registers versions with MlflowClient (it may import mlflow); the serving app runs in
its own process (`python -m serving.server`) and only talks REST. Versions are linear bundles whose
output is `version * 1e-3`, so every answer proves which version computed it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIL_FILES
from tests.fixtures.servers import free_port as _free_port
from tests.fixtures.servers import wait_until as _wait

REPO = Path(__file__).resolve().parents[2]
NAME = "returns-FILUSDT-1m"
POLL = 0.5  # seconds, watcher poll interval in this test

pytestmark = pytest.mark.slow


def _register(client, exp_id: str, bundle_dir: Path) -> str:
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(bundle_dir), "bundle")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    return str(mv.version)


def test_champion_moves_without_failed_requests(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from pipelines.sources.binance_files import read_klines
    from tests.fixtures.bundles import api_candle, candle_records, feature_spec, linear_bundle

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("serving-test")
    client.create_registered_model(NAME)
    v1 = _register(client, exp, linear_bundle(tmp_path / "b1", bias=1e-3))
    v2 = _register(client, exp, linear_bundle(tmp_path / "b2", bias=2e-3))
    corrupt = tmp_path / "b3"
    linear_bundle(corrupt, bias=3e-3)
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx graph")
    v3 = _register(client, exp, corrupt)
    assert (v1, v2, v3) == ("1", "2", "3")
    client.set_registered_model_alias(NAME, "champion", v1)

    cfg = tmp_path / "serving.yaml"
    cfg.write_text(f"watcher:\n  poll_interval_s: {POLL}\nrouting:\n  mode: champion_only\n")
    port = _free_port()
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "KAIROS_HOME": str(tmp_path / "home"), "PYTHONPATH": pythonpath}
    env.pop("MLFLOW_TRACKING_URI", None)
    serve_log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.server",
            "--model",
            NAME,
            "--tracking-uri",
            mlflow_server,
            "--port",
            str(port),
            "--config",
            str(cfg),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    warm = feature_spec().warmup
    feed = [api_candle(r) for r in candle_records(read_klines(FIL_FILES[0], "FILUSDT").iloc[: warm + 20_000])]
    results: list[
        tuple[float, float, int, str | None, float | None]
    ] = []  # (sent, received, status, version, out)
    stop = threading.Event()

    def hammer() -> None:
        # a trading client: one closed candle per request into the symbol's stream
        with httpx.Client(base_url=base, timeout=10) as http:
            for candle in feed[warm:]:
                if stop.is_set():
                    break
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/candles", json={"symbol": "FILUSDT", "candles": [candle]})
                    body = r.json()["prediction"] if r.status_code == 200 else None
                    results.append(
                        (
                            t0,
                            time.monotonic(),
                            r.status_code,
                            body and body["version"],
                            body and body["horizons"][0]["log_return"],
                        )
                    )
                except httpx.HTTPError:
                    results.append((t0, time.monotonic(), -1, None, None))

    try:
        _wait(f"{base}/readyz", proc, 60, tmp_path / "serve.log")
        warm_up = httpx.post(
            f"{base}/v1/candles", json={"symbol": "FILUSDT", "candles": feed[:warm]}, timeout=60
        )
        assert warm_up.status_code == 200 and warm_up.json()["warmup_remaining"] == 0, warm_up.text
        worker = threading.Thread(target=hammer)
        worker.start()
        time.sleep(1.5)
        move_start = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", v2)
        move_end = time.monotonic()
        time.sleep(POLL + 2.0)
        bad_start = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", v3)  # corrupt: must not be swapped in
        time.sleep(POLL + 2.0)
        client.set_registered_model_alias(NAME, "challenger", v1)
        time.sleep(POLL + 1.0)
        stop.set()
        worker.join(15)
        models = httpx.get(f"{base}/v1/models").json()["models"][0]
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        stop.set()
        proc.terminate()
        proc.wait(10)
        serve_log.close()

    assert len(results) > 50, f"only {len(results)} requests completed"
    failed = [r for r in results if r[2] != 200]
    assert not failed, f"{len(failed)} failed requests, first: {failed[0]}"
    for sent, recv, _, version, out in results:
        # the answer really came from the named version (bias = version * 1e-3)
        assert out == pytest.approx(int(version) * 1e-3, rel=1e-6), (version, out)
        if recv < move_start:
            assert version == v1
        if sent > move_end + POLL + 1.0:
            assert version == v2, "the new champion must serve within poll interval + 1 s"
    versions = [r[3] for r in results]
    first_v2 = versions.index(v2)
    assert set(versions[first_v2:]) == {v2}, "after the swap no request may see the old version"
    assert results[first_v2][1] - move_end <= POLL + 1.0
    assert all(r[3] == v2 for r in results if r[0] > bad_start), "the corrupt version must never serve"

    assert models["loaded"]["champion"]["version"] == v2
    assert models["registry_aliases"]["champion"] == v3
    err = models["load_errors"]["champion"]
    assert err["version"] == v3 and "onnx" in err["error"].lower()
    assert models["loaded"]["challenger"]["version"] == v1
    assert f'kairos_model_load_failed{{alias="champion",model="{NAME}"}} 1.0' in metrics
    assert f'kairos_model_loaded_version{{alias="champion",model="{NAME}"}} 2.0' in metrics
