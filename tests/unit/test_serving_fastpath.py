"""The serving hot path's shortcuts give the values of the paths they replace, and the batch endpoint.

- core27's one-candle kernel (`core27._kernel_one`, also core18's) == the general kernel, bit for bit;
- `LoadedModel.run_row` (one row through a preallocated IO binding, `serving.runtime.RowRunner`) ==
  `session.run`, for single- and multi-output graphs, withheld horizons, and when the binding is busy;
- `Predictor.update` gives the same predictions with and without both shortcuts;
- `POST /v1/candles/batch` (`Predictor.update_many`: the newest candles of a model's items scored in one
  run per arm) answers per item exactly what `POST /v1/candles` answers one item at a time, logs the same
  records, and confines an item's error (unknown symbol, gap, bad time) to that item;
- `kairos serve` replaces its process with `python -OO -m serving.server` (same pid, none of the CLI's imports).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

import serving.runtime as runtime
from pipelines.features import StreamingFeatures, core27
from serving.app import create_app
from serving.config import RoutingConfig, RuntimeConfig, ServingConfig
from serving.predictor import Predictor
from serving.runtime import load_model
from serving.state import ServingState
from tests.conftest import FIL_FILES, REPO
from tests.fixtures.bundles import api_candle, candle_records, feature_spec, lightgbm_bundle, linear_bundle
from tests.fixtures.servers import free_port, wait_until
from tests.fixtures.whale import candles as whale_candles
from tests.fixtures.whale import whale_bundle

RT = RuntimeConfig(warmup_runs=2)


@pytest.fixture(scope="module")
def fil(shared_data):
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT").iloc[:9000].reset_index(drop=True)


@pytest.fixture(scope="module")
def fil_records(fil):
    return candle_records(fil)


def _stream(name: str, records: list[dict], one_candle: bool) -> np.ndarray:
    saved, core27.ONE_CANDLE = core27.ONE_CANDLE, one_candle
    try:
        sf = StreamingFeatures(name, 60_000)
        return np.array([sf.update(r) for r in records])
    finally:
        core27.ONE_CANDLE = saved


@pytest.mark.parametrize("name", ["core27", "core18"])
def test_one_candle_kernel_is_the_general_kernel(fil_records, name):
    """9,000 real candles (two ring wraps, 70 EMA/RSI block ends): every feature, bit for bit."""
    fast, general = _stream(name, fil_records, True), _stream(name, fil_records, False)
    np.testing.assert_array_equal(fast, general)
    assert np.isfinite(fast[feature_spec(name).warmup :]).all()


def test_one_candle_kernel_on_flat_and_empty_candles():
    """Unchanged closes, high == low, zero volume (every guarded ratio's default) and missing spreads."""
    rng = np.random.default_rng(1)
    n = 1500
    close = 2.0 + 0.001 * np.cumsum(rng.choice([-1, 0, 0, 1], n))
    volume = np.where(rng.random(n) < 0.3, 0.0, rng.exponential(10.0, n))
    volume[600:700] = 0.0
    flat = rng.random(n) < 0.2
    recs = []
    for i in range(n):
        o = close[i - 1] if i else close[0]
        hi, lo = (close[i], close[i]) if flat[i] else (max(o, close[i]) + 0.001, min(o, close[i]) - 0.001)
        recs.append(
            {
                "open_time": 1_700_000_000_000 + 60_000 * i,
                "open": o if not flat[i] else close[i],
                "high": hi,
                "low": lo,
                "close": close[i],
                "volume": volume[i],
                "quote_asset_volume": volume[i] * close[i],
                "number_of_trades": 3,
                "taker_buy_base_asset_volume": volume[i] / 3,
                "taker_buy_quote_asset_volume": volume[i] * close[i] / 3,
                "spread_bps": None if i % 3 else 1.5,
            }
        )
    np.testing.assert_array_equal(_stream("core27", recs, True), _stream("core27", recs, False))


@pytest.fixture(scope="module")
def lgb_dir(tmp_path_factory, fil):
    return lightgbm_bundle(tmp_path_factory.mktemp("lgb") / "b", fil.iloc[:4000], n_estimators=20)


def _assert_run_row_is_session_run(model, xs: np.ndarray) -> None:
    assert model.row_runner is not None
    for i in range(len(xs)):
        x = xs[i : i + 1]
        r, c, rest = model.run_row(x)
        R, C, REST = model.run_all(x)
        assert r == R[0].tolist() and (c is None) == (C is None)
        if c is not None:
            assert c == C[0].tolist()
        assert len(rest) == len(REST) and all(np.array_equal(a, b) for a, b in zip(rest, REST))
    # busy binding (another thread runs it): session.run answers, same values
    with model.row_runner.lock:
        assert model.run_row(xs[:1])[0] == model.run_all(xs[:1])[0][0].tolist()


def test_row_runner_matches_session_run(lgb_dir, tmp_path):
    rng = np.random.default_rng(0)
    lgb = load_model(lgb_dir, RT)
    _assert_run_row_is_session_run(lgb, rng.normal(0, 1, (300, lgb.n_features)).astype(np.float32))
    conf = load_model(linear_bundle(tmp_path / "lin", bias=1e-3, weight=0.1, confidence=True), RT)
    _assert_run_row_is_session_run(conf, rng.normal(0, 1, (50, conf.n_features)).astype(np.float32))
    whale = load_model(whale_bundle(tmp_path / "whale"), RT)  # extras + feature_deviation
    _assert_run_row_is_session_run(whale, rng.normal(3, 5, (50, whale.n_features)).astype(np.float32))
    seq = load_model(linear_bundle(tmp_path / "seq", bias=1e-3, weight=0.1, seq_len=4), RT)  # (1, T, F)
    _assert_run_row_is_session_run(seq, rng.normal(0, 1, (50, 4, seq.n_features)).astype(np.float32))


def test_row_runner_keeps_only_the_served_horizons(tmp_path):
    d = linear_bundle(tmp_path / "w", bias=2e-3, weight=0.01, confidence=True)
    m = json.loads((d / "manifest.json").read_text())
    m["extra"] = {"below_baselines": {"2": "below reversal", "4": "below reversal"}}
    (d / "manifest.json").write_text(json.dumps(m))
    model = load_model(d, RT)
    assert model.horizons == [1, 3, 5]
    x = np.random.default_rng(2).normal(0, 1, (1, model.n_features)).astype(np.float32)
    r, c, _ = model.run_row(x)
    R, C, _ = model.run_all(x)
    assert r == R[0].tolist() and c == C[0].tolist() and len(r) == 3


def test_predictor_update_is_the_same_with_and_without_the_shortcuts(lgb_dir, fil_records, monkeypatch):
    def predictions(fast: bool) -> list[tuple]:
        monkeypatch.setattr(runtime, "ROW_BINDING", fast)
        monkeypatch.setattr(core27, "ONE_CANDLE", fast)
        model = load_model(lgb_dir, RT)
        assert (model.row_runner is not None) == fast
        pred = Predictor(model)
        out = [pred.update(r) for r in fil_records[:1500]]
        return [p.values for p in out if p is not None]

    fast, slow = predictions(True), predictions(False)
    assert len(fast) == 1500 - feature_spec().warmup + 1 and fast == slow


# ---- POST /v1/candles/batch ----------------------------------------------------------------------
UNIVERSE = ("BRDBTC", "MDABTC", "XYZBTC")
WARM = feature_spec("core18").warmup


def _state(tmp_path, mode: str) -> ServingState:
    from serving.config import UniverseConfig

    cfg = ServingConfig(
        routing=RoutingConfig(mode=mode, challenger_percent=50.0),
        universes={"PUMPS": UniverseConfig(add_symbols=(UNIVERSE[2],))},
    )
    state = ServingState(cfg, predlog_dir=tmp_path / "predlog")
    state.add_bundle(whale_bundle(tmp_path / "w1", symbols=UNIVERSE[:2]), "champion", version="1")
    state.add_bundle(
        whale_bundle(tmp_path / "w2", symbols=UNIVERSE[:2], thresholds=(2.0, 4.0, 8.0, 12.0)),
        "challenger",
        version="2",
    )
    state.add_bundle(linear_bundle(tmp_path / "lin", bias=1e-3, weight=1e-4), "champion", version="7")
    return state


def _series() -> dict[str, list[dict]]:
    spikes = {WARM + 3: 650.0, WARM + 9: 20_000.0}
    out = {s: whale_candles(WARM + 12, seed=i, spikes=spikes) for i, s in enumerate(UNIVERSE)}
    out["FILUSDT"] = whale_candles(WARM + 12, seed=9)
    return out


def _strip(answer: dict) -> dict:
    """An answer without what differs between two runs (request ids, latencies)."""
    a = json.loads(json.dumps(answer))
    if a.get("prediction"):
        a["prediction"].pop("request_id")
        a["prediction"].pop("latency_us")
    return a


def _log_records(d) -> list[dict]:
    recs = [json.loads(x) for f in sorted(d.rglob("*.jsonl")) for x in f.read_text().splitlines()]
    for r in recs:
        for k in ("request_id", "time", "latency_us"):
            r.pop(k)
    return sorted(recs, key=lambda r: (r["model"], r["symbol"], r["open_time"], r["arm"]))


@pytest.mark.parametrize("mode", ["shadow", "split"])
def test_batch_answers_what_candles_answers_one_by_one(tmp_path, mode):
    series, symbols = _series(), [*UNIVERSE, "FILUSDT"]
    one, many = _state(tmp_path / "one", mode), _state(tmp_path / "many", mode)
    with TestClient(create_app(one)) as c1, TestClient(create_app(many)) as c2:
        # warm-up in one item per symbol (several candles each), then one candle per symbol per request
        steps = [(0, WARM - 1)] + [(k, k + 1) for k in range(WARM - 1, WARM + 12)]
        alerts = 0
        for lo, hi in steps:
            want = []
            for s in symbols:
                r = c1.post("/v1/candles", json={"symbol": s, "candles": series[s][lo:hi]})
                assert r.status_code == 200, r.text
                want.append({"status": 200, **r.json()})
            body = [{"symbol": s, "candles": series[s][lo:hi]} for s in symbols]
            r = c2.post("/v1/candles/batch", json=body)
            assert r.status_code == 200, r.text
            got = r.json()["results"]
            assert [_strip(g) for g in got] == [_strip(w) for w in want]
            alerts += sum("alert" in (g["prediction"] or {}) for g in got)
        assert got[0]["prediction"] is not None and alerts >= 3  # scored, and alerts were raised
    assert _log_records(tmp_path / "one" / "predlog") == _log_records(tmp_path / "many" / "predlog")


def test_batch_confines_errors_to_their_items(tmp_path):
    series = _series()
    with TestClient(create_app(_state(tmp_path, "shadow"))) as c:
        body = [
            {"symbol": "BRDBTC", "candles": series["BRDBTC"][:WARM]},
            {"symbol": "NOPE", "candles": series["MDABTC"][:2]},
            {"symbol": "MDABTC", "candles": series["MDABTC"][:3] + series["MDABTC"][4:6]},  # a gap
            {"symbol": "XYZBTC", "candles": [series["XYZBTC"][1], series["XYZBTC"][0]]},  # not increasing
        ]
        r = c.post("/v1/candles/batch", json=body)
        assert r.status_code == 200, r.text
        ok, unknown, gap, order = r.json()["results"]
        assert ok["status"] == 200 and ok["accepted"] == WARM and ok["prediction"] is not None
        assert unknown["status"] == 404 and "unknown symbol" in unknown["error"]
        assert gap["status"] == 409 and gap["accepted"] == 3 and "gap" in gap["error"]
        assert order["status"] == 422 and "increase" in order["error"]
        metrics = c.get("/metrics").text
        assert 'kairos_request_errors_total{endpoint="/v1/candles/batch",status="409"} 1.0' in metrics
        assert c.post("/v1/candles/batch", json=[]).status_code == 422
        assert c.post("/v1/candles/batch", json={"symbol": "BRDBTC"}).status_code == 422


# ---- kairos serve --------------------------------------------------------------------------------
@pytest.mark.slow
def test_kairos_serve_replaces_itself_with_the_serving_process(tmp_path):
    """`python -m flows.cli serve` (what the `kairos` script runs) execs `python -OO -m serving.server` with
    the same arguments: the pid answers /readyz and runs the server, not the CLI."""
    import httpx

    bundle = linear_bundle(tmp_path / "b", bias=1e-3)
    port = free_port()
    cfg = tmp_path / "serving.yaml"
    cfg.write_text("prediction_log:\n  enabled: false\n")
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
            + ["--config", str(cfg), "--log-level", "warning"],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(f"http://127.0.0.1:{port}/readyz", proc, 120, log)
            cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read().split(b"\0")
            assert cmdline[1:4] == [b"-OO", b"-m", b"serving.server"] and b"--bundle" in cmdline, cmdline
            maps = open(f"/proc/{proc.pid}/maps").read()  # Prefect's C extensions: the CLI maps them
            assert "/site-packages/pendulum/" not in maps and "/site-packages/rpds/" not in maps
            warm = [api_candle(r) for r in _fil_records_for_cli()]
            r = httpx.post(f"http://127.0.0.1:{port}/v1/candles", json={"symbol": "FILUSDT", "candles": warm})
            assert r.status_code == 200 and r.json()["prediction"] is not None, r.text
        finally:
            proc.terminate()
            proc.wait(15)


def _fil_records_for_cli() -> list[dict]:
    from pipelines.sources.binance_files import read_klines

    return candle_records(read_klines(FIL_FILES[0], "FILUSDT").iloc[: feature_spec().warmup + 1])


def test_fast_prediction_constructor_is_the_dataclass():
    from dataclasses import replace

    from serving.predictor import Prediction, _new_prediction

    args = ("id", "FILUSDT", "1m", 1, "m", "3", "champion", (1, 2), (0.1, -0.2), None, 12.5, True, "returns")
    fast, slow = _new_prediction(*args), Prediction(*args)
    assert fast == slow and repr(fast) == repr(slow) and fast.alert is None and fast.directions == (1, -1)
    assert replace(fast, alert={"level": 2}) == replace(slow, alert={"level": 2})
    with pytest.raises(AttributeError):
        fast.arm = "challenger"  # still frozen
