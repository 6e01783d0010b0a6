"""Auth, overload and graceful shutdown against a real `python -m serving.server` process on loopback.

- auth: 401/403/200 over real HTTP, WebSockets refused with close code 1008, no key in the server's
  debug log;
- overload: 16 clients hammering a server admitting 4 requests (4x its capacity) get only 200 or
  429 (+ Retry-After), and the accepted requests' p99 stays bounded;
- SIGTERM in the middle of a load: exit status 0, every 200 has its prediction-log record on disk, no
  request the server took failed.

The request is `POST /v1/predict` with a window of warm-up + 1 = 555 real FILUSDT candles (~110 KB of
JSON, a few ms of parsing and features): slow enough that 16 clients keep the server busy.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import FIL_FILES
from tests.fixtures.bundles import api_candle, candle_records, feature_spec, linear_bundle
from tests.fixtures.serving_process import ServingProcess

SYMBOL = "FILUSDT"
STREAM_KEY = "feeder-" + "k3Y9pQ2x" * 5
PREDICT_KEY = "reader-" + "Vb7nM4rT" * 5
WRONG_KEY = "nobody-" + "Hg5fD1sA" * 5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feed():
    from pipelines.sources.binance_files import read_klines

    warm = feature_spec().warmup
    return [api_candle(r) for r in candle_records(read_klines(FIL_FILES[0], SYMBOL).iloc[: warm + 200])]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return linear_bundle(tmp_path_factory.mktemp("bundle") / "b", bias=1e-3)


def _window_body(feed: list[dict], shift: int = 0) -> bytes:
    warm = feature_spec().warmup
    return json.dumps({"symbol": SYMBOL, "candles": feed[shift : shift + warm + 1]}).encode()


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def test_auth_on_a_real_server(tmp_path, bundle, feed):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    server = ServingProcess(
        tmp_path,
        ["--bundle", str(bundle)],
        "routing:\n  mode: champion_only\napi:\n  auth:\n    open_paths: [/healthz]\n",
        env={"KAIROS_API_KEYS": f"feeder:{STREAM_KEY}:stream,predict reader:{PREDICT_KEY}:predict"},
        log_level="debug",
    )
    push = {"symbol": SYMBOL, "candles": feed[:3]}
    try:
        server.wait("/healthz")  # open; /readyz is not
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/readyz").status_code == 401
            assert http.get("/readyz", headers={"Authorization": f"Bearer {PREDICT_KEY}"}).status_code == 200
            r = http.post("/v1/candles", json=push)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            r = http.post("/v1/candles", json=push, headers={"Authorization": f"Bearer {WRONG_KEY}"})
            assert r.status_code == 401 and r.json()["error"] == "invalid API key"
            r = http.post("/v1/candles", json=push, headers={"Authorization": f"Bearer {PREDICT_KEY}"})
            assert r.status_code == 403 and r.json()["required_scope"] == "stream"
            r = http.post("/v1/candles", json=push, headers={"Authorization": f"Bearer {STREAM_KEY}"})
            assert r.status_code == 200 and r.json()["accepted"] == 3
            r = http.post(
                "/v1/predict",
                content=_window_body(feed),
                headers={"Authorization": f"Bearer {PREDICT_KEY}", "content-type": "application/json"},
            )
            assert r.status_code == 200 and r.json()["version"] == "local"
            metrics = http.get("/metrics", headers={"Authorization": f"Bearer {PREDICT_KEY}"}).text
            assert 'kairos_requests_rejected_total{reason="unauthenticated"} 3.0' in metrics
            assert 'kairos_requests_rejected_total{reason="forbidden"} 1.0' in metrics

        ws = server.url.replace("http://", "ws://") + "/v1/stream"
        for url, headers, status in (
            (ws, {}, 401),
            (f"{ws}?token={WRONG_KEY}", {}, 401),
            (ws, {"Authorization": f"Bearer {PREDICT_KEY}"}, 403),
        ):
            with connect(url, additional_headers=headers, open_timeout=10) as c:
                assert json.loads(c.recv(timeout=10))["status"] == status
                with pytest.raises(ConnectionClosed) as e:
                    c.recv(timeout=10)
                assert e.value.rcvd.code == 1008
        for url, headers in (
            (f"{ws}?token={STREAM_KEY}", {}),
            (ws, {"Authorization": f"Bearer {STREAM_KEY}"}),
        ):
            with connect(url, additional_headers=headers, open_timeout=10) as c:
                c.send(json.dumps({"symbol": SYMBOL, "candle": feed[3 + len(headers)]}))
                assert json.loads(c.recv(timeout=10))["type"] == "warming_up"
    finally:
        assert server.stop() == 0
    log = server.log_text()
    assert "API auth on: 2 key(s) (feeder, reader); open without a key: /healthz" in log
    assert "WebSocket /v1/stream" in log, "uvicorn logged the handshakes (debug level)"
    for key in (STREAM_KEY, PREDICT_KEY, WRONG_KEY):
        assert key not in log and key[7:25] not in log


def test_overload_gets_429_at_once_and_accepted_latency_stays_bounded(tmp_path, bundle, feed):
    """16 clients (4x what the server admits) post as fast as they can, retrying a 429 at once.

    The clients use `http.client` (keep-alive, ~50 µs of Python a request): with httpx's heavier
    client the latencies measured are mostly the clients' own GIL contention on this 2-core box."""
    import http.client

    limit, clients, seconds = 4, 16, 8.0
    server = ServingProcess(
        tmp_path,
        ["--bundle", str(bundle)],
        f"routing:\n  mode: champion_only\napi:\n  max_in_flight: {limit}\n",
    )
    body = _window_body(feed)
    headers = {"content-type": "application/json"}

    def post(conn: http.client.HTTPConnection) -> tuple[int, float, str | None]:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0, r.getheader("retry-after")

    try:
        server.wait()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        unloaded = [post(conn) for _ in range(105)]
        conn.close()
        assert {s for s, _, _ in unloaded} == {200}
        unloaded_s = [t for _, t, _ in unloaded[5:]]  # connection and caches warm

        results: list[tuple[int, float, str | None]] = []  # (status, seconds, Retry-After)
        errors: list[str] = []
        start = threading.Barrier(clients)
        deadline: list[float] = []

        def hammer() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            start.wait()
            while time.perf_counter() < deadline[0]:
                try:
                    results.append(post(conn))
                except (OSError, http.client.HTTPException) as e:
                    errors.append(repr(e))
                    conn.close()
            conn.close()

        deadline.append(time.perf_counter() + seconds)
        threads = [threading.Thread(target=hammer) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        rejected_metric = server.metric('kairos_requests_rejected_total{reason="overload"}')
    finally:
        assert server.stop() == 0

    assert not errors, errors[:3]
    statuses = {s for s, _, _ in results}
    assert statuses <= {200, 429, 503}, statuses
    ok = [t for s, t, _ in results if s == 200]
    shed = [(t, ra) for s, t, ra in results if s in (429, 503)]
    assert ok and shed, "4x the capacity must both serve and shed"
    assert all(ra is not None and ra.isdigit() and int(ra) >= 1 for _, ra in shed), (
        "every 429 has Retry-After"
    )
    assert rejected_metric == len(shed)
    base_p99, ok_p99, shed_p99 = _p(unloaded_s, 99), _p(ok, 99), _p([t for t, _ in shed], 99)
    print(
        f"\noverload: unloaded p50 {_p(unloaded_s, 50) * 1e3:.1f} ms p99 {base_p99 * 1e3:.1f} ms; "
        f"{clients} clients x {seconds:.0f} s, max_in_flight {limit}: {len(ok)} x 200 "
        f"(p50 {_p(ok, 50) * 1e3:.1f} ms, p99 {ok_p99 * 1e3:.1f} ms), {len(shed)} x 429 "
        f"(p50 {_p([t for t, _ in shed], 50) * 1e3:.2f} ms, p99 {shed_p99 * 1e3:.1f} ms)"
    )
    # a refusal never waits for work: at most for the event loop to finish the admitted requests
    assert _p([t for t, _ in shed], 50) < _p(ok, 50)
    # generous on a shared 2-core box (the clients share it): the bound is what matters, not the figure
    assert ok_p99 < max(0.25, 10 * base_p99), (ok_p99, base_p99)


def test_sigterm_under_load_exits_0_and_loses_no_record(tmp_path, bundle, feed):
    clients = 8
    # no record is written before the shutdown: the batch never fills and its deadline is 10 minutes
    # away, so every record on disk afterwards was written by the lifespan shutdown's close
    server = ServingProcess(
        tmp_path,
        ["--bundle", str(bundle)],
        "routing:\n  mode: champion_only\n"
        f"prediction_log:\n  directory: {tmp_path / 'predlog'}\n  flush_every: 1000000\n"
        "  flush_interval_ms: 600000\n",
        log_level="info",
    )
    bodies = [_window_body(feed, shift) for shift in range(8)]
    outcomes: dict[str, tuple[int | str, float, float]] = {}  # request id → (status or error, sent, got)
    sigterm_at: list[float] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = 0
            while True:
                rid = f"c{n}-{i}"
                i += 1
                t0 = time.monotonic()
                try:
                    r = http.post(
                        "/v1/predict",
                        content=bodies[i % len(bodies)],
                        headers={"content-type": "application/json", "x-request-id": rid},
                    )
                    outcomes[rid] = (r.status_code, t0, time.monotonic())
                except httpx.HTTPError as e:
                    outcomes[rid] = (type(e).__name__, t0, time.monotonic())
                    if sigterm_at:  # the server is going away: stop at the first refusal after SIGTERM
                        return
                    time.sleep(0.05)

    try:
        server.wait()
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        sigterm_at.append(time.monotonic())
        server.sigterm()
        rc = server.proc.wait(60)
        for t in threads:
            t.join(30)
    finally:
        server.stop()

    assert rc == 0, server.log_text()[-2000:]
    logged = [r["request_id"] for r in server.records()]
    assert len(logged) == len(set(logged)), "a record written twice"
    ok = {rid for rid, (s, _, _) in outcomes.items() if s == 200}
    failed = {rid: s for rid, (s, _, _) in outcomes.items() if s != 200}
    in_flight_at_sigterm = [rid for rid in ok if outcomes[rid][1] < sigterm_at[0] < outcomes[rid][2]]
    lost = ok - set(logged)
    taken_then_failed = set(logged) & set(failed)
    print(
        f"\nSIGTERM: {len(ok)} x 200 ({len(in_flight_at_sigterm)} in flight at the signal), "
        f"{len(logged)} records on disk, {len(lost)} lost, refused after SIGTERM: "
        f"{sorted(set(failed.values()))}, exit {rc}"
    )
    assert len(ok) > 20
    assert in_flight_at_sigterm, "no request was in flight at the signal: nothing was drained"
    assert not lost, f"{len(lost)} answered requests have no record"
    assert set(logged) <= set(outcomes), "records of requests nobody sent"
    assert not taken_then_failed, (
        f"the server took these requests but the client got no 200: {taken_then_failed}"
    )
    # only connection-level refusals, all after the signal; never an HTTP error status
    assert all(isinstance(s, str) for s in failed.values()), failed
    assert all(outcomes[rid][1] >= sigterm_at[0] - 0.5 for rid in failed), "a failure before SIGTERM"
    log = server.log_text()
    assert f"prediction log closed: {len(logged)} records written, 0 dropped" in log
