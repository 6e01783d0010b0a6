"""Bearer API keys and scopes (serving/auth.py) on the app in-process: 401/403/200 per route and scope,
WebSockets refused with 1008, open paths per config, key parsing, and no key ever in a log or an answer."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from pipelines.contracts.errors import ConfigError
from serving.app import create_app
from serving.auth import (
    ROUTE_SCOPES,
    KeyRing,
    load_keyring,
    main,
    new_key,
    parse_env_keys,
    required_scope,
)
from serving.config import ApiConfig, AuthConfig, RoutingConfig, ServingConfig
from serving.state import ServingState
from tests.conftest import FIL_FILES
from tests.fixtures.bundles import api_candle, candle_records, feature_spec, linear_bundle

SYMBOL = "FILUSDT"
# high-entropy-looking keys, distinct enough that a substring of one never matches another
PREDICT_KEY = "pk_" + "A1b2C3d4" * 5
STREAM_KEY = "sk_" + "Z9y8X7w6" * 5
ALERTS_KEY = "ak_" + "Q5r4S3t2" * 5
ADMIN_KEY = "dk_" + "M0n1O2p3" * 5
WRONG_KEY = "xx_" + "J7k8L9m0" * 5
ALL_KEYS = (PREDICT_KEY, STREAM_KEY, ALERTS_KEY, ADMIN_KEY, WRONG_KEY)
ENV = (
    f"reader:{PREDICT_KEY}:predict;feeder:{STREAM_KEY}:stream,predict\n"
    f"pager:{ALERTS_KEY}:alerts  ops:{ADMIN_KEY}:admin"
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def candles():
    from pipelines.sources.binance_files import read_klines

    warm = feature_spec().warmup
    return [api_candle(r) for r in candle_records(read_klines(FIL_FILES[0], SYMBOL).iloc[: warm + 10])]


def make_client(tmp_path, env: str = ENV, open_paths=("/healthz", "/readyz", "/metrics")) -> TestClient:
    cfg = ServingConfig(
        api=ApiConfig(auth=AuthConfig(open_paths=open_paths)), routing=RoutingConfig(mode="champion_only")
    )
    state = ServingState(cfg, predlog_dir=tmp_path / "predlog")
    state.add_bundle(linear_bundle(tmp_path / "champ", bias=1e-3), "champion", version="1")
    keys = load_keyring(cfg.api.auth, {"KAIROS_API_KEYS": env})
    return TestClient(create_app(state, keys))


@pytest.fixture()
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


# ---- key parsing ---------------------------------------------------------------------------------


def test_env_keys_are_hashed_and_scoped():
    ring = KeyRing(parse_env_keys(ENV))
    assert len(ring) == 4 and ring.names == ["feeder", "ops", "pager", "reader"]
    feeder = ring.lookup(STREAM_KEY)
    assert feeder.name == "feeder" and feeder.scopes == {"stream", "predict"}
    assert feeder.digest == hashlib.sha256(STREAM_KEY.encode()).digest()
    assert ring.lookup(WRONG_KEY) is None and ring.lookup("") is None
    assert ring.lookup(ADMIN_KEY).allows("stream") and not ring.lookup(PREDICT_KEY).allows("stream")
    assert STREAM_KEY not in repr(feeder) and "digest" not in repr(feeder)


@pytest.mark.parametrize(
    "env, problem",
    [
        (f"reader:{PREDICT_KEY}", "expected name:key:scope"),
        ("reader:short-key-123:predict", "at least 32"),
        (f"reader:{PREDICT_KEY}:predict,trade", "unknown scope(s) ['trade']"),
        (f"bad/name:{PREDICT_KEY}:predict", "name must be"),
        (f"a:{PREDICT_KEY}:predict b:{PREDICT_KEY}:stream", "same key"),
        (f"a:{PREDICT_KEY}:predict a:{STREAM_KEY}:stream", "used twice"),
    ],
)
def test_bad_env_entries_are_refused_without_echoing_the_key(env, problem):
    with pytest.raises(ConfigError) as e:
        load_keyring(AuthConfig(), {"KAIROS_API_KEYS": env})
    assert problem in str(e.value)
    for key in (PREDICT_KEY, STREAM_KEY, "short-key-123"):
        assert key not in str(e.value)


def test_keys_file_holds_digests_only(tmp_path):
    f = tmp_path / "keys.yaml"
    f.write_text(
        "keys:\n"
        f"  - {{name: scraper, sha256: {hashlib.sha256(ALERTS_KEY.encode()).hexdigest()}, scopes: []}}\n"
        f"  - {{name: ops, sha256: {hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}, scopes: [admin]}}\n"
    )
    ring = load_keyring(AuthConfig(keys_file=f), {"KAIROS_API_KEYS": f"feeder:{STREAM_KEY}:stream"})
    assert ring.names == ["feeder", "ops", "scraper"]
    assert ring.lookup(ALERTS_KEY).scopes == frozenset() and ring.lookup(ADMIN_KEY).allows("alerts")
    f.write_text("keys:\n  - {name: x, sha256: not-a-digest, scopes: [predict]}\n")
    with pytest.raises(ConfigError, match="sha256"):
        load_keyring(AuthConfig(keys_file=f), {})
    f.write_text("keys:\n  - {name: x, sha256: " + "a" * 64 + ", scopes: [trade]}\n")
    with pytest.raises(ConfigError, match="scopes"):
        load_keyring(AuthConfig(keys_file=f), {})


def test_no_keys_means_auth_off_unless_required():
    assert not load_keyring(AuthConfig(), {})
    assert not load_keyring(AuthConfig(), {"KAIROS_API_KEYS": "  \n"})
    with pytest.raises(ConfigError, match="api.auth.required"):
        load_keyring(AuthConfig(required=True), {})


def test_new_key_cli_makes_a_working_key(capsys):
    made = new_key("trader-1", ["predict", "stream"])
    assert len(made["key"]) >= 43
    ring = KeyRing(parse_env_keys(made["env"]))
    assert ring.lookup(made["key"]).scopes == {"predict", "stream"}
    assert hashlib.sha256(made["key"].encode()).hexdigest() in made["keys_file"]
    assert made["key"] not in made["keys_file"]
    assert main(["new", "ops", "admin"]) == 0
    assert "ops:" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown scope"):
        new_key("x", ["root"])


# ---- which route needs which scope -----------------------------------------------------------------


def test_every_route_has_a_deliberate_scope(tmp_path):
    app = create_app(ServingState(ServingConfig(), predlog_dir=tmp_path))
    expected = {
        ("http", "/v1/predict"): "predict",
        ("http", "/v1/candles"): "stream",
        ("http", "/v1/candles/batch"): "stream",
        ("http", "/v1/streams/{symbol}"): "stream",
        ("websocket", "/v1/stream"): "stream",
        ("websocket", "/v1/alerts"): "alerts",
        # any valid key (or open_paths)
        ("http", "/v1/models"): None,
        ("http", "/healthz"): None,
        ("http", "/readyz"): None,
        ("http", "/metrics"): None,
        ("http", "/openapi.json"): None,
        ("http", "/docs"): None,
        ("http", "/docs/oauth2-redirect"): None,
        ("http", "/redoc"): None,
    }
    routes = {("websocket" if "WebSocket" in type(r).__name__ else "http", r.path) for r in app.routes}
    unlisted = routes - set(expected)
    assert not unlisted, f"{unlisted}: a new route needs its scope in serving/auth.py ROUTE_SCOPES and here"
    assert ("http", "/v1/predict") in routes and ("websocket", "/v1/alerts") in routes
    for (kind, path), need in expected.items():
        assert required_scope(kind, path.replace("{symbol}", "FILUSDT")) == need, path
    assert set(ROUTE_SCOPES.values()) <= {"predict", "stream", "alerts"}


# ---- HTTP ----------------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_with_bearer_challenge(client, candles):
    body = {"symbol": SYMBOL, "candles": candles[:5]}
    r = client.post("/v1/candles", json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="kairos"'
    assert r.json() == {
        "error": "missing API key: send the header 'Authorization: Bearer <API key>'",
        "required_scope": "stream",
    }
    r = client.post("/v1/candles", json=body, headers=bearer(WRONG_KEY))
    assert r.status_code == 401 and r.json()["error"] == "invalid API key"
    assert r.headers["www-authenticate"] == 'Bearer realm="kairos", error="invalid_token"'
    r = client.post("/v1/candles", json=body, headers={"Authorization": f"Basic {STREAM_KEY}"})
    assert r.status_code == 401 and "Bearer <API key>" in r.json()["error"]
    r = client.get("/v1/models")
    assert r.status_code == 401 and "required_scope" not in r.json()
    for r in (client.post("/v1/candles", json=body, headers=bearer(k)) for k in ("", " ")):
        assert r.status_code == 401


def test_scopes_decide_403_or_200(client, candles):
    warm = feature_spec().warmup
    window = {"symbol": SYMBOL, "candles": candles[: warm + 1]}
    push = {"symbol": SYMBOL, "candles": candles[:5]}
    r = client.post("/v1/candles", json=push, headers=bearer(PREDICT_KEY))  # read-only key, write route
    assert r.status_code == 403
    assert r.json() == {
        "error": "API key 'reader' lacks scope 'stream', needed for POST /v1/candles",
        "required_scope": "stream",
    }
    assert (
        r.headers["www-authenticate"] == 'Bearer realm="kairos", error="insufficient_scope", scope="stream"'
    )
    assert client.delete(f"/v1/streams/{SYMBOL}", headers=bearer(PREDICT_KEY)).status_code == 403
    r = client.post("/v1/candles/batch", json=[push], headers=bearer(PREDICT_KEY))
    assert r.status_code == 403 and r.json()["required_scope"] == "stream"
    assert client.post("/v1/predict", json=window, headers=bearer(ALERTS_KEY)).status_code == 403

    r = client.post("/v1/predict", json=window, headers=bearer(PREDICT_KEY))
    assert r.status_code == 200 and r.json()["version"] == "1"
    r = client.post("/v1/candles", json=push, headers=bearer(STREAM_KEY))
    assert r.status_code == 200 and r.json()["accepted"] == 5
    assert client.delete(f"/v1/streams/{SYMBOL}", headers=bearer(STREAM_KEY)).json()["reset"] is True
    for key in ALL_KEYS[:4]:  # any valid key reads /v1/models
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    assert client.post("/v1/predict", json=window, headers=bearer(ADMIN_KEY)).status_code == 200
    assert client.post("/v1/candles", json=push, headers=bearer(ADMIN_KEY)).status_code == 200

    metrics = client.get("/metrics").text  # open by default
    assert 'kairos_requests_rejected_total{reason="forbidden"} 4.0' in metrics
    assert 'kairos_requests_rejected_total{reason="overload"} 0.0' in metrics


def test_open_paths_follow_the_config(tmp_path):
    with make_client(tmp_path / "a") as c:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200, path
        assert c.get("/openapi.json").status_code == 401
    with make_client(tmp_path / "b", open_paths=("/healthz",)) as c:
        assert c.get("/healthz").status_code == 200
        for path in ("/readyz", "/metrics"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=bearer(ALERTS_KEY)).status_code == 200, path  # any valid key
        assert (
            'kairos_requests_rejected_total{reason="unauthenticated"} 2.0'
            in c.get("/metrics", headers=bearer(PREDICT_KEY)).text
        )


def test_auth_is_off_without_keys_and_says_so(tmp_path, candles, caplog):
    caplog.set_level(logging.INFO, logger="kairos.serving")
    with make_client(tmp_path, env="") as c:
        assert c.post("/v1/candles", json={"symbol": SYMBOL, "candles": candles[:3]}).status_code == 200
        assert c.get("/v1/models").status_code == 200
        with c.websocket_connect("/v1/alerts?token=whatever&min_level=3") as ws:  # token ignored, stripped
            assert json.loads(ws.receive_text())["min_level"] == 3
    assert [r.getMessage() for r in caplog.records if "API auth" in r.getMessage()] == [
        "API auth off: no API key configured (KAIROS_API_KEYS or api.auth.keys_file); every route is open"
    ]


# ---- WebSockets ------------------------------------------------------------------------------------


def _refused(client: TestClient, url: str, headers: dict | None = None) -> tuple[dict, int]:
    with client.websocket_connect(url, headers=headers or {}) as ws:
        msg = json.loads(ws.receive_text())
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
    return msg, e.value.code


def test_websockets_refused_with_1008_or_accepted(client, candles):
    msg, code = _refused(client, "/v1/stream")
    assert code == 1008 and msg["type"] == "error" and msg["status"] == 401
    assert "?token=<API key>" in msg["error"]
    msg, code = _refused(client, f"/v1/stream?token={WRONG_KEY}")
    assert (code, msg["status"], msg["error"]) == (1008, 401, "invalid API key")
    msg, code = _refused(client, "/v1/stream", headers=bearer(PREDICT_KEY))
    assert (code, msg["status"], msg["required_scope"]) == (1008, 403, "stream")
    msg, code = _refused(client, f"/v1/alerts?token={STREAM_KEY}")
    assert (code, msg["status"], msg["required_scope"]) == (1008, 403, "alerts")

    with client.websocket_connect("/v1/stream", headers=bearer(STREAM_KEY)) as ws:
        ws.send_text(json.dumps({"symbol": SYMBOL, "candle": candles[0]}))
        assert json.loads(ws.receive_text())["type"] == "warming_up"
    with client.websocket_connect(f"/v1/stream?token={STREAM_KEY}") as ws:
        ws.send_text(json.dumps({"symbol": SYMBOL, "candle": candles[1]}))
        assert json.loads(ws.receive_text())["type"] == "warming_up"
    # the token is taken out of the query before the subscription reads it
    with client.websocket_connect(f"/v1/alerts?symbols={SYMBOL}&token={ALERTS_KEY}&min_level=4") as ws:
        ack = json.loads(ws.receive_text())
        assert ack == {"type": "subscribed", "symbols": [SYMBOL], "min_level": 4, "not_served": []}
    with client.websocket_connect("/v1/alerts", headers=bearer(ADMIN_KEY)) as ws:
        assert json.loads(ws.receive_text())["type"] == "subscribed"


# ---- secrecy -------------------------------------------------------------------------------------


def test_keys_never_reach_logs_or_answers(tmp_path, candles, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    answers = []
    with make_client(tmp_path) as c:
        warm = feature_spec().warmup
        window = {"symbol": SYMBOL, "candles": candles[: warm + 1]}
        for key in ALL_KEYS:
            for r in (
                c.post("/v1/predict", json=window, headers=bearer(key)),
                c.post("/v1/candles", json={"symbol": SYMBOL, "candles": candles[:2]}, headers=bearer(key)),
                c.get("/v1/models", headers=bearer(key)),
                c.get("/metrics", headers=bearer(key)),
                c.post(
                    "/v1/candles",
                    json={"symbol": SYMBOL, "candles": candles[:2]},
                    headers={"Authorization": key},
                ),
            ):
                answers.append(r.text + json.dumps(dict(r.headers)))
            for path in ("/v1/stream", "/v1/alerts"):
                with c.websocket_connect(f"{path}?token={key}") as ws:
                    if path == "/v1/stream":
                        ws.send_text(json.dumps({"symbol": SYMBOL, "candle": candles[0]}))
                    try:
                        answers.append(ws.receive_text())
                    except WebSocketDisconnect as e:
                        answers.append(str(e.reason))
    statuses = {a.split('"status": ')[1][:3] for a in answers if '"status": ' in a}
    assert statuses == {"401", "403"}, "the WebSocket refusals ran"
    text = caplog.text + "".join(answers)
    assert "API auth on: 4 key(s) (feeder, ops, pager, reader)" in caplog.text
    for key in ALL_KEYS:
        assert key not in text
        assert key[3:20] not in text  # not even part of one
        assert hashlib.sha256(key.encode()).hexdigest() not in text


def test_log_filter_redacts_keys_in_handshake_lines():
    """At debug level the WebSocket library logs handshake lines and headers before any middleware."""
    from serving.auth import RedactSecrets

    f = RedactSecrets()
    cases = [
        ("< GET %s HTTP/1.1", (f"/v1/stream?symbols=A&token={STREAM_KEY}&x=1",)),
        ("< %s: %s", ("Authorization", f"Bearer {ADMIN_KEY}")),
        ("< authorization: Basic %s", (PREDICT_KEY,)),
    ]
    for msg, args in cases:
        record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)
        assert f.filter(record)
        assert "[redacted]" in record.getMessage()
        assert not any(k in record.getMessage() for k in ALL_KEYS), record.getMessage()
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, *cases[0], None)
    f.filter(record)
    assert record.getMessage() == "< GET /v1/stream?symbols=A&token=[redacted]&x=1 HTTP/1.1"
    plain = logging.LogRecord("kairos", logging.INFO, __file__, 1, "served %d", (3,), None)
    assert f.filter(plain) and plain.getMessage() == "served 3" and plain.args == (3,)
