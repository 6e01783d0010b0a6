"""Bundles and candles for serving tests and benchmarks (imported by tests/benchmarks only, never by the app).

- `linear_bundle`: a tiny ONNX graph `returns = features @ W + b` built with onnx.helper; `b` can
  encode a marker (e.g. the registry version) so a test can tell which model answered.
- `lightgbm_bundle`: the real thing: LightGBM (pipelines.models.lightgbm) fitted on features of
  real candles, exported by `pipelines.export` into one graph.
- `candle_records`: rows of a candle frame as the dicts `Predictor.update` takes (open_time epoch ms).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bundle import FeatureSetSpec, Manifest, OutputSpec, TensorSpec, write_bundle

HORIZONS = [1, 2, 3, 4, 5]


def feature_spec(name: str = "core27") -> FeatureSetSpec:
    """The feature set spec from `pipelines.features` (names, version, warm-up)."""
    from pipelines.features import get_feature_set

    fs = get_feature_set(name)
    return FeatureSetSpec(name=fs.name, version=fs.version, names=list(fs.names), warmup=fs.warmup)


def make_manifest(
    fs: FeatureSetSpec, symbol: str = "FILUSDT", interval: str = "1m", model_type: str = "linear",
    seq_len: int | None = None, confidence: bool = False, horizons: list[int] = HORIZONS,
) -> Manifest:  # fmt: skip
    shape: list[int | None] = [None, len(fs.names)] if seq_len is None else [None, seq_len, len(fs.names)]
    outputs = [OutputSpec("returns", [None, len(horizons)], horizons=horizons, meaning="log return")]
    if confidence:
        outputs.append(OutputSpec("confidence", [None, len(horizons)], horizons=horizons, meaning="0..1"))
    return Manifest(
        task="returns", model_name=f"returns-{symbol}-{interval}", model_type=model_type, symbol=symbol,
        interval=interval, feature_set=fs, input=TensorSpec("features", shape), outputs=outputs,
        training={"start": None, "end": None, "rows": 0, "data_hash": ""}, metrics={}, code_version="test",
        created_at=datetime.now(UTC).isoformat(),
    )  # fmt: skip


def linear_onnx(n_features: int, horizons: int, bias: float, weight: float = 0.0, seq_len: int | None = None,
                confidence: bool = False) -> bytes:  # fmt: skip
    """features (N, F) [or (N, T, F): last step used] → returns (N, H) = x @ (weight·1) + bias."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    src = "features"
    if seq_len is not None:  # take the last time step: (N, T, F) → (N, F)
        nodes.append(helper.make_node("Gather", ["features", "last_scalar"], ["x2"], axis=1))
        inits.append(numpy_helper.from_array(np.array(-1, dtype=np.int64), "last_scalar"))
        src = "x2"
    W = np.full((n_features, horizons), weight, dtype=np.float32)
    b = np.full((horizons,), bias, dtype=np.float32)
    inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]
    nodes += [helper.make_node("MatMul", [src, "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["returns"])]
    outputs = [helper.make_tensor_value_info("returns", TensorProto.FLOAT, [None, horizons])]
    if confidence:
        nodes += [helper.make_node("Abs", ["returns"], ["a"]), helper.make_node("Sigmoid", ["a"], ["confidence"])]
        outputs.append(helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [None, horizons]))
    shape = [None, n_features] if seq_len is None else [None, seq_len, n_features]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("features", TensorProto.FLOAT, shape)], outputs, initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="kairos-test")
    model.ir_version = 8
    return model.SerializeToString()


def linear_bundle(directory: Path, bias: float = 0.0, weight: float = 0.0, symbol: str = "FILUSDT",
                  seq_len: int | None = None, confidence: bool = False, feature_set: str = "core27") -> Path:  # fmt: skip
    fs = feature_spec(feature_set)
    onnx_bytes = linear_onnx(len(fs.names), len(HORIZONS), bias, weight, seq_len, confidence)
    return write_bundle(Path(directory), onnx_bytes, make_manifest(fs, symbol, seq_len=seq_len, confidence=confidence))


def lightgbm_bundle(directory: Path, candles: Any, n_estimators: int = 200, feature_set: str = "core27") -> Path:
    """LightGBM per horizon on `candles`' features and next-h log returns → one ONNX graph bundle."""
    from pipelines.config import LightGBMConfig
    from pipelines.features import compute_features
    from pipelines.models.lightgbm import LightGBMReturns

    fs = feature_spec(feature_set)
    X = compute_features(candles, feature_set)[fs.names].to_numpy(np.float64)
    close = candles["close"].to_numpy(np.float64)
    Y = np.column_stack([np.log(np.roll(close, -h) / close) for h in HORIZONS])
    ok = np.isfinite(X).all(1) & (np.arange(len(close)) < len(close) - max(HORIZONS))
    ok[: fs.warmup] = False
    cfg = LightGBMConfig(n_estimators=n_estimators, num_threads=2, min_child_samples=50)
    model = LightGBMReturns(cfg, HORIZONS).fit(X[ok].astype(np.float32), Y[ok])
    manifest = make_manifest(fs, str(candles["symbol"].iloc[0]), str(candles["interval"].iloc[0]), "lightgbm")
    return write_bundle(Path(directory), model.to_onnx(), manifest)


def candle_records(df: Any) -> list[dict[str, Any]]:
    """Candle frame → list of dicts in contract names, open_time as int epoch ms, spread_bps None if NaN."""
    import pandas as pd

    out = df.copy()
    if isinstance(out["open_time"].dtype, pd.DatetimeTZDtype):
        out["open_time"] = (out["open_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    recs = out.to_dict("records")
    for r in recs:
        r["open_time"] = int(r["open_time"])
        r["symbol"], r["interval"] = str(r["symbol"]), str(r["interval"])
        if r.get("spread_bps") is not None and r["spread_bps"] != r["spread_bps"]:
            r["spread_bps"] = None
        r["number_of_trades"] = int(r["number_of_trades"])
    return recs


def api_candle(rec: dict[str, Any]) -> dict[str, Any]:
    """A record → the JSON body of one candle for the HTTP/WebSocket API."""
    keys = ["open_time", "open", "high", "low", "close", "volume", "quote_asset_volume", "number_of_trades",
            "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"]  # fmt: skip
    return {k: rec[k] for k in keys}
