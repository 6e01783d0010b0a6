"""schemathesis against the app's own OpenAPI, in-process (ASGI): ≥ 1,000 generated cases (schema-valid
and schema-violating), 0 server errors; plus hypothesis mutations of a real candle window."""

from __future__ import annotations

import math
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from serving.app import create_app
from serving.config import ServingConfig
from serving.state import ServingState
from tests.conftest import FIL_FILES
from tests.fixtures.bundles import API_CANDLE_FIELDS, api_candle, candle_records, feature_spec, linear_bundle

CASES = 170  # per (operation with inputs, mode): 3 operations x 2 modes x 170 = 1,020 cases (+4 GETs)
FAST = dict(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    d = tmp_path_factory.mktemp("schemathesis")
    s = ServingState(ServingConfig(), predlog_dir=d / "predlog")
    s.add_bundle(linear_bundle(d / "champ", bias=1e-3), "champion", version="1")
    s.add_bundle(linear_bundle(d / "chall", bias=2e-3), "challenger", version="2")
    s.start()
    yield s
    s.close()


def test_generated_requests_never_get_a_server_error(state):
    app = create_app(state)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in ops} >= {
        "POST /v1/predict",
        "POST /v1/candles",
        "DELETE /v1/streams/{symbol}",
        "GET /v1/models",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    count = {"cases": 0, "4xx": 0}
    for op in ops:
        # GET endpoints take no input: one case covers them, and nothing can violate their schema
        has_input = op.method.upper() != "GET"
        for mode in (
            (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,)
        ):

            @settings(max_examples=CASES if has_input else 3, **FAST)
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call()
                case.validate_response(response, checks=[not_a_server_error])
                count["cases"] += 1
                count["4xx"] += 400 <= response.status_code < 500

            t0 = time.perf_counter()
            run()
            print(
                f"{op.method.upper()} {op.path} {mode.value}: {count['cases']} cases so far, {time.perf_counter() - t0:.1f}s"
            )
    assert count["cases"] >= 1000, count
    assert count["4xx"] > count["cases"] // 4, "the generator should mostly be probing bad input"


_NUMERIC = list(API_CANDLE_FIELDS)
_WEIRD = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.text(max_size=30),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.sampled_from([0, -1, 1e308, 1e-308]),
)


def test_mutated_real_windows_never_get_a_server_error(state):
    from fastapi.testclient import TestClient

    from pipelines.sources.binance_files import read_klines

    window = [
        api_candle(r)
        for r in candle_records(read_klines(FIL_FILES[0], "FILUSDT").iloc[: feature_spec().warmup + 2])
    ]
    client = TestClient(create_app(state))

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        i=st.integers(0, len(window) - 1),
        field=st.sampled_from(_NUMERIC),
        value=_WEIRD,
        endpoint=st.sampled_from(["/v1/predict", "/v1/candles"]),
    )
    def run(i, field, value, endpoint):
        w = [dict(c) for c in window]
        w[i][field] = value
        r = client.post(endpoint, json={"symbol": "FILUSDT", "candles": w})
        assert r.status_code < 500, (field, value, r.text)
        if r.status_code != 200:
            assert r.json()["error"], r.text
        else:
            body = r.json()
            p = body if endpoint == "/v1/predict" else body["prediction"]
            assert p is None or all(math.isfinite(h["log_return"]) for h in p["horizons"])
        client.delete("/v1/streams/FILUSDT")

    run()
