"""Drift statistics, the calibrated alarm and the reference profile in the bundle (pipelines.monitoring.drift).

The calibration is checked where it matters: on fresh data from the process it was calibrated on (an
AR(1) with daily seasonality and day-level regimes, like 1-minute market features), the alarm fires about
as often as its target, while a textbook threshold fires nearly every day.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from pipelines.contracts.bundle import Manifest
from pipelines.contracts.profile import (
    PSI_FLOOR,
    ReferenceProfile,
    bin_counts,
    build_profile,
    column_profile,
    ks_binned,
    ks_rows,
    psi,
    psi_rows,
)
from pipelines.features import compute_features
from pipelines.monitoring.drift import (
    DriftCheck,
    DriftError,
    alarm_episodes,
    calibrate_alarm,
    ceiling_of,
    evaluate_drift,
    live_frame,
    profile_at_training,
    reference_profile,
    replay,
)
from pipelines.sources.synthetic import generate
from pipelines.training.predict import history_rows
from tests.fixtures.bundles import feature_spec, linear_onnx, make_manifest

DAY = 1440


def ar1_days(days: int, seed: int, cols: int = 3) -> pd.DataFrame:
    """Per column: AR(1) (phi 0.98, unit variance) + a day-level regime N(0, 0.3^2) + a daily cycle, 1m rows."""
    rng = np.random.default_rng(seed)
    n, phi = days * DAY, 0.98
    t = np.arange(n)
    data = {
        f"c{c}": lfilter([1.0], [1.0, -phi], rng.normal(size=n)) * np.sqrt(1 - phi**2)
        + np.repeat(rng.normal(scale=0.3, size=days), DAY)
        + 0.5 * np.sin(2 * np.pi * t / DAY + c)
        for c in range(cols)
    }
    return pd.DataFrame(data, index=pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC"))


@pytest.fixture(scope="module")
def calibrated() -> ReferenceProfile:
    """30 days of history, the newest 14 profiled; the default alarm (binned KS, 1-day window, hourly)."""
    return reference_profile(ar1_days(30, seed=0), profile_rows=14 * DAY)


def test_statistics_on_known_distributions():
    q = np.full(10, 0.1)
    assert psi(q, np.full(10, 7.0)) == 0.0 and ks_binned(q, np.full(10, 7.0)) == pytest.approx(0.0, abs=1e-15)
    one_bin = np.eye(10)[0] * 50
    assert ks_binned(q, one_bin) == pytest.approx(0.9)
    expected = 0.9 * np.log(1 / 0.1) + 9 * (PSI_FLOOR - 0.1) * np.log(PSI_FLOOR / 0.1)
    assert psi(q, one_bin) == pytest.approx(expected)
    assert ceiling_of(list(q), "psi") == pytest.approx(expected) and ceiling_of(
        list(q), "ks"
    ) == pytest.approx(0.9)
    assert np.isnan(psi(q, np.zeros(10))) and np.isnan(ks_binned(q, np.zeros(10)))

    rng = np.random.default_rng(1)
    ref = column_profile("x", rng.uniform(size=200_000))
    shifted = bin_counts(rng.uniform(0.1, 1.1, size=200_000), ref.edges)
    assert ks_binned(ref.shares, shifted) == pytest.approx(0.1, abs=0.005)  # a 0.1 shift of U(0, 1)
    gauss = column_profile("g", rng.normal(size=200_000))
    moved = bin_counts(rng.normal(0.5, 1.0, size=200_000), gauss.edges)
    # PSI is the symmetric KL divergence (0.5^2 = 0.25 for unit normals), a little less on 10 bins
    assert 0.18 < psi(gauss.shares, moved) < 0.25

    counts = rng.integers(0, 30, size=(50, 10)).astype(float)
    counts[3] = 0
    np.testing.assert_allclose(psi_rows(q, counts), [psi(q, c) for c in counts], rtol=1e-12)
    np.testing.assert_allclose(ks_rows(q, counts), [ks_binned(q, c) for c in counts], rtol=1e-12)


def test_profile_and_alarm_round_trip_through_the_manifest_json(calibrated):
    from tests.fixtures.bundles import make_manifest

    fs = dataclasses.replace(feature_spec(), names=["c0", "c1", "c2"])
    manifest = dataclasses.replace(make_manifest(fs), reference_profile=calibrated.to_dict())
    text = manifest.to_json()
    strict = json.loads(
        text, parse_constant=lambda c: pytest.fail(f"manifest.json holds {c}: not strict JSON")
    )
    back = Manifest.from_dict(strict).profile()
    assert back == calibrated
    alarm = back.alarm
    assert alarm["statistic"] == "ks" and (alarm["window"], alarm["step"], alarm["consecutive"]) == (
        1440,
        60,
        2,
    )
    assert set(alarm["thresholds"]) == {"c0", "c1", "c2"} and alarm["saturated"] == []
    assert alarm["calibration"]["replays"] == 128 and alarm["calibration"]["block_rows"] == DAY
    assert back.window["rows"] == 14 * DAY and [c.kind for c in back.columns] == ["feature"] * 3
    assert dataclasses.replace(manifest, reference_profile=None).profile() is None


def test_calibration_meets_its_target_on_fresh_data_and_beats_a_textbook_threshold(calibrated):
    live = ar1_days(360, seed=99)  # a year of fresh no-drift data from the same process
    replayed = replay(calibrated, live)
    rate = len(alarm_episodes(replayed)) / 360 * 30
    target = calibrated.alarm["target_false_alarms_per_30d"]
    assert target / 4 <= rate <= 3 * target, rate
    # the same windows against a fixed threshold (binned KS > 0.1, about p < 0.05 for 1440 iid rows) are in
    # alarm most of the time: autocorrelation and daily regimes, not drift
    textbook = dataclasses.replace(
        calibrated, alarm={**calibrated.alarm, "thresholds": dict.fromkeys(calibrated.names(), 0.1)}
    )
    firing = replayed.groupby("time")["fired"].any().mean()
    assert firing < 0.05 and replay(textbook, live).groupby("time")["fired"].any().mean() > 0.5


def test_calibration_meets_its_target_within_a_factor_for_another_target():
    history, live = ar1_days(30, seed=5), ar1_days(360, seed=6)
    prof = build_profile({c: history[c].to_numpy()[-14 * DAY :] for c in history.columns})
    alarm = calibrate_alarm(prof, history, window=DAY, step=60, target_false_alarms_per_30d=3.0, seed=1)
    assert alarm["calibration"]["achieved_false_alarms_per_30d"] <= 1.0  # the replays held to target / 3
    rate = len(alarm_episodes(replay(dataclasses.replace(prof, alarm=alarm), live))) / 360 * 30
    assert 3.0 / 4 <= rate <= 3 * 3.0, rate


def test_evaluate_drift_fires_on_a_planted_shift_and_not_without(calibrated):
    live = ar1_days(3, seed=7)
    checks = evaluate_drift(calibrated, live)
    assert [c.name for c in checks] == ["c0", "c1", "c2"] and not any(c.fired for c in checks)
    assert all(isinstance(c, DriftCheck) and c.rows == DAY and c.statistic == "ks" for c in checks)
    assert [c.threshold for c in checks] == [calibrated.alarm["thresholds"][n] for n in ("c0", "c1", "c2")]

    shifted = live.copy()
    shifted.iloc[-DAY:, 1] += 1.5  # c1 moves by 1.5 sd for the last day
    fired = {c.name: c.fired for c in evaluate_drift(calibrated, shifted)}
    assert fired == {"c0": False, "c1": True, "c2": False}
    # the rule needs `consecutive` evaluations above threshold: a shift of the last few minutes only is not enough
    brief = live.copy()
    brief.iloc[-30:, 1] += 50.0
    assert not any(c.fired for c in evaluate_drift(calibrated, brief))


def test_bad_input_gets_a_clear_error(calibrated):
    live = ar1_days(2, seed=3)
    with pytest.raises(DriftError, match="no column 'c2'"):
        evaluate_drift(calibrated, live.drop(columns="c2"))
    with pytest.raises(DriftError, match="needs 1440 live rows"):
        evaluate_drift(calibrated, live.iloc[:100])
    with pytest.raises(DriftError, match="no calibrated alarm"):
        evaluate_drift(dataclasses.replace(calibrated, alarm={}), live)
    with pytest.raises(DriftError, match=r"no threshold for \['c1'\]"):
        thresholds = {k: v for k, v in calibrated.alarm["thresholds"].items() if k != "c1"}
        evaluate_drift(
            dataclasses.replace(calibrated, alarm={**calibrated.alarm, "thresholds": thresholds}), live
        )
    with pytest.raises(DriftError, match="needs 8640 history rows"):
        calibrate_alarm(calibrated, live, window=DAY, step=60)
    with pytest.raises(DriftError, match="unknown drift statistic 'wasserstein'"):
        calibrate_alarm(calibrated, ar1_days(7, 1), window=DAY, step=60, statistic="wasserstein")
    with pytest.raises(DriftError, match="no column 'c1'"):
        calibrate_alarm(calibrated, ar1_days(7, 1).drop(columns="c1"), window=DAY, step=60)
    short = reference_profile(live.iloc[:120], profile_rows=60)  # too short to calibrate: the alarm says why
    assert short.alarm["method"].startswith("not calibrated") and short.alarm["thresholds"] == {}
    with pytest.raises(DriftError, match="no calibrated alarm .not calibrated"):
        evaluate_drift(short, live)


@pytest.mark.parametrize("seq_len", [None, 5])
def test_training_profile_and_live_frame_share_columns(seq_len):
    candles = generate(n=3000, seed=11)
    fs = feature_spec()
    manifest = make_manifest(fs, symbol="SYNTHUSDT", seq_len=seq_len, confidence=True)
    onnx = linear_onnx(len(fs.names), 5, bias=0.0, weight=1e-3, seq_len=seq_len, confidence=True)
    feats = compute_features(candles, fs.name)[fs.names].to_numpy(np.float32)
    first = history_rows(manifest)
    rows = feats[first:]
    X = (
        np.lib.stride_tricks.sliding_window_view(feats, seq_len, axis=0)[first - seq_len + 1 :].transpose(
            0, 2, 1
        )
        if seq_len
        else rows
    )
    times = candles["open_time"].iloc[first:]
    prof = profile_at_training(onnx, manifest, X, feature_rows=rows, profile_rows=1000, times=times, paths=16)
    outputs = [f"{o}_h{h}" for o in ("returns", "confidence") for h in (1, 2, 3, 4, 5)]
    assert prof.names("feature") == list(fs.names) and prof.names("output") == outputs
    assert prof.window["rows"] == 1000 and prof.window["end"] == pd.Timestamp(times.iloc[-1]).isoformat()
    assert prof.alarm["window"] == len(rows) // 6  # a short history gets a proportionally shorter window

    live = live_frame(onnx, manifest, candles)
    assert list(live.columns) == prof.names() and live.index.name == "open_time"
    assert len(live) == len(rows) and live.index[0] == pd.Timestamp(times.iloc[0])
    np.testing.assert_array_equal(live[fs.names].to_numpy(np.float32), rows)
    # the profile's own newest rows read as no drift
    assert not any(c.fired for c in evaluate_drift(prof, live))
