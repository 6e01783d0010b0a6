"""Whale serving in-process: universe routing (one model, many symbols, one stream each), multi-output
bundles (extras, top features), alerts (WebSocket subscriptions, webhook, metrics, prediction log).

Bundles and candles: `tests/fixtures/whale.py` (threat level = 1 + #(volume_sma_ratio > [3, 6, 10, 15]),
so a volume spike of `SPIKE[level]` at a chosen candle raises an alert of that level there).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from pipelines.contracts.errors import ConfigError
from serving.alerts import AlertHub, Subscription
from serving.app import create_app
from serving.config import AlertsConfig, RoutingConfig, RuntimeConfig, ServingConfig, UniverseConfig
from serving.metrics import ServingMetrics
from serving.predictor import Predictor, UnknownSymbol
from serving.runtime import load_model
from serving.schemas import Candle
from serving.state import ServingState
from tests.fixtures.bundles import feature_spec, linear_bundle
from tests.fixtures.whale import SPIKE, candles, iso, whale_bundle

WARM = feature_spec("core18").warmup
NAME = "whale-PUMPS-1m"
A, B, ADDED = "BRDBTC", "MDABTC", "XYZBTC"
RT = RuntimeConfig(warmup_runs=2)


def record(c: dict, symbol: str) -> dict:
    return Candle(**c).to_record(symbol, "1m")


@pytest.fixture()
def served(tmp_path):
    cfg = ServingConfig(
        universes={"PUMPS": UniverseConfig(add_symbols=(ADDED,))},
        routing=RoutingConfig(mode="champion_only"),
    )
    state = ServingState(cfg, predlog_dir=tmp_path / "predlog")
    state.add_bundle(whale_bundle(tmp_path / "whale"), "champion", version="3")
    with TestClient(create_app(state)) as c:
        yield c, state, tmp_path / "predlog"


def post(c, symbol, batch, **kw):
    r = c.post("/v1/candles", json={"symbol": symbol, "candles": batch, **kw})
    assert r.status_code == 200, r.text
    return r.json()


# ---- config -------------------------------------------------------------------------------------
def test_config_blocks_parse_and_refuse_unknown_keys(tmp_path):
    from serving.config import load_serving_config

    p = tmp_path / "serving.yaml"
    p.write_text(
        "universes:\n  PUMPS:\n    add_symbols: [XYZBTC]\n"
        "alerts:\n  webhook_url: http://127.0.0.1:9/hook\n  min_level: 3\n  retries: 1\n"
    )
    cfg = load_serving_config(p)
    assert cfg.universes["PUMPS"].add_symbols == ("XYZBTC",)
    assert (cfg.alerts.min_level, cfg.alerts.retries, cfg.alerts.queue_size) == (3, 1, 1000)
    for bad in (
        "universes:\n  PUMPS:\n    add_symbol: [XYZBTC]\n",
        "alerts:\n  webhook: http://x\n",
        "alerts:\n  webhook_url: ftp://x\n",
        "alerts:\n  min_level: 7\n",
    ):
        p.write_text(bad)
        with pytest.raises(ConfigError) as e:
            load_serving_config(p)
        assert any(w in str(e.value) for w in ("add_symbol", "webhook", "min_level")), str(e.value)
    # the repository's config parses
    from pathlib import Path

    repo_cfg = load_serving_config(Path(__file__).resolve().parents[2] / "configs" / "serving.yaml")
    assert repo_cfg.alerts.webhook_url is None and repo_cfg.alerts.min_level == 2


# ---- universe routing ---------------------------------------------------------------------------
def test_universe_symbols_each_have_their_own_stream(served):
    c, state, _ = served
    m = c.get("/v1/models").json()["models"][0]
    assert (m["name"], m["universe"], m["symbols"]) == (NAME, "PUMPS", [A, B, ADDED])
    assert m["loaded"]["champion"]["extra_outputs"] == ["anomaly_score", "threat_level", "feature_deviation"]
    sa, sb = candles(WARM + 40, seed=1), candles(WARM + 40, seed=2, price=0.3)
    # A's candles do not move B's state
    assert post(c, A, sa[: WARM - 1])["warmup_remaining"] == 1
    assert post(c, B, sb[:1])["warmup_remaining"] == WARM - 1
    assert state.slots[NAME].predictor.warmup_left(ADDED) == WARM
    post(c, B, sb[1 : WARM - 1])
    got = {A: [], B: []}
    for i in range(WARM - 1, WARM + 40):  # interleaved, one candle per request
        for sym, series in ((A, sa), (B, sb)):
            p = post(c, sym, [series[i]])["prediction"]
            assert p["symbol"] == sym and p["open_time"] == series[i]["open_time"] and p["model"] == NAME
            got[sym].append(p["extras"]["anomaly_score"])
    # each stream equals the stateless answer on its own symbol's window (nothing of the other leaks in)
    for sym, series in ((A, sa), (B, sb)):
        r = c.post("/v1/predict", json={"symbol": sym, "candles": series[-WARM - 5 :]})
        assert r.status_code == 200, r.text
        assert r.json()["extras"]["anomaly_score"] == pytest.approx(got[sym][-1], rel=1e-6)
    assert got[A] != got[B]
    # a symbol added by configuration, without retraining
    sx = candles(WARM + 1, seed=3)
    assert post(c, ADDED, sx)["prediction"]["symbol"] == ADDED
    # outside the universe: the unknown-symbol error
    r = c.post("/v1/candles", json={"symbol": "NOPEBTC", "candles": sx[:1]})
    assert r.status_code == 404 and "unknown symbol 'NOPEBTC'" in r.json()["error"]
    r = c.post("/v1/predict", json={"symbol": "NOPEBTC", "model": NAME, "candles": sx})
    assert r.status_code == 404 and "unknown symbol" in r.json()["error"], r.text
    # resetting one symbol's stream leaves the others alone
    r = c.delete(f"/v1/streams/{B}")
    assert r.status_code == 200 and r.json()["warmup_remaining"] == WARM
    assert post(c, A, [candles(WARM + 41, seed=1)[-1]])["prediction"] is not None


def test_universe_champion_swap_keeps_warm_streams_and_follows_the_new_universe(tmp_path):
    v1 = load_model(whale_bundle(tmp_path / "v1", symbols=(A, B)), RT, version="1")
    v2 = load_model(whale_bundle(tmp_path / "v2", symbols=(A, "NEWBTC")), RT, version="2")
    pred = Predictor(v1, universes={"PUMPS": UniverseConfig(add_symbols=(ADDED,))})
    assert pred.symbols == (A, B, ADDED)
    for c in candles(WARM, seed=1):
        pred.update(record(c, A))
    assert pred.warmup_left(A) == 0
    pred.set_model("champion", v2)  # the universe moves with the champion: B out, NEWBTC in
    assert pred.symbols == (A, "NEWBTC", ADDED) and pred.warmup_left(A) == 0
    assert pred.warmup_left("NEWBTC") == WARM
    nxt = candles(WARM + 1, seed=1)[-1]
    assert pred.update(record(nxt, A)).version == "2"
    with pytest.raises(UnknownSymbol, match="unknown symbol 'MDABTC'"):
        pred.update(record(nxt, B))
    # a single-symbol model cannot replace a universe one (and the reverse)
    single = load_model(whale_bundle(tmp_path / "s", universe=None, symbols=("PUMPS",)), RT)
    with pytest.raises(Exception, match="single-symbol model"):
        pred.set_model("challenger", single)


# ---- outputs, alerts in the answer and the log ----------------------------------------------------
def test_whale_outputs_and_alert_in_answer_and_prediction_log(served):
    c, state, logdir = served
    spike_at = WARM + 10
    series = candles(WARM + 20, seed=4, spikes={spike_at: SPIKE[4]})
    post(c, A, series[:spike_at])
    p = post(c, A, [series[spike_at]])["prediction"]
    assert p["extras"]["threat_level"] == 4.0 and p["extras"]["anomaly_score"] > 10
    assert p["horizons"] == [
        {"horizon": 15, "value": pytest.approx(p["horizons"][0]["value"]), "confidence": None}
    ]
    assert p["top_features"][0] == {"name": "volume_sma_ratio", "deviation": p["extras"]["anomaly_score"]}
    assert len(p["top_features"]) == 3
    assert p["alert"] == {"level": 4, "model": NAME, "version": "3"}
    quiet = post(c, A, [series[spike_at + 1]])["prediction"]
    assert "alert" not in quiet and quiet["extras"]["threat_level"] == 1.0
    metrics = c.get("/metrics").text
    assert 'kairos_alerts_total{level="4",model="whale-PUMPS-1m"} 1.0' in metrics
    state.log.close()
    state.log.start()
    recs = [
        json.loads(x) for f in sorted((logdir / NAME).glob("*.jsonl")) for x in f.read_text().splitlines()
    ]
    at = {r["open_time"]: r for r in recs}
    rec = at[series[spike_at]["open_time"]]
    assert rec["alert"] == {"level": 4, "model": NAME, "version": "3"}
    assert rec["extras"]["threat_level"] == 4.0 and rec["top_features"][0]["name"] == "volume_sma_ratio"
    assert rec["symbol"] == A and "alert" not in at[series[spike_at + 1]["open_time"]]
    # the contract's reader still reads the log (old and new fields), as the review does
    from pipelines.contracts.predlog import FIELDS, read_prediction_log

    df = read_prediction_log(logdir, NAME)
    assert list(df.columns)[: len(FIELDS)] == FIELDS and len(df) == len(recs)
    row = df[df["open_time"] == series[spike_at]["open_time"]].iloc[0]
    assert row["alert"]["level"] == 4 and row["extras"]["threat_level"] == 4.0  # the optional fields are read


def test_alert_once_per_candle_even_after_a_reset_replay_or_a_window(served):
    c, state, _ = served
    spike_at = WARM + 5
    series = candles(WARM + 8, seed=5, spikes={spike_at: SPIKE[3]})
    post(c, A, series)
    assert state.alerts.emitted == 1
    c.delete(f"/v1/streams/{A}")
    post(c, A, series)  # the same history again: no second page for the same candle
    r = c.post("/v1/predict", json={"symbol": A, "candles": series[: spike_at + 1]})
    assert r.json()["extras"]["threat_level"] == 3.0 and "alert" not in r.json()
    assert state.alerts.emitted == 1


def test_split_mode_alerts_follow_the_champion(tmp_path):
    champ = load_model(whale_bundle(tmp_path / "c"), RT, version="7")
    chall = load_model(whale_bundle(tmp_path / "k", thresholds=(1e6, 2e6, 3e6, 4e6)), RT, version="8")
    events: list[dict] = []
    pred = Predictor(
        champ, chall, RoutingConfig(mode="split", challenger_percent=100), alert_sink=events.append
    )
    spike_at = WARM + 3
    out = [pred.update(record(c, B)) for c in candles(WARM + 5, seed=6, spikes={spike_at: SPIKE[2]})]
    p = out[spike_at]
    assert (p.arm, p.version, p.extras["threat_level"]) == ("challenger", "8", 1.0)
    assert p.alert == {"level": 2, "model": NAME, "version": "7"}
    assert [(e["version"], e["level"], e["symbol"]) for e in events] == [("7", 2, B)]
    assert all(q.alert is None for q in out[spike_at + 1 :])


# ---- /v1/alerts -----------------------------------------------------------------------------------
def _next(ws, kind="alert"):
    while True:
        msg = json.loads(ws.receive_text())
        if msg["type"] == kind:
            return msg
        assert msg["type"] in ("subscribed", "alert"), msg


def test_alerts_websocket_subscriptions_filter_by_symbol_and_level(served):
    c, state, _ = served
    a_at, b_at, a2_at = WARM + 5, WARM + 10, WARM + 40
    sa = candles(WARM + 45, seed=7, spikes={a_at: SPIKE[3], a2_at: SPIKE[4]})
    sb = candles(WARM + 45, seed=8, spikes={b_at: SPIKE[5]})
    with (
        c.websocket_connect("/v1/alerts") as every,
        c.websocket_connect(f"/v1/alerts?symbols={B}") as only_b,
        c.websocket_connect("/v1/alerts?min_level=5") as level5,
        c.websocket_connect("/v1/alerts") as by_msg,
    ):
        assert json.loads(every.receive_text()) == {
            "type": "subscribed",
            "symbols": None,
            "min_level": 2,
            "not_served": [],
        }
        assert json.loads(only_b.receive_text())["symbols"] == [B]
        assert json.loads(level5.receive_text())["min_level"] == 5
        json.loads(by_msg.receive_text())
        by_msg.send_text("{nope")
        assert "subscription refused" in json.loads(by_msg.receive_text())["error"]
        by_msg.send_text(json.dumps({"symbols": [A, "ZZZBTC"], "min_level": 3}))
        ack = json.loads(by_msg.receive_text())
        assert ack == {
            "type": "subscribed",
            "symbols": [A, "ZZZBTC"],
            "min_level": 3,
            "not_served": ["ZZZBTC"],
        }
        for i in range(WARM + 45):
            post(c, A, [sa[i]])
            post(c, B, [sb[i]])
        first = _next(every)
        assert first == {
            "type": "alert",
            "symbol": A,
            "interval": "1m",
            "open_time": iso(sa[a_at]["open_time"]),
            "probability": pytest.approx(first["probability"]),
            "anomaly_score": pytest.approx(first["anomaly_score"]),
            "level": 3,
            "model": NAME,
            "version": "3",
            "request_id": first["request_id"],
            "top_features": first["top_features"],
        }
        assert first["top_features"][0]["name"] == "volume_sma_ratio" and len(first["top_features"]) == 3
        assert 0.5 < first["probability"] < 1 and 6 < first["anomaly_score"] <= 10
        assert [(m["symbol"], m["level"]) for m in (_next(every), _next(every))] == [(B, 5), (A, 4)]
        b = _next(only_b)
        assert (b["symbol"], b["level"], b["open_time"]) == (B, 5, iso(sb[b_at]["open_time"]))
        m5 = _next(level5)
        assert (m5["symbol"], m5["level"]) == (B, 5)  # A's levels 3 and 4 were below its min_level
        got = [(m["symbol"], m["level"]) for m in (_next(by_msg), _next(by_msg))]
        assert got == [(A, 3), (A, 4)]  # B's level-5 alert in between was filtered out
        metrics = c.get("/metrics").text
        assert "kairos_alert_subscribers 4.0" in metrics
    assert 'kairos_alerts_total{level="5",model="whale-PUMPS-1m"} 1.0' in metrics
    with c.websocket_connect("/v1/alerts?min_level=9") as bad:
        assert "min_level" in json.loads(bad.receive_text())["error"]


def test_slow_subscriber_drops_its_oldest_alerts_and_is_told():
    metrics = ServingMetrics()
    hub = AlertHub(AlertsConfig(ws_queue=3), metrics)

    async def scenario():
        s = hub.subscribe(Subscription(None, 2), asyncio.get_running_loop())
        for i in range(5):
            hub.emit({"symbol": A, "level": 2, "model": NAME, "open_time": str(i)})
        first = json.loads(await s.get())
        rest = [json.loads(await s.get()) for _ in range(3)]
        # from another thread: scheduled onto the loop, never touching the buffer directly
        t = threading.Thread(
            target=hub.emit, args=({"symbol": B, "level": 3, "model": NAME, "open_time": "x"},)
        )
        t.start()
        t.join()
        last = json.loads(await asyncio.wait_for(s.get(), 2))
        hub.unsubscribe(s)
        return first, rest, last

    first, rest, last = asyncio.run(scenario())
    assert first == {"type": "dropped", "count": 2, "total": 2}
    assert [m["open_time"] for m in rest] == ["2", "3", "4"]
    assert last["symbol"] == B
    assert 'kairos_alerts_dropped_total{sink="websocket"} 2.0' in metrics.render().decode()


# ---- webhook ------------------------------------------------------------------------------------
class _Receiver:
    """A loopback HTTP server that records POSTed JSON; `status` and `delay` set its answer."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.bodies: list[dict] = []
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.hits += 1
                body = self.rfile.read(int(self.headers["content-length"]))
                time.sleep(delay)
                if status == 200:
                    outer.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_webhook_delivers_retries_and_counts_failures_and_drops():
    ok, failing, slow = _Receiver(), _Receiver(status=500), _Receiver(delay=0.5)
    metrics = ServingMetrics()
    event = {"symbol": A, "level": 4, "model": NAME, "version": "3", "open_time": "2023-08-01T00:00:00Z"}
    hubs = []
    try:
        hub = AlertHub(AlertsConfig(webhook_url=ok.url, webhook_min_level=3), metrics).start()
        hubs.append(hub)
        hub.emit(event)
        hub.emit({**event, "level": 2})  # below the webhook's level: subscribers only
        assert _wait(lambda: hub.delivered == 1) and ok.bodies == [event]
        time.sleep(0.2)
        assert ok.hits == 1

        cfg = AlertsConfig(webhook_url=failing.url, retries=2, backoff_s=0.01)
        bad = AlertHub(cfg, metrics).start()
        hubs.append(bad)
        bad.emit(event)
        assert _wait(lambda: bad.failures == 1) and failing.hits == 3  # 1 + 2 retries, then counted

        full = AlertHub(AlertsConfig(webhook_url=slow.url, queue_size=2, retries=0), metrics).start()
        hubs.append(full)
        t0 = time.perf_counter()
        for _ in range(10):
            full.emit(event)  # the first is in flight, 2 wait, the rest are dropped
        assert time.perf_counter() - t0 < 0.05  # never waits for the endpoint
        assert 6 <= full.dropped_webhook <= 8
        text = metrics.render().decode()
        assert "kairos_alert_webhook_failures_total 1.0" in text
        assert f'kairos_alerts_dropped_total{{sink="webhook"}} {float(full.dropped_webhook)}' in text
    finally:
        for h in hubs:
            h.close()
        for r in (ok, failing, slow):
            r.close()


def test_returns_bundles_answer_exactly_as_before(tmp_path):
    """No extras, no top_features, no alert keys for a bundle without those outputs; confidence still read."""
    state = ServingState(ServingConfig(), predlog_dir=tmp_path / "pl")
    model = state.add_bundle(linear_bundle(tmp_path / "b", bias=1e-3, confidence=True), "champion")
    assert (model.extra_names, model.has_deviation, model.raises_alerts, model.universe) == (
        (),
        False,
        False,
        None,
    )
    pred = state.by_symbol("FILUSDT")
    assert pred.symbols == ("FILUSDT",) and pred.universe_name is None
    from serving.app import prediction_out

    for c in candles(feature_spec().warmup, seed=9):
        p = pred.update(record(c, "FILUSDT"))
    out = prediction_out(p)
    assert set(out) == {
        "request_id",
        "symbol",
        "interval",
        "open_time",
        "model",
        "version",
        "arm",
        "latency_us",
        "horizons",
    }
    assert out["horizons"][0]["confidence"] is not None
    state.close()


WHALE_PROCESS = r"""
import json, sys
from fastapi.testclient import TestClient
from serving.app import create_app
from serving.config import AlertsConfig, ServingConfig, UniverseConfig
from serving.state import ServingState
from tests.fixtures.whale import SPIKE, candles

cfg = ServingConfig(alerts=AlertsConfig(webhook_url=sys.argv[3], retries=0),
                    universes={"PUMPS": UniverseConfig(add_symbols=("XYZBTC",))})
state = ServingState(cfg, predlog_dir=sys.argv[2])
state.add_bundle(sys.argv[1], "champion", version="1")
series = candles(600, seed=1, spikes={590: SPIKE[3]})
with TestClient(create_app(state)) as c, c.websocket_connect("/v1/alerts") as ws:
    ws.receive_text()
    for sym in ("BRDBTC", "XYZBTC"):
        r = c.post("/v1/candles", json={"symbol": sym, "candles": series})
        assert r.status_code == 200 and r.json()["prediction"]["extras"], r.text
        assert json.loads(ws.receive_text())["symbol"] == sym
    r = c.post("/v1/predict", json={"symbol": "MDABTC", "candles": series})
    assert r.status_code == 200 and r.json()["top_features"], r.text
HEAVY = ("pandas", "pyarrow", "mlflow", "torch", "great_expectations", "lightgbm", "sklearn", "scipy", "prefect")
print(json.dumps([m for m in HEAVY if m in sys.modules]))
"""


def test_whale_serving_process_imports_no_heavy_library(tmp_path):
    """A universe whale bundle with alerts (WebSocket + a webhook) served and answered in a fresh process:
    no pandas/pyarrow/mlflow/torch/GX/LightGBM/sklearn/scipy/prefect (see test_serving_runtime)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.fixtures.servers import free_port

    repo = Path(__file__).resolve().parents[2]
    args = [
        sys.executable,
        "-c",
        WHALE_PROCESS,
        str(whale_bundle(tmp_path / "w")),
        str(tmp_path / "pl"),
        f"http://127.0.0.1:{free_port()}/dead",
    ]
    r = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
