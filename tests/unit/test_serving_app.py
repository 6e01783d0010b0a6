"""The FastAPI app in-process: endpoints, WebSocket, metrics, readiness, and bad input → 4xx naming it."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.config import ApiConfig, RoutingConfig, ServingConfig
from serving.state import ServingState
from tests.conftest import FIL_FILES
from tests.fixtures.bundles import api_candle, candle_records, feature_spec, linear_bundle

SYMBOL = "FILUSDT"


@pytest.fixture(scope="module")
def candles():
    from pipelines.sources.binance_files import read_klines

    return [api_candle(r) for r in candle_records(read_klines(FIL_FILES[0], SYMBOL).iloc[:1500])]


@pytest.fixture()
def client(tmp_path):
    cfg = ServingConfig(api=ApiConfig(max_body_bytes=400_000), routing=RoutingConfig(mode="shadow"))
    state = ServingState(cfg, predlog_dir=tmp_path / "predlog")
    state.add_bundle(linear_bundle(tmp_path / "champ", bias=1e-3), "champion", version="4")
    state.add_bundle(linear_bundle(tmp_path / "chall", bias=-1e-3), "challenger", version="5")
    with TestClient(create_app(state)) as c:
        yield c


def test_predict_window_returns_champion_prediction(client, candles):
    warm = feature_spec().warmup
    r = client.post("/v1/predict", json={"symbol": SYMBOL, "candles": candles[: warm + 1]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["version"], body["arm"], body["open_time"]) == ("4", "champion", candles[warm]["open_time"])
    assert [h["horizon"] for h in body["horizons"]] == [1, 2, 3, 4, 5]
    assert body["horizons"][0]["log_return"] == pytest.approx(1e-3) and body["horizons"][0]["direction"] == 1


def test_candles_stream_warms_then_predicts_and_websocket_continues(client, candles):
    warm = feature_spec().warmup
    r = client.post("/v1/candles", json={"symbol": SYMBOL, "candles": candles[: warm - 1]})
    assert r.json() == {"symbol": SYMBOL, "accepted": warm - 1, "warmup_remaining": 1, "prediction": None}
    r = client.post(
        "/v1/candles",
        json={"symbol": SYMBOL, "candles": [candles[warm - 1]]},
        headers={"x-request-id": "abc"},
    )
    p = r.json()["prediction"]
    assert p["request_id"] == "abc" and p["open_time"] == candles[warm - 1]["open_time"]
    with client.websocket_connect("/v1/stream") as ws:
        for c in candles[warm : warm + 5]:
            ws.send_text(json.dumps({"symbol": SYMBOL, "candle": c}))
            msg = json.loads(ws.receive_text())
            assert msg["type"] == "prediction" and msg["open_time"] == c["open_time"]
        ws.send_text(json.dumps({"symbol": SYMBOL, "candle": candles[warm]}))  # duplicate
        assert "duplicate" in json.loads(ws.receive_text())["error"]
        ws.send_text("{not json")
        assert json.loads(ws.receive_text())["type"] == "error"
        ws.send_text(json.dumps({"symbol": "NOPE", "candle": candles[0]}))
        assert "unknown symbol" in json.loads(ws.receive_text())["error"]
    metrics = client.get("/metrics").text
    # shadow mode: both arms scored every prediction (1 + 5 each)
    assert (
        'kairos_predictions_total{arm="champion",model="returns-FILUSDT-1m",served="true",version="4"} 6.0'
        in metrics
    )
    assert (
        'kairos_predictions_total{arm="challenger",model="returns-FILUSDT-1m",served="false",version="5"} 6.0'
        in metrics
    )
    assert "kairos_prediction_latency_seconds_bucket" in metrics


def test_models_health_ready(client):
    m = client.get("/v1/models").json()
    assert m["ready"] is True
    loaded = m["models"][0]["loaded"]
    assert loaded["champion"]["version"] == "4" and loaded["challenger"]["version"] == "5"
    assert loaded["champion"]["providers"] == ["CPUExecutionProvider"]
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_readyz_is_503_without_champion(tmp_path):
    state = ServingState(ServingConfig(), predlog_dir=tmp_path / "pl")
    state.slot("returns-FILUSDT-1m")  # watched, nothing loaded yet
    with TestClient(create_app(state)) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def _window(candles, n=None):
    return [dict(c) for c in candles[: n or feature_spec().warmup + 1]]


def _with(candles, i, **changes):
    w = _window(candles)
    w[i] = {**w[i], **changes}
    return w


BAD = [
    # (name, body builder, expected status, words the message must contain)
    (
        "missing field",
        lambda c: {"symbol": SYMBOL, "candles": [{k: v for k, v in c[0].items() if k != "close"}]},
        422,
        ["close", "required"],
    ),
    (
        "wrong type",
        lambda c: {"symbol": SYMBOL, "candles": _with(c, 3, volume="lots")},
        422,
        ["candles.3.volume"],
    ),
    ("extra field", lambda c: {"symbol": SYMBOL, "candles": _with(c, 0, colour="red")}, 422, ["colour"]),
    (
        "negative price",
        lambda c: {"symbol": SYMBOL, "candles": _with(c, 1, low=-1.0)},
        422,
        ["candles.1.low", "greater than 0"],
    ),
    ("ohlc", lambda c: {"symbol": SYMBOL, "candles": _with(c, 2, high=0.0001)}, 422, ["candles.2", "OHLC"]),
    (
        "non-increasing",
        lambda c: {"symbol": SYMBOL, "candles": _with(c, 5, open_time=c[4]["open_time"])},
        422,
        ["candles.5.open_time", "strictly increase"],
    ),
    ("gap", lambda c: {"symbol": SYMBOL, "candles": _window(c)[:10] + _window(c)[11:]}, 422, ["gap"]),
    (
        "misaligned",
        lambda c: {"symbol": SYMBOL, "candles": _with(c, 0, open_time=c[0]["open_time"] + 7)},
        422,
        ["aligned"],
    ),
    (
        "seconds not ms",
        lambda c: {"symbol": SYMBOL, "candles": _with(c, 0, open_time=1690848000)},
        422,
        ["outside 2000..2100"],
    ),
    (
        "bad iso",
        lambda c: {"symbol": SYMBOL, "candles": _with(c, 0, open_time="yesterday")},
        422,
        ["ISO-8601"],
    ),
    ("too short", lambda c: {"symbol": SYMBOL, "candles": _window(c, 20)}, 422, ["needs at least"]),
    ("empty", lambda c: {"symbol": SYMBOL, "candles": []}, 422, ["candles"]),
    (
        "unknown symbol",
        lambda c: {"symbol": "DOGEUSDT", "candles": _window(c, 20)},
        404,
        ["unknown symbol", "DOGEUSDT"],
    ),
    (
        "unknown model",
        lambda c: {"symbol": SYMBOL, "model": "returns-X-1m", "candles": _window(c, 20)},
        404,
        ["unknown model"],
    ),
    (
        "wrong interval",
        lambda c: {"symbol": SYMBOL, "interval": "5m", "candles": _window(c, 20)},
        422,
        ["interval"],
    ),
]


@pytest.mark.parametrize("name, build, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_4xx_naming_the_problem(client, candles, name, build, status, words):
    r = client.post("/v1/predict", json=build(candles))
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    for w in words:
        assert w.lower() in msg.lower(), msg


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_refused(client, candles, token):
    body = json.dumps({"symbol": SYMBOL, "candles": _window(candles, 3)}).replace(
        f'"close": {candles[1]["close"]}', f'"close": {token}', 1
    )
    assert token in body
    r = client.post("/v1/candles", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "candles.1.close" in r.json()["error"] and "finite" in r.json()["error"]


def test_oversized_body_and_garbage(client, candles):
    r = client.post("/v1/predict", json={"symbol": SYMBOL, "candles": candles * 2})
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    r = client.post("/v1/predict", content=b"\x00\xff{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "parsing the body" in r.json()["error"]
    r = client.post("/v1/candles", content=b"[]", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_stream_gap_is_409_and_reset_resyncs(client, candles):
    client.post("/v1/candles", json={"symbol": SYMBOL, "candles": candles[:10]})
    r = client.post("/v1/candles", json={"symbol": SYMBOL, "candles": [candles[12]]})
    assert (
        r.status_code == 409
        and "gap of 2 candle(s)" in r.json()["error"]
        and "DELETE /v1/streams" in r.json()["error"]
    )
    assert client.delete(f"/v1/streams/{SYMBOL}").json()["reset"] is True
    r = client.post("/v1/candles", json={"symbol": SYMBOL, "candles": [candles[12]]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert client.delete("/v1/streams/NOPE").status_code == 404
