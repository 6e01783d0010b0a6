"""Whale serving end to end: a real `python -m serving.server` process on loopback, a universe bundle,
candles replayed through `POST /v1/candles`, a real WebSocket client on `/v1/alerts`, a real webhook
receiver (http.server in a thread), and a dead webhook that must not slow predictions.

Bundles and candles: `tests/fixtures/whale.py` (a volume spike of `SPIKE[level]` at a chosen candle
raises an alert of that level at exactly that candle).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.fixtures.bundles import feature_spec
from tests.fixtures.servers import free_port, wait_until
from tests.fixtures.whale import SPIKE, candles, iso, whale_bundle

REPO = Path(__file__).resolve().parents[2]
NAME = "whale-PUMPS-1m"
A, B, ADDED = "BRDBTC", "MDABTC", "XYZBTC"
WARM = feature_spec("core18").warmup

pytestmark = pytest.mark.slow


class Receiver:
    """Webhook receiver on loopback: records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Server:
    """`python -m serving.server --bundle DIR` with a serving.yaml of its own, on a free port."""

    def __init__(self, tmp: Path, bundle: Path, config: str):
        tmp.mkdir(parents=True, exist_ok=True)
        self.predlog = tmp / "predlog"
        cfg = tmp / "serving.yaml"
        cfg.write_text(config + f"prediction_log:\n  directory: {self.predlog}\n  flush_interval_ms: 20\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "KAIROS_HOME": str(tmp / "home"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        self.log_path = tmp / "serve.log"
        self._log = open(self.log_path, "w")
        args = [
            "--bundle",
            str(bundle),
            "--port",
            str(self.port),
            "--config",
            str(cfg),
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.server", *args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait(self) -> Server:
        wait_until(f"{self.url}/readyz", self.proc, 90, self.log_path)
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()

    def metric(self, line_start: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        return 0.0


def _post(http: httpx.Client, symbol: str, batch: list[dict]) -> dict:
    r = http.post("/v1/candles", json={"symbol": symbol, "candles": batch})
    assert r.status_code == 200, r.text
    return r.json()


def _alerts(ws, n: int, timeout: float = 10.0) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        assert msg["type"] in ("alert", "subscribed"), msg
        if msg["type"] == "alert":
            out.append(msg)
    return out


def test_replayed_candles_raise_alerts_on_websocket_webhook_metrics_and_log(tmp_path):
    from websockets.sync.client import connect

    receiver = Receiver()
    config = (
        "routing:\n  mode: champion_only\n"
        f"universes:\n  PUMPS:\n    add_symbols: [{ADDED}]\n"
        f"alerts:\n  webhook_url: {receiver.url}\n  min_level: 2\n"
    )
    server = Server(tmp_path / "s", whale_bundle(tmp_path / "bundle", symbols=(A, B)), config)
    spikes = {A: (WARM + 10, 4), B: (WARM + 15, 2), ADDED: (WARM + 20, 3)}
    series = {
        s: candles(WARM + 30, seed=i, spikes={at: SPIKE[lvl]})
        for i, (s, (at, lvl)) in enumerate(spikes.items())
    }
    try:
        server.wait()
        ws_url = server.url.replace("http://", "ws://") + "/v1/alerts"
        with (
            connect(ws_url, open_timeout=10) as every,
            connect(f"{ws_url}?symbols={A},{ADDED}&min_level=3", open_timeout=10) as picky,
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            assert json.loads(every.recv(timeout=10))["type"] == "subscribed"
            ack = json.loads(picky.recv(timeout=10))
            assert ack == {"type": "subscribed", "symbols": [A, ADDED], "min_level": 3, "not_served": []}
            for s, cs in series.items():
                assert _post(http, s, cs[: WARM - 1])["warmup_remaining"] == 1
            for i in range(WARM - 1, WARM + 30):  # live replay: one closed candle per request
                for s, cs in series.items():
                    p = _post(http, s, [cs[i]])["prediction"]
                    at, lvl = spikes[s]
                    assert p["extras"]["threat_level"] == (lvl if i == at else 1.0), (s, i, p)
                    assert ("alert" in p) == (i == at)
            got = _alerts(every, 3)
            assert [(m["symbol"], m["level"], m["open_time"]) for m in got] == [
                (s, lvl, iso(series[s][at]["open_time"])) for s, (at, lvl) in spikes.items()
            ]
            first = got[0]
            assert set(first) == {
                "type",
                "symbol",
                "interval",
                "open_time",
                "probability",
                "anomaly_score",
                "level",
                "model",
                "version",
                "request_id",
                "top_features",
            }
            assert (first["model"], first["version"], first["interval"]) == (NAME, "local", "1m")
            assert 0.99 < first["probability"] < 1 and 10 < first["anomaly_score"] <= 15
            assert first["top_features"][0] == {
                "name": "volume_sma_ratio",
                "deviation": first["anomaly_score"],
            }
            assert [(m["symbol"], m["level"]) for m in _alerts(picky, 2)] == [(A, 4), (ADDED, 3)]
        deadline = time.monotonic() + 10
        while len(receiver.bodies) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        hooks = sorted(receiver.bodies, key=lambda b: b["open_time"])
        assert [{k: v for k, v in h.items()} for h in hooks] == [
            {k: v for k, v in m.items() if k != "type"} for m in got
        ]
        assert server.metric(f'kairos_alerts_total{{level="4",model="{NAME}"}}') == 1.0
        assert server.metric("kairos_alert_webhook_delivered_total") == 3.0
        assert server.metric("kairos_alert_webhook_failures_total") == 0.0
    finally:
        server.stop()
        receiver.close()
    records = [
        json.loads(line)
        for f in sorted((server.predlog / NAME).glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    alerted = sorted((r["symbol"], r["alert"]["level"], r["open_time"]) for r in records if "alert" in r)
    assert alerted == sorted((s, lvl, series[s][at]["open_time"]) for s, (at, lvl) in spikes.items())
    assert all("extras" in r and len(r["top_features"]) == 3 for r in records)


def test_dead_webhook_does_not_slow_predictions_and_its_failures_are_counted(tmp_path):
    """Every prediction raises an alert (threshold below any value); one server has no webhook, the other
    a webhook on a port nothing listens on. Requests alternate between the two, so the box's noise hits
    both alike; the dead webhook's p99 must stay within 3x (or +5 ms) of the other's."""
    always = (-1.0, 1e6, 2e6, 3e6)  # level 2 at every candle
    bundle = whale_bundle(tmp_path / "bundle", thresholds=always)
    base_cfg = "routing:\n  mode: champion_only\n"
    dead_url = f"http://127.0.0.1:{free_port()}/nobody-here"
    dead_cfg = base_cfg + (
        f"alerts:\n  webhook_url: {dead_url}\n  timeout_s: 0.5\n  retries: 3\n  backoff_s: 0.05\n  queue_size: 50\n"
    )
    servers = {
        "base": Server(tmp_path / "base", bundle, base_cfg),
        "dead": Server(tmp_path / "dead", bundle, dead_cfg),
    }
    n = 300
    feed = candles(WARM + n, seed=11)
    lat: dict[str, list[float]] = {"base": [], "dead": []}
    clients = {}
    try:
        for s in servers.values():
            s.wait()
        clients = {k: httpx.Client(base_url=s.url, timeout=30) for k, s in servers.items()}
        for c in clients.values():
            assert _post(c, A, feed[: WARM - 1])["warmup_remaining"] == 1
            for cd in feed[WARM - 1 : WARM + 19]:  # warm the connection and the code paths
                _post(c, A, [cd])
        for i in range(WARM + 19, WARM + n):
            for k in ("base", "dead") if i % 2 else ("dead", "base"):
                t0 = time.perf_counter()
                p = _post(clients[k], A, [feed[i]])["prediction"]
                lat[k].append(time.perf_counter() - t0)
                assert p["alert"]["level"] == 2
        p99 = {k: sorted(v)[int(0.99 * len(v))] for k, v in lat.items()}
        p50 = {k: sorted(v)[len(v) // 2] for k, v in lat.items()}
        assert p99["dead"] <= max(3 * p99["base"], p99["base"] + 0.005), (p50, p99)
        dead = servers["dead"]
        deadline = time.monotonic() + 15
        while dead.metric("kairos_alert_webhook_failures_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dead.metric("kairos_alert_webhook_failures_total") >= 1
        assert dead.metric('kairos_alerts_dropped_total{sink="webhook"}') > 0  # 300 alerts, a queue of 50
        assert dead.metric("kairos_alert_webhook_delivered_total") == 0
        for s in servers.values():
            assert s.metric(f'kairos_alerts_total{{level="2",model="{NAME}"}}') == n + 1  # every prediction
    finally:
        for c in clients.values():
            c.close()
        for s in servers.values():
            s.stop()
    ms = {k: (round(p50[k] * 1e3, 2), round(p99[k] * 1e3, 2)) for k in p50}
    print(f"request latency (p50 ms, p99 ms): {ms}")
