"""Soak: 200 champion swaps through a real `mlflow server` while a real serving process is under
continuous load: no failed request, every answer from the version then serving, resident memory flat.

The swaps take the production path end to end: `MlflowClient.set_registered_model_alias` moves the
`champion` alias, the serving process's watcher (polling every 0.1 s) sees it over REST, loads the
bundle (downloaded once per version into its cache, then loaded from there: a new onnxruntime session
each time), warms it up and swaps it in. Two versions alternate; their output is `version * 1e-3`.
Load: one client streams candles (`POST /v1/candles`, one per request, times shifted by a whole feed
length at each wrap so the stream never ends) and one posts windows (`POST /v1/predict`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import FIL_FILES
from tests.fixtures.bundles import api_candle, candle_records, feature_spec, linear_bundle
from tests.fixtures.serving_process import ServingProcess

NAME = "returns-FILUSDT-1m"
SYMBOL = "FILUSDT"
SWAPS = 200
POLL = 0.1

pytestmark = pytest.mark.slow


def _register(client, exp_id: str, bundle_dir: Path) -> str:
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(bundle_dir), "bundle")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    return str(mv.version)


def test_200_alias_swaps_under_load_fail_nothing_and_leak_nothing(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from pipelines.sources.binance_files import read_klines

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("soak")
    client.create_registered_model(NAME)
    versions = [_register(client, exp, linear_bundle(tmp_path / f"b{i}", bias=i * 1e-3)) for i in (1, 2)]
    assert versions == ["1", "2"]
    client.set_registered_model_alias(NAME, "champion", "1")

    server = ServingProcess(
        tmp_path / "serve",
        ["--model", NAME, "--tracking-uri", mlflow_server],
        f"watcher:\n  poll_interval_s: {POLL}\n  aliases: [champion]\nrouting:\n  mode: champion_only\n",
    )
    warm = feature_spec().warmup
    feed = [api_candle(r) for r in candle_records(read_klines(FIL_FILES[0], SYMBOL).iloc[: warm + 5000])]
    span = feed[-1]["open_time"] - feed[0]["open_time"] + 60_000
    window = {"symbol": SYMBOL, "candles": feed[: warm + 1]}
    results: list[tuple[str, int, str | None, float | None]] = []  # (route, status, version, value)
    stop = threading.Event()

    def check(route: str, r: httpx.Response, p: dict | None) -> None:
        results.append((route, r.status_code, p and p["version"], p and p["horizons"][0]["value"]))

    def stream() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = warm
            while not stop.is_set():
                c = dict(
                    feed[i % len(feed)], open_time=feed[i % len(feed)]["open_time"] + span * (i // len(feed))
                )
                i += 1
                try:
                    r = http.post("/v1/candles", json={"symbol": SYMBOL, "candles": [c]})
                    check("candles", r, r.json()["prediction"] if r.status_code == 200 else None)
                except httpx.HTTPError as e:
                    results.append(("candles", -1, repr(e), None))

    def windows() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/predict", json=window)
                    check("predict", r, r.json() if r.status_code == 200 else None)
                except httpx.HTTPError as e:
                    results.append(("predict", -1, repr(e), None))
                time.sleep(0.01)

    def served_version(http: httpx.Client) -> str | None:
        loaded = http.get("/v1/models").json()["models"][0]["loaded"]
        return loaded.get("champion", {}).get("version")

    swap_s: list[float] = []
    rss: dict[str, float] = {}
    t_start = time.monotonic()
    try:
        server.wait()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/v1/candles", json={"symbol": SYMBOL, "candles": feed[:warm]})
            assert r.status_code == 200 and r.json()["warmup_remaining"] == 0, r.text
            workers = [threading.Thread(target=f) for f in (stream, windows)]
            for w in workers:
                w.start()
            time.sleep(2.0)
            rss["before"] = server.rss_mb()
            for n in range(SWAPS):
                target = versions[(n + 1) % 2]
                t0 = time.monotonic()
                client.set_registered_model_alias(NAME, "champion", target)
                while served_version(http) != target:
                    assert time.monotonic() - t0 < 30, f"swap {n} to v{target} not served after 30 s"
                    time.sleep(0.02)
                swap_s.append(time.monotonic() - t0)
                if n + 1 == 10:
                    rss["after_10"] = server.rss_mb()
            time.sleep(1.0)
            rss["after"] = server.rss_mb()
            stop.set()
            for w in workers:
                w.join(30)
            reloads = http.get("/v1/models").json()["models"][0]
    finally:
        stop.set()
        rc = server.stop()
    elapsed = time.monotonic() - t_start

    failed = [r for r in results if r[1] != 200]
    by_route = {route: sum(1 for r in results if r[0] == route) for route in ("candles", "predict")}
    print(
        f"\nsoak: {SWAPS} swaps in {sum(swap_s):.0f} s (per swap p50 {np.median(swap_s) * 1e3:.0f} ms, "
        f"max {max(swap_s) * 1e3:.0f} ms); requests {by_route}, failed {len(failed)}; RSS MB "
        + ", ".join(f"{k} {v:.1f}" for k, v in rss.items())
        + f"; growth {rss['after'] - rss['before']:+.1f} MB ({rss['after'] - rss['after_10']:+.1f} after swap 10)"
        f"; test {elapsed:.0f} s"
    )
    assert rc == 0
    assert not failed, f"{len(failed)} failed requests, first: {failed[:3]}"
    assert min(by_route.values()) > 100
    for route, _, version, value in results:
        assert value == pytest.approx(int(version) * 1e-3, rel=1e-6), (route, version, value)
    assert {v for _, _, v, _ in results} == {"1", "2"}
    assert reloads["load_errors"] == {}
    assert rss["after"] - rss["before"] < 20.0, rss
