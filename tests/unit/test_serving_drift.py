"""Serving's per-version monitoring: online drift against the bundle's reference profile (bit for bit the
contract's statistics and the monitor's alarm rule), live accuracy, latency budget, /metrics, /healthz."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipelines.contracts.bundle import OutputSpec, write_bundle
from pipelines.contracts.profile import bin_counts, build_profile, ks_binned, psi
from serving.app import create_app
from serving.config import MonitoringConfig, RoutingConfig, RuntimeConfig, ServingConfig
from serving.drift import DriftMonitor, ProfileError, output_columns, served_output_columns
from serving.live import LiveAccuracy
from serving.predictor import FeatureState, Prediction, Predictor
from serving.runtime import load_model
from serving.state import ServingState
from tests.conftest import FIL_FILES
from tests.fixtures.bundles import HORIZONS, candle_records, feature_spec, linear_onnx, make_manifest

SYMBOL = "FILUSDT"
NAME = f"returns-{SYMBOL}-1m"
VOLUMES = ("volume", "quote_asset_volume", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume")
WINDOW, STEP = 200, 50


def prediction(t: int, values: tuple[float, ...], symbol: str = "S") -> Prediction:
    return Prediction("r", symbol, "1m", t, "m", "1", "champion", HORIZONS_T, values, None, 1.0)


HORIZONS_T = tuple(HORIZONS)


def alarm(thresholds: dict, window: int = WINDOW, step: int = STEP, consecutive: int = 2, stat="psi"):
    return {
        "statistic": stat,
        "window": window,
        "step": step,
        "consecutive": consecutive,
        "thresholds": thresholds,
        "method": "hand-made for the test",
    }


# ---- names ----------------------------------------------------------------------------------------
def test_output_column_names_agree_with_batch_scoring(tmp_path):
    from pipelines.training.predict import output_columns as batch_columns

    cases = [
        ("returns", 5, [1, 2, 3, 4, 5]),
        ("whale_probability", 1, [15]),
        ("anomaly_score", 1, []),
        ("log_variance", 3, [5, 15, 60]),
        ("feature_deviation", 3, []),
        ("q", 2, [1, 2, 3, 4, 5]),
    ]
    for name, width, hs in cases:
        spec = OutputSpec(name, [None, width], horizons=hs) if hs else None
        assert output_columns(name, width, hs) == batch_columns(name, width, spec), name
    # a loaded bundle: the task's output and its confidence per served horizon; withheld ones are not observable
    fs = feature_spec()
    m = make_manifest(fs, confidence=True)
    m = replace(m, extra={"below_baselines": {"3": "loses to the sign of the last return"}})
    onnx = linear_onnx(len(fs.names), len(HORIZONS), 1e-3, confidence=True)
    model = load_model(write_bundle(tmp_path / "b", onnx, m), RuntimeConfig())
    cols = served_output_columns(model)
    assert list(cols) == [f"returns_h{h}" for h in (1, 2, 4, 5)] + [f"confidence_h{h}" for h in (1, 2, 4, 5)]
    assert cols["returns_h4"] == ("values", 2) and cols["confidence_h5"] == ("confidence", 3)


# ---- the online counts and statistics ---------------------------------------------------------------
def synthetic_profile(rng: np.random.Generator, n_features: int) -> tuple[dict, dict]:
    """Reference columns: normal features (one constant, one with NaN), outputs returns_h*."""
    cols = {f"f{j}": rng.normal(j % 3, 1 + j % 2, 3000) for j in range(n_features)}
    cols["f0"] = np.full(3000, 2.5)  # constant: one bin
    cols["f1"][::7] = np.nan
    for h in HORIZONS:
        cols[f"returns_h{h}"] = rng.normal(0, 1e-3 * h, 3000)
    return cols, {f"returns_h{h}": "output" for h in HORIZONS}


@pytest.mark.parametrize(
    "window,step,consecutive,stat",
    [(WINDOW, STEP, 2, "psi"), (77, 13, 3, "ks")],  # the second: blocks wrap around the ring
)
def test_online_counts_and_statistics_equal_the_contract_and_the_monitor_rule(
    window, step, consecutive, stat
):
    """Counts over the last `window` rows equal `bin_counts` of those rows; PSI/KS equal the contract bit
    for bit; the alarm after every evaluation is the one `pipelines.monitoring.drift.replay` gives."""
    from pipelines.monitoring.drift import replay

    rng = np.random.default_rng(7)
    F = 25
    ref, kinds = synthetic_profile(rng, F)
    names = list(ref)
    thresholds = {n: 0.15 if stat == "psi" else 0.2 for n in names}
    thresholds["f3"] = None  # not calibrated: reported, never alarms
    profile = replace(build_profile(ref, kinds), alarm=alarm(thresholds, window, step, consecutive, stat))
    feat_names = [f"f{j}" for j in range(F)]
    mon = DriftMonitor(profile, feat_names, {f"returns_h{h}": ("values", j) for j, h in enumerate(HORIZONS)})
    assert mon.names == names and mon.untracked == []
    n = 1100
    j = np.arange(F)
    X = rng.normal(j % 3, 1 + j % 2, (n, F)).astype(np.float32)  # the reference's distributions
    X[rng.random((n, F)) < 0.02] = np.nan
    X[:, 0] = 2.5
    X[5, 2], X[6, 2] = np.inf, -np.inf
    X[600:, 4] += 1.5  # a planted shift in one feature from row 600
    Y = rng.normal(0, 1e-3 * np.array(HORIZONS), (n, len(HORIZONS)))
    alarms = []
    for i in range(n):
        mon.add(X[i : i + 1], prediction(60_000 * i, tuple(Y[i])))
        if i + 1 >= window and (i + 1 - window) % step == 0:
            mon.status()  # evaluates what waits
            alarms.append(mon.alarm_on)
        if (i + 1) in (37, window - 1, window, 517, 1000, n):
            lo = max(0, i + 1 - window)
            live = np.column_stack([X[lo : i + 1].astype(np.float64), Y[lo : i + 1]])  # (rows, C)
            snap = mon.snapshot()
            assert snap["rows"] == i + 1 - lo
            for j, c in enumerate(profile.columns):
                want = bin_counts(live[:, j], c.edges)
                np.testing.assert_array_equal(mon.counts(c.name), want)
                got = snap["columns"][j]
                for stat, fn in (("psi", psi), ("ks", ks_binned)):
                    assert got[stat] == fn(c.shares, want) or (
                        np.isnan(got[stat]) and np.isnan(fn(c.shares, want))
                    )
    assert mon.counts("f0").tolist() == [window]
    # the same rule as the monitor's replay over the same rows
    frame = pd.DataFrame(np.column_stack([X.astype(np.float64), Y]), columns=names)
    fired = replay(profile, frame).groupby("time", sort=True)["fired"].any().tolist()
    assert alarms == fired and any(fired) and not fired[0]
    assert mon.alarm_on and mon.alarm_columns == ["f4"]
    assert mon.status() == "drift"


def test_a_malformed_alarm_is_refused_with_its_reason():
    rng = np.random.default_rng(0)
    ref, kinds = synthetic_profile(rng, 3)
    outs = {f"returns_h{h}": ("values", j) for j, h in enumerate(HORIZONS)}
    for bad, why in [
        ({"statistic": "chi2"}, "statistic"),
        ({"window": 0}, "window"),
        ({"step": 2.5}, "step"),
        ({"thresholds": {"f1": -1.0}}, "thresholds"),
    ]:
        a = {**alarm({n: 0.1 for n in ref}), **bad}
        with pytest.raises(ProfileError, match=why):
            DriftMonitor(replace(build_profile(ref, kinds), alarm=a), ["f0", "f1", "f2"], outs)


# ---- through the Predictor and the app ---------------------------------------------------------------
@pytest.fixture(scope="module")
def candles():
    from pipelines.sources.binance_files import read_klines

    return candle_records(read_klines(FIL_FILES[0], SYMBOL).iloc[:1000])


def linear(directory: Path, profile=None, bias: float = 1e-3) -> Path:
    fs = feature_spec()
    m = make_manifest(fs)
    if profile is not None:
        m = replace(m, reference_profile=profile.to_dict())
    return write_bundle(directory, linear_onnx(len(fs.names), len(HORIZONS), bias, 1e-7), m)


@pytest.fixture(scope="module")
def reference(candles, tmp_path_factory):
    """The feature rows (float32, as the model gets them) and outputs a version sees on `candles`, and a
    profile of them whose hand-made alarm watches the volume and the model's first output."""
    d = tmp_path_factory.mktemp("ref")
    pred = Predictor(load_model(linear(d / "plain"), RuntimeConfig()))
    fs = feature_spec()
    st = FeatureState(fs.name, len(fs.names), 1, 60_000)
    X, V = [], []
    for c in candles:
        st.update(c)
        p = pred.update(c)
        if p is not None:
            X.append(st.row[0].copy())
            V.append(p.values)
    X, V = np.array(X), np.array(V)
    cols = {n: X[:, j] for j, n in enumerate(fs.names)} | {
        f"returns_h{h}": V[:, j] for j, h in enumerate(HORIZONS)
    }
    watched = {"volume": 0.5, "quote_asset_volume": 0.5, "returns_h1": 0.5}
    profile = build_profile(cols, {f"returns_h{h}": "output" for h in HORIZONS})
    profile = replace(profile, alarm=alarm({n: watched.get(n) for n in cols}))
    return X, V, profile


def shifted(candles, start: int, factor: float = 3.0):
    out = [dict(c) for c in candles]
    for c in out[start:]:
        for k in VOLUMES:
            c[k] *= factor
    return out


def served(tmp_path, bundles: dict[str, Path], **monitoring) -> ServingState:
    cfg = ServingConfig(routing=RoutingConfig(mode="shadow"), monitoring=MonitoringConfig(**monitoring))
    state = ServingState(cfg, predlog_dir=tmp_path / "predlog")
    for arm, (b, version) in bundles.items():
        state.add_bundle(b, arm, version=version)
    return state


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample of the exposition `text` (labels must match exactly those given)."""
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


def test_planted_volume_shift_fires_the_alarm_and_the_same_stream_unshifted_does_not(
    tmp_path, candles, reference
):
    X, V, profile = reference
    bundle = linear(tmp_path / "prof", profile)
    warm = feature_spec().warmup
    results = {}
    for label, stream in (("plain", candles), ("shifted", shifted(candles, warm + 150))):
        state = served(tmp_path / label, {"champion": (bundle, "7")})
        with TestClient(create_app(state)) as client:
            pred = state.slots[NAME].predictor
            for c in stream:
                pred.update(c)
            text = client.get("/metrics").text
            health = client.get("/healthz").json()
        results[label] = (metric(text, "kairos_drift_alarm", model=NAME, version="7"), health)
        assert metric(text, "kairos_drift_window_rows", model=NAME, version="7") == WINDOW
        if label == "plain":  # the online counts are those of the rows the version saw
            watch = pred.watches()[0][1]
            np.testing.assert_array_equal(
                watch.drift.counts("volume"), bin_counts(X[-WINDOW:, 4], profile.column("volume").edges)
            )
            ratio = metric(
                text, "kairos_drift_ratio", model=NAME, version="7", column="volume", kind="feature"
            )
            want = psi(
                profile.column("volume").shares, bin_counts(X[-WINDOW:, 4], profile.column("volume").edges)
            )
            assert ratio == want / 0.5
    assert results["plain"][0] == 0.0 and results["plain"][1]["models"][NAME]["champion"]["drift"] == "ok"
    assert (
        results["shifted"][0] == 1.0 and results["shifted"][1]["models"][NAME]["champion"]["drift"] == "drift"
    )


def test_hot_swap_starts_fresh_buffers_and_a_bundle_without_profile_serves_as_before(
    tmp_path, candles, reference
):
    _, _, profile = reference
    warm = feature_spec().warmup
    state = served(
        tmp_path,
        {"champion": (linear(tmp_path / "a", profile), "1"), "challenger": (linear(tmp_path / "c"), "2")},
    )
    with TestClient(create_app(state)) as client:
        pred = state.slots[NAME].predictor
        for c in candles[: warm + 99]:
            pred.update(c)
        h = client.get("/healthz").json()
        assert h["status"] == "ok"
        assert h["models"][NAME]["champion"]["drift"] == f"warming up (100/{WINDOW} rows)"
        assert h["models"][NAME]["challenger"]["drift"] == "no reference profile"
        assert h["models"][NAME]["challenger"]["version"] == "2"
        assert h["models"][NAME]["champion"]["last_prediction"].endswith("Z")
        old = pred.watches()[0][1]
        state.add_bundle(linear(tmp_path / "b", profile, bias=2e-3), "champion", version="3")  # hot swap
        for c in candles[warm + 99 : warm + 109]:
            p = pred.update(c)
            assert p.version == "3"
        new = pred.watches()[0][1]
        assert new is not old and new.drift.rows == 10 and old.drift.rows == 100
        # batched candles count like streamed ones; a /v1/predict window ending at a counted candle does not
        pred.update_many([(SYMBOL, candles[warm + 109 : warm + 112])])
        assert new.drift.rows == 13
        assert pred.predict(candles[warm + 112 - warm : warm + 112]).version == "3"
        assert new.drift.rows == 13
        h = client.get("/healthz").json()["models"][NAME]
        assert h["champion"]["version"] == "3" and h["champion"]["drift"] == f"warming up (13/{WINDOW} rows)"
        text = client.get("/metrics").text
        assert metric(text, "kairos_drift_window_rows", model=NAME, version="3") == 13
        assert metric(text, "kairos_drift_window_rows", model=NAME, version="1") is None  # swapped out: gone
        assert (
            'kairos_drift_alarm{model="returns-FILUSDT-1m",version="2"}' not in text
        )  # no profile, no drift
        assert metric(text, "kairos_last_prediction_timestamp_seconds", model=NAME, version="2") > 0


def test_live_accuracy_is_the_hand_computed_direction_hit_rate(tmp_path, candles):
    """Bias +1e-3: every call is "up"; the hit rate is the share of rises close[t+h] > close[t] among the
    non-zero moves, over predictions whose target candle arrived."""
    warm = feature_spec().warmup
    state = served(tmp_path, {"champion": (linear(tmp_path / "a"), "1")})
    with TestClient(create_app(state)) as client:
        pred = state.slots[NAME].predictor
        stream = candles[: warm + 300]
        for c in stream:
            pred.update(c)
        text = client.get("/metrics").text
    close = np.array([c["close"] for c in stream])
    for h in HORIZONS:
        t = np.arange(warm - 1, len(stream) - h)  # predicted candles whose target arrived
        move = close[t + h] - close[t]
        want_n = int((move != 0).sum())
        assert metric(text, "kairos_live_outcomes", model=NAME, version="1", horizon=str(h)) == want_n
        assert metric(text, "kairos_live_accuracy", model=NAME, version="1", horizon=str(h)) == (
            (move > 0).sum() / want_n
        )


def test_live_accuracy_counts_both_signs_drops_zeros_and_keeps_24_hours():
    ivl, day = 60_000, 24 * 3600 * 1000
    closes = [10.0, 11.0, 11.0, 10.5, 12.0, 12.0, 11.0]
    hist = [{"open_time": 10 * day + i * ivl, "close": c} for i, c in enumerate(closes)]
    live = LiveAccuracy((1, 2), ivl, lambda s: hist if s == "S" else [])
    calls = [(0.1, -0.2), (-0.1, 0.3), (0.0, -0.1), (0.2, 0.2), (-0.3, -0.1), (0.1, 0.1), (0.2, 0.2)]
    for i, v in enumerate(calls):
        live.add(prediction(hist[i]["open_time"], v))
    live.add(prediction(hist[0]["open_time"], (1.0, 1.0), symbol="GONE"))  # a stream not served: dropped
    # by hand: h=1 moves +1, 0, -.5, +1.5, 0, -1 with calls +, -, 0, +, -, +: judged 0→1 (+, right),
    # 2→3 (call 0: none), 3→4 (+, right), 5→6 (+, wrong); zero moves none → 2 of 3
    # h=2 moves 0→2 +1 (-, wrong), 1→3 -.5 (+, wrong), 2→4 +1 (-, wrong), 3→5 +1.5 (+, right), 4→6 -1 (-, right)
    assert live.summary() == {1: (2 / 3, 3), 2: (2 / 5, 5)}
    hist.append(
        {"open_time": hist[-1]["open_time"] + day, "close": 13.0}
    )  # a day later: all out of the window
    later = live.summary()
    assert [n for _, n in later.values()] == [0, 0] and all(np.isnan(a) for a, _ in later.values())


def test_latency_budget_counts_served_predictions_and_metrics_expose_every_name(tmp_path, candles, reference):
    _, _, profile = reference
    warm = feature_spec().warmup
    state = served(
        tmp_path,
        {"champion": (linear(tmp_path / "a", profile), "1"), "challenger": (linear(tmp_path / "c"), "2")},
        latency_budget_us=0,
    )
    with TestClient(create_app(state)) as client:
        pred = state.slots[NAME].predictor
        n = 0
        for c in candles[: warm + 20]:
            n += pred.update(c) is not None
        text = client.get("/metrics").text
    assert n == 21
    # shadow: the challenger scored every candle too, but only the served answers count
    assert metric(text, "kairos_latency_budget_violations_total", model=NAME) == n
    for name in (
        "kairos_drift_statistic",
        "kairos_drift_ratio",
        "kairos_drift_alarm",
        "kairos_drift_window_rows",
        "kairos_live_accuracy",
        "kairos_live_outcomes",
        "kairos_latency_budget_violations_total",
        "kairos_last_prediction_timestamp_seconds",
    ):
        assert re.search(rf"^{name}\{{", text, re.M), name
    assert (
        metric(
            text,
            "kairos_drift_statistic",
            model=NAME,
            version="1",
            column="returns_h1",
            kind="output",
            statistic="ks",
        )
        >= 0
    )
    off = served(tmp_path / "off", {"champion": (linear(tmp_path / "a", profile), "1")}, drift=False)
    assert off.health()[NAME]["champion"]["drift"] == "off"
