"""Stream == batch on real data: the serving feature state fed 12,000 consecutive FILUSDT candles one at
a time gives every core27 feature (EMA and RSI included) at every step within 1e-9 relative of
`compute_features` over the same history, and the same NaN pattern during warm-up."""

from __future__ import annotations

import numpy as np

from serving.predictor import FeatureState
from tests.conftest import FIL_FILES
from tests.fixtures.bundles import candle_records

N = 12_000


def test_streaming_features_equal_batch_on_12000_real_candles(shared_data):
    from pipelines.features import compute_features, get_feature_set
    from pipelines.sources.binance_files import read_klines

    candles = read_klines(FIL_FILES[1], "FILUSDT").iloc[:N].reset_index(drop=True)
    fs = get_feature_set("core27")
    batch = compute_features(candles, "core27")[list(fs.names)].to_numpy(np.float64)  # (N, 27)
    state = FeatureState("core27", len(fs.names), 1, 60_000)
    stream = np.array([state.update(r) for r in candle_records(candles)])  # (N, 27)

    assert stream.shape == batch.shape == (N, 27)
    assert np.array_equal(np.isnan(stream), np.isnan(batch)), "NaN (warm-up) pattern differs"
    assert not np.isnan(stream[fs.warmup - 1 :]).any(), "every feature is defined after warm-up"
    ok = ~np.isnan(batch)
    diff = np.abs(stream[ok] - batch[ok])
    rel = diff / np.maximum(np.abs(batch[ok]), np.finfo(float).tiny)
    worst = np.where(ok)[1][np.argmax(rel)] if rel.size else None
    assert (rel <= 1e-9).all(), f"max relative difference {rel.max():.3g} at feature {fs.names[worst]}"
    for name in ("ema_30_norm", "rsi_14", "volatility_30m", "vwap_deviation"):
        j = fs.names.index(name)
        assert np.nanstd(batch[:, j]) > 0, f"{name} is constant: the comparison would prove nothing"
    assert state.ready
