"""Bundles written before tasks existed (no `signed` in the outputs) still load, serve and say direction."""

from __future__ import annotations

import json

from pipelines.contracts.bundle import read_bundle
from tests.fixtures.bundles import linear_bundle


def _strip_signed(bundle_dir):
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text())
    for out in data["outputs"]:
        out.pop("signed", None)
    path.write_text(json.dumps(data))


def test_pre_task_manifest_reads_as_a_signed_returns_bundle(tmp_path):
    d = linear_bundle(tmp_path / "old", bias=1e-3)
    _strip_signed(d)
    _, manifest = read_bundle(d)
    assert manifest.task == "returns" and manifest.outputs[0].signed is None and manifest.signed


def test_pre_task_bundle_serves_log_return_and_direction(tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import load_serving_config
    from serving.server import build_state
    from tests.fixtures.bundles import api_candle, candle_records

    d = linear_bundle(tmp_path / "old", bias=1e-3)
    _strip_signed(d)
    import numpy as np
    import pandas as pd

    n = 700
    close = 5 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 1e-3, n)))
    candles = pd.DataFrame(
        {
            "symbol": "FILUSDT",
            "interval": "1m",
            "open_time": pd.date_range("2023-08-01", periods=n, freq="1min", tz="UTC"),
            "open": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": 10.0,
            "quote_asset_volume": 50.0,
            "number_of_trades": 5,
            "taker_buy_base_asset_volume": 5.0,
            "taker_buy_quote_asset_volume": 25.0,
        }
    )
    state = build_state(load_serving_config(None), [], [d])
    with TestClient(create_app(state)) as api:
        body = api.post(
            "/v1/candles",
            json={"symbol": "FILUSDT", "candles": [api_candle(r) for r in candle_records(candles)]},
        )
    assert body.status_code == 200, body.text
    h1 = body.json()["prediction"]["horizons"][0]
    assert h1["value"] == h1["log_return"] and h1["direction"] == 1
