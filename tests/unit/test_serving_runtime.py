"""Serving runtime: sessions, provider fallback, bad bundles, Predictor (stream, window, arms), routing."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipelines.contracts.errors import StreamError
from pipelines.contracts.predlog import read_prediction_log
from serving.config import RoutingConfig, RuntimeConfig
from serving.predictor import InputError, Predictor
from serving.predlog import PredictionLog
from serving.router import Router, bucket
from serving.runtime import ModelLoadError, choose_providers, load_model, session_options
from tests.conftest import FIL_FILES
from tests.fixtures.bundles import candle_records, feature_spec, lightgbm_bundle, linear_bundle

REPO = Path(__file__).resolve().parents[2]
RT = RuntimeConfig(warmup_runs=3)


@pytest.fixture(scope="module")
def candles():
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT").iloc[:8000].reset_index(drop=True)


@pytest.fixture(scope="module")
def records(candles):
    return candle_records(candles)


@pytest.fixture(scope="module")
def lgb_dir(tmp_path_factory, candles):
    # small on purpose (2 cores shared): 30 trees per horizon on 6,000 real candles
    return lightgbm_bundle(tmp_path_factory.mktemp("lgb") / "b", candles.iloc[:6000], n_estimators=30)


# ---- runtime -------------------------------------------------------------------------------------
def test_provider_fallback_logs_one_line_once_per_process(caplog, monkeypatch):
    import serving.runtime

    monkeypatch.setattr(serving.runtime, "_REPORTED_MISSING", set())
    wanted = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    with caplog.at_level(logging.WARNING, "kairos.serving"):
        got = choose_providers(wanted, available=["CPUExecutionProvider"])
        again = choose_providers(wanted, available=["CPUExecutionProvider"])  # every later session: silent
    assert got == again == ["CPUExecutionProvider"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert (
        "TensorrtExecutionProvider, CUDAExecutionProvider" in lines[0]
        and "using CPUExecutionProvider" in lines[0]
    )
    assert choose_providers(wanted, available=["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_session_options_follow_config():
    so = session_options(RuntimeConfig(intra_op_threads=1, inter_op_threads=1, allow_spinning=False))
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_horizons_below_the_naive_rules_in_walk_forward_are_withheld(tmp_path):
    import json

    d = linear_bundle(tmp_path / "b", bias=0.5, weight=0.01, confidence=True)
    man = json.loads((d / "manifest.json").read_text())
    man["extra"]["below_baselines"] = {"2": "h2: model accuracy 0.5010 vs always_up 0.5093", "4": "h4: ..."}
    (d / "manifest.json").write_text(json.dumps(man))
    x = np.random.default_rng(0).normal(size=(3, 27)).astype(np.float32)
    full = load_model(d, RT.model_copy(update={"withhold_below_baselines": False}))
    served = load_model(d, RT)
    assert full.horizons == [1, 2, 3, 4, 5] and full.withheld == ()
    assert served.horizons == [1, 3, 5] and served.withheld == (2, 4)
    (r_all, c_all), (r, c) = full.run(x), served.run(x)
    np.testing.assert_array_equal(r, r_all[:, [0, 2, 4]])
    np.testing.assert_array_equal(c, c_all[:, [0, 2, 4]])
    man["extra"]["below_baselines"] = {str(h): "" for h in (1, 2, 3, 4, 5)}
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelLoadError, match="below the task's best naive rule at every horizon"):
        load_model(d, RT)


def test_load_model_on_cpu_without_gpu(tmp_path):
    m = load_model(linear_bundle(tmp_path / "b", bias=0.5), RT, version="7")
    assert m.providers == ["CPUExecutionProvider"] and m.version == "7" and m.warmup_us > 0
    ret, conf = m.run(np.zeros((2, m.n_features), np.float32))
    assert ret.shape == (2, 5) and np.allclose(ret, 0.5) and conf is None


@pytest.mark.parametrize(
    "breakage, needle",
    [
        (lambda d: (d / "model.onnx").write_bytes(b"garbage"), "onnxruntime cannot load"),
        (lambda d: (d / "model.onnx").unlink(), "lacks model.onnx"),
        (lambda d: (d / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "extra.bin").write_bytes(b"x"), "not self-contained"),
        (
            lambda d: (d / "manifest.json").write_text(
                (d / "manifest.json").read_text().replace('"features"', '"x"')
            ),
            "do not match manifest input",
        ),
    ],
)
def test_bad_bundles_raise_model_load_error(tmp_path, breakage, needle):
    d = linear_bundle(tmp_path / "b")
    breakage(d)
    with pytest.raises(ModelLoadError, match=needle):
        load_model(d, RT)


def test_nan_model_fails_warm_up(tmp_path):
    d = linear_bundle(tmp_path / "b", bias=float("nan"))
    with pytest.raises(ModelLoadError, match="NaN"):
        load_model(d, RT)


# ---- Predictor -------------------------------------------------------------------------------------
def test_update_equals_batch_features_through_the_model(lgb_dir, candles, records):
    """Predictor.update (streaming features + session) == session on batch features, row by row."""
    from pipelines.features import compute_features

    model = load_model(lgb_dir, RT, version="1")
    pred = Predictor(model)
    warm = feature_spec().warmup
    start, stop = 6000, 6000 + warm + 300  # candles the model was not fitted on
    batch = compute_features(candles.iloc[start:stop], "core27")[list(model.manifest.feature_set.names)]
    expected, _ = model.run(batch.to_numpy(np.float32))
    got = [pred.update(r) for r in records[start:stop]]
    assert all(p is None for p in got[: warm - 1]) and all(p is not None for p in got[warm - 1 :])
    out = np.array([p.log_returns for p in got[warm - 1 :]])
    np.testing.assert_allclose(out, expected[warm - 1 :], rtol=0, atol=1e-7)
    assert len(set(map(tuple, out.round(9)))) > 10, "a real model gives varying predictions"
    p = got[-1]
    assert p.open_time == records[stop - 1]["open_time"] and p.arm == "champion" and p.version == "1"
    assert p.directions == tuple(int(np.sign(x)) for x in p.log_returns) and p.latency_us > 0


def test_predict_window_equals_stream(lgb_dir, records):
    model = load_model(lgb_dir, RT, version="1")
    warm = feature_spec().warmup
    window = records[100 : 100 + warm + 5]
    stream = Predictor(model)
    last = [stream.update(r) for r in window][-1]
    got = Predictor(model).predict(window)
    assert got.log_returns == pytest.approx(last.log_returns, abs=1e-9)
    with pytest.raises(InputError, match=f"needs at least {warm}"):
        Predictor(model).predict(window[: warm - 1])


def test_stream_rejects_duplicate_out_of_order_and_gap_without_corrupting_state(tmp_path, records):
    model = load_model(linear_bundle(tmp_path / "b", weight=1e-3), RT)
    ref, pred = Predictor(model), Predictor(model)
    for r in records[:600]:
        ref.update(r)
        pred.update(r)
    for bad, needle in [(records[599], "duplicate"), (records[598], "out-of-order"), (records[601], "gap")]:
        with pytest.raises(StreamError, match=needle):
            pred.update(bad)
    a, b = ref.update(records[600]), pred.update(records[600])
    assert a.log_returns == b.log_returns, "a rejected candle must leave the state unchanged"
    pred.reset()
    assert pred.warmup_remaining == feature_spec().warmup and pred.update(records[700]) is None


def test_sequence_model_reads_last_t_rows(tmp_path, records):
    model = load_model(linear_bundle(tmp_path / "b", weight=1.0, seq_len=4, confidence=True), RT)
    pred = Predictor(model)
    warm = feature_spec().warmup
    outs = [pred.update(r) for r in records[: warm + 5]]
    assert outs[warm + 1] is None and outs[warm + 2] is not None  # ready after warm-up + T - 1 candles
    p = outs[-1]
    assert p.confidence is not None and all(0.5 <= c <= 1 for c in p.confidence)


def test_shadow_mode_logs_both_arms_and_returns_champion(tmp_path, records):
    champ = load_model(linear_bundle(tmp_path / "c", bias=1e-3), RT, version="1")
    chall = load_model(linear_bundle(tmp_path / "d", bias=-2e-3), RT, version="2")
    log = PredictionLog(tmp_path / "log", flush_every=50, flush_interval_ms=20).start()
    pred = Predictor(champ, chall, RoutingConfig(mode="shadow"), log=log)
    warm = feature_spec().warmup
    served = [p for r in records[: warm + 99] if (p := pred.update(r, routing_key="client-a")) is not None]
    log.close()
    assert len(served) == 100 and {p.arm for p in served} == {"champion"}
    df = read_prediction_log(tmp_path / "log", champ.name)
    assert len(df) == 200
    per_request = df.groupby("request_id")["arm"].apply(frozenset)
    assert len(per_request) == 100 and set(per_request) == {frozenset({"champion", "challenger"})}
    ch = df[df.arm == "challenger"]
    assert (~ch.served).all() and ch.version.eq("2").all()
    assert ch.predictions.map(lambda v: v[0]).to_numpy() == pytest.approx(-2e-3, rel=1e-6)
    assert df.open_time.isin([r["open_time"] for r in records]).all()


def test_swap_is_atomic_and_checks_symbol(tmp_path, records):
    a = load_model(linear_bundle(tmp_path / "a", bias=1e-3), RT, version="1")
    b = load_model(linear_bundle(tmp_path / "b", bias=2e-3), RT, version="2")
    other = load_model(linear_bundle(tmp_path / "o", symbol="NEARUSDT"), RT, version="9")
    pred = Predictor(a, routing=RoutingConfig(mode="champion_only"))
    warm = feature_spec().warmup
    for r in records[:warm]:
        pred.update(r)
    pred.set_model("champion", b)
    p = pred.update(records[warm])
    assert (p.version, p.log_returns[0]) == ("2", pytest.approx(2e-3))
    with pytest.raises(InputError, match="NEARUSDT"):
        pred.set_model("challenger", other)


# ---- routing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [10.0, 50.0, 2.5])
def test_split_share_within_999_binomial_interval(percent):
    router = Router(RoutingConfig(mode="split", challenger_percent=percent))
    n = 10_000
    hits = sum(router.route(f"client-{i}", True).served == "challenger" for i in range(n))
    p = percent / 100
    half = 3.2905 * math.sqrt(n * p * (1 - p))  # z(0.9995): two-sided 99.9 %
    assert abs(hits - n * p) <= half, (hits, n * p, half)
    assert router.route("client-1", True) == router.route("client-1", True)  # deterministic per key
    assert bucket("client-1", "kairos") == bucket("client-1", "kairos")
    assert router.route("client-1", False).served == "champion"


def test_shadow_and_champion_only_routes():
    assert Router(RoutingConfig(mode="shadow")).route("k", True).shadow == "challenger"
    assert (
        Router(RoutingConfig(mode="champion_only", challenger_percent=100)).route("k", True).served
        == "champion"
    )
    assert Router(RoutingConfig(challenger_percent=100)).route("k", True).served == "challenger"


# ---- process rule --------------------------------------------------------------------------------
HEAVY = (
    "pandas",
    "pyarrow",
    "mlflow",
    "torch",
    "great_expectations",
    "lightgbm",
    "onnxmltools",
    "sklearn",
    "scipy",
)

SERVE_AND_REQUEST = r"""
import json, math, random, sys
import serving.app, serving.server, serving.watcher, serving.state, serving.predictor
from fastapi.testclient import TestClient
from serving.app import create_app
from serving.config import RoutingConfig, ServingConfig
from serving.state import ServingState

state = ServingState(ServingConfig(routing=RoutingConfig(mode="shadow")), predlog_dir=sys.argv[3])
state.add_bundle(sys.argv[1], "champion", version="1")
state.add_bundle(sys.argv[2], "challenger", version="2")
rng, close, candles = random.Random(0), 5.0, []
for i in range(600):  # a random walk of 1m candles, no pandas
    o, close = close, close * math.exp(rng.gauss(0, 1e-3))
    v = rng.uniform(10, 100)
    candles.append({"open_time": 1_690_848_000_000 + 60_000 * i, "open": o, "high": max(o, close) * 1.001,
                    "low": min(o, close) * 0.999, "close": close, "volume": v, "quote_asset_volume": v * close,
                    "number_of_trades": 7, "taker_buy_base_asset_volume": v / 2, "taker_buy_quote_asset_volume": v * close / 2})
with TestClient(create_app(state)) as c:
    r = c.post("/v1/predict", json={"symbol": "FILUSDT", "candles": candles[:580]})
    assert r.status_code == 200 and r.json()["version"] == "1", r.text
    r = c.post("/v1/candles", json={"symbol": "FILUSDT", "candles": candles[:599]})
    assert r.status_code == 200 and r.json()["prediction"] is not None, r.text
    r = c.post("/v1/candles", json={"symbol": "FILUSDT", "candles": candles[599:]})
    assert r.status_code == 200 and r.json()["prediction"]["open_time"] == candles[599]["open_time"], r.text
    assert c.get("/metrics").status_code == 200 and c.get("/v1/models").status_code == 200
print(json.dumps([m for m in HEAVY if m in sys.modules]))
"""


def test_serving_process_never_imports_heavy_libraries(tmp_path):
    """Importing the app, loading two bundles and answering /v1/predict + /v1/candles (stream warm-up
    and prediction) never imports pandas/pyarrow (~70 MB), mlflow, torch, GX, LightGBM, sklearn or scipy."""
    champ = linear_bundle(tmp_path / "champ", bias=1e-3, weight=1e-6)
    chall = linear_bundle(tmp_path / "chall", bias=-1e-3)
    code = f"HEAVY = {HEAVY!r}\n" + SERVE_AND_REQUEST
    args = [sys.executable, "-c", code, str(champ), str(chall), str(tmp_path / "predlog")]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", f"heavy modules imported: {r.stdout}"


def test_tensorrt_gets_fp16_and_an_engine_cache_other_providers_plain(tmp_path):
    from serving.runtime import provider_options

    cfg = RuntimeConfig(tensorrt_cache_dir=str(tmp_path / "trt"))
    got = provider_options(
        cfg, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    name, opts = got[0]
    assert name == "TensorrtExecutionProvider" and got[1:] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()
    off = provider_options(RuntimeConfig(tensorrt_fp16=False, tensorrt_cache_dir=str(tmp_path)), [name])
    assert off[0][1]["trt_fp16_enable"] is False
    # a CPU-only build: TensorRT and CUDA are dropped first, so no TensorRT options reach onnxruntime
    cpu_only = choose_providers(cfg.providers, available=["CPUExecutionProvider"])
    assert provider_options(cfg, cpu_only) == ["CPUExecutionProvider"]
