"""The whale task (pipelines/tasks/whale.py), the scale-free whale19r set, and the whale detector
(pipelines/models/whale.py): labels by hand, metrics against scikit-learn, rule thresholds fitted on
training rows only, EVT thresholds against known distributions, and ONNX parity of all four outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.contracts.onnx import run_onnx
from pipelines.features import StreamingFeatures, compute_features, get_feature_set
from pipelines.models.whale import WhaleDetector, WhaleDetectorConfig, pot_thresholds
from pipelines.tasks import TaskError, get_task
from pipelines.tasks.whale import average_precision, best_f1_threshold, roc_auc


def _task(**options):
    return get_task("whale", (15,), options)


def test_trade_size_labels_by_hand():
    big = np.zeros(40)
    thr = np.ones(40)
    thr[:3] = np.nan  # the first minutes lack 24 h of trades
    big[20] = 2.5  # > 2 x p99.9: an event at minute 20
    big[30] = 2.0  # = 2 x: not an event (strictly greater)
    y = _task(trade_multiple=2.0).frame_labels(pd.DataFrame({"max_order_quote": big, "order_p999_24h": thr}))[
        :, 0
    ]
    # row t is positive when minute 20 is in (t, t+15]: t = 5..19
    want = np.zeros(40)
    want[5:20] = 1
    want[:2] = np.nan  # (t, t+15] reads an undefined minute (1 or 2)
    want[40 - 15 :] = np.nan  # past the end
    np.testing.assert_array_equal(y, want)


def test_volume_spike_labels_and_missing_columns():
    v = np.ones(100)
    v[80] = 11.0  # > 10 x the mean of the 60 before
    y = _task(label="volume_spike").frame_labels(pd.DataFrame({"volume": v}))[:, 0]
    assert np.isnan(y[:59]).all() and y[59] == 0  # minute 60 is the first defined (60 candles before it)
    assert (y[65:80] == 1).all() and y[64] == 0 and y[80] == 0
    with pytest.raises(TaskError, match="max_order_quote.*kairos ingest trades"):
        _task().frame_labels(pd.DataFrame({"volume": v}))
    with pytest.raises(TaskError, match="options.label"):
        _task(label="nope").frame_labels(pd.DataFrame({"volume": v}))


def test_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y = (rng.random(5000) < 0.03).astype(float)
    s = np.round(y * 0.5 + rng.normal(size=5000), 1)  # ties on purpose
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    k = best_f1_threshold(s, y)
    f1 = lambda t: 2 * ((s > t) & (y == 1)).sum() / ((s > t).sum() + y.sum())  # noqa: E731
    assert all(f1(k) >= f1(t) - 1e-12 for t in np.unique(s))


def test_baselines_fit_on_training_rows_and_evaluate():
    rng = np.random.default_rng(5)
    n = 6000
    v = rng.exponential(1.0, n)
    close = 1e-6 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    big = rng.exponential(1.0, n)
    big[rng.choice(n, 40, replace=False)] = 50
    frame = pd.DataFrame({"volume": v, "close": close, "max_order_quote": big, "order_p999_24h": 10.0})
    t = _task()
    Y, A = t.frame_labels(frame), t.frame_baseline_inputs(frame)
    ok = np.isfinite(Y[:, 0]) & np.isfinite(A).all(axis=1)
    Y, A = Y[ok], A[ok]
    state = t.fit_baselines(A[:4000], Y[:4000])
    base = t.baseline_forecasts(state, A[4000:])
    m = t.evaluate(np.full((len(Y) - 4000, 1), 0.1), Y[4000:], base, interval="1m", cfg=None)
    assert m["base_rate.h15.pr_auc"] == pytest.approx(m["base_rate.h15.base_rate"])
    assert m["base_rate.h15.roc_auc"] == 0.5
    for who in ("model", "volume_spike", "return_spike", "base_rate"):
        for k in ("precision", "recall", "f1", "roc_auc", "pr_auc", "brier", "log_loss"):
            assert f"{who}.h15.{k}" in m
    # the base rate is the training rows' rate, not the test rows'
    assert base["base_rate"][0, 0, 1] == pytest.approx(Y[:4000, 0].mean())


def test_pot_thresholds_hold_their_rates():
    """Exponential tail (xi = 0) and Pareto tail (xi = 0.25): POT quantiles vs the true ones."""
    rng = np.random.default_rng(11)
    x = rng.exponential(1.0, 400_000)
    thr, pot = pot_thresholds(x, (0.1, 0.01, 0.001, 0.0001))
    np.testing.assert_allclose(thr, -np.log([0.1, 0.01, 0.001, 0.0001]), rtol=0.05)
    assert abs(pot["xi"]) < 0.05
    p = rng.pareto(4.0, 400_000)  # Lomax, xi = 1/4
    thr, pot = pot_thresholds(p, (0.01, 0.001, 0.0001))
    want = np.array([0.01, 0.001, 0.0001]) ** (-0.25) - 1
    np.testing.assert_allclose(thr, want, rtol=0.1)
    assert pot["xi"] == pytest.approx(0.25, abs=0.07)


@pytest.fixture(scope="module")
def fil(shared_data) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines
    from tests.conftest import FIL_FILES

    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:3000].reset_index(drop=True)


def test_whale19r_is_whale19_scale_free(fil):
    part = fil.iloc[:3000]
    w = compute_features(part, "whale19")
    r = compute_features(part, "whale19r")
    assert list(r.columns) == list(get_feature_set("whale19r").names) and r.shape[1] == 13
    np.testing.assert_allclose(r["sma_20_dist"], w["sma_20"] / w["price"] - 1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r["macd_rel"], w["macd_12_26"] / w["price"], rtol=1e-12, atol=1e-18)
    np.testing.assert_array_equal(r["volume_ratio_20"], w["volume_ratio_20"])
    # scale-free: multiplying every price (and the quote volume) by 1e-4 changes nothing but rounding
    scaled = part.copy()
    for c in ("open", "high", "low", "close", "quote_asset_volume", "taker_buy_quote_asset_volume"):
        scaled[c] = scaled[c] * 1e-4
    np.testing.assert_allclose(compute_features(scaled, "whale19r"), r, rtol=1e-6, atol=1e-9)
    # streaming == batch, bit for bit
    sf = StreamingFeatures("whale19r", interval_ms=60_000)
    got = np.array([sf.update(rec) for rec in part.to_dict("records")])
    np.testing.assert_array_equal(got, r.to_numpy())


def _planted(n_groups=8, n=3000, seed=0):
    """Groups of rows with a planted signal: positives have a larger feature 0, a few rows are outliers."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_groups * n, 5)).astype(np.float32)
    y = (rng.random(len(X)) < 0.02).astype(float)
    X[y == 1, 0] += 2.0
    X[:, 4] = np.nan  # a nullable feature (NaN by design)
    groups = np.repeat(np.arange(n_groups), n)
    return X, y, groups


def test_detector_fits_calibrates_and_exports_with_parity():
    X, y, groups = _planted()
    names = ("a", "b", "c", "d", "spread")
    det = WhaleDetector(WhaleDetectorConfig(n_estimators=40, min_child_samples=50), names, ("spread",))
    det.fit(X, y, groups)
    out = det.predict_all(X)
    assert roc_auc(out["whale_probability"], y) > 0.8
    # calibrated: mean probability ~ base rate
    assert out["whale_probability"].mean() == pytest.approx(y.mean(), rel=0.25)
    # threat levels on the (normal) training rows fire at about their stated rates
    normal = y == 0
    for k, r in zip((2, 3), (0.1, 0.01)):
        assert 0.5 * r <= np.mean(out["threat_level"][normal] >= k) <= 2 * r
    onnx = det.to_onnx()
    for name, tol in (("whale_probability", 1e-5), ("anomaly_score", 1e-4), ("feature_deviation", 1e-4)):
        got = run_onnx(onnx, X[:5000], output=name)
        want = out[name][:5000].reshape(got.shape)
        np.testing.assert_allclose(got, want, atol=tol, rtol=1e-4, err_msg=name)
    lv = run_onnx(onnx, X[:5000], output="threat_level")[:, 0]
    assert np.mean(lv == out["threat_level"][:5000]) >= 0.999
    assert (run_onnx(onnx, X[:100], output="feature_deviation")[:, 4] == 0).all()  # NaN input → 0


def test_detector_with_a_sequence_classifier_exports_one_graph():
    """The zoo's transformer as the classifier: windows [N, T, F] in, the never-NaN columns to the network,
    the row at t to the anomaly ensemble; ONNX agrees with the native model on every output."""
    T, n = 8, 6000
    X, y, groups = _planted(n_groups=4, n=n // 4, seed=2)
    W = np.lib.stride_tricks.sliding_window_view(X, T, axis=0).transpose(0, 2, 1)  # (N-T+1, T, F)
    W, yw, gw = np.ascontiguousarray(W), y[T - 1 :], groups[T - 1 :]
    names = ("a", "b", "c", "d", "spread")
    cfg = WhaleDetectorConfig(
        classifier="transformer",
        preset="tiny",
        sequence_overrides=(("sequence_length", T), ("max_epochs", 2), ("batch_size", 256)),
        calibration_folds=2,
    )
    det = WhaleDetector(cfg, names, ("spread",)).fit(W, yw, gw)
    out = det.predict_all(W)
    assert roc_auc(out["whale_probability"], yw) > 0.7
    with pytest.raises(Exception, match=r"expected \(N, T, F\)"):
        det.predict_all(X)
    onnx = det.to_onnx()
    rows = W[:2000]
    for name, tol in (("whale_probability", 1e-4), ("anomaly_score", 1e-4), ("feature_deviation", 1e-4)):
        got = run_onnx(onnx, rows, output=name)
        np.testing.assert_allclose(
            got, out[name][:2000].reshape(got.shape), atol=tol, rtol=1e-4, err_msg=name
        )
    lv = run_onnx(onnx, rows, output="threat_level")[:, 0]
    assert np.mean(lv == out["threat_level"][:2000]) >= 0.999


def test_split_segments_cuts_at_gaps_and_into_windows():
    from pipelines.training.pooled import split_segments

    t = pd.date_range("2024-01-01", periods=10 * 1440, freq="1min", tz="UTC")
    t = t[
        (t < pd.Timestamp("2024-01-03", tz="UTC")) | (t >= pd.Timestamp("2024-01-04", tz="UTC"))
    ]  # a day missing
    frame = pd.DataFrame({"open_time": t, "close": 1.0})
    ev = [
        pd.Timestamp("2024-01-02 12:00", tz="UTC"),
        pd.Timestamp("2024-01-05", tz="UTC"),
        pd.Timestamp("2024-01-06", tz="UTC"),
    ]
    segs = split_segments(frame, "X", ev)
    assert [len(s.frame) for s in segs] == [2 * 1440, 7 * 1440]
    assert segs[0].events == (ev[0],) and segs[1].events == tuple(ev[1:])
    segs = split_segments(frame, "X", ev, max_len="4D")
    assert [len(s.frame) for s in segs] == [2 * 1440, 4 * 1440, 3 * 1440]
    assert sum(len(s.events) for s in segs) == 3 and segs[1].events == tuple(ev[1:])
    nine = pd.DataFrame({"open_time": pd.date_range("2024-01-01", periods=9 * 1440, freq="1min", tz="UTC")})
    assert [len(s.frame) for s in split_segments(nine, "X", max_len="4D")] == [4 * 1440, 5 * 1440]  # no stub
