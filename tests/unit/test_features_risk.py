"""pipelines.features.risk: independent references, HMM fit, streaming == batch, no look-ahead, from_history.

Real data: FILUSDT 1m 2023-08 from ../shared/data (read in place), the first 20,000 candles; the regime
HMM is fitted on them (`fit_feature_params`), the fitted set's parameters travel as `params`.

References are written here from the definitions (numpy / pandas / scipy.stats), not from the module:
sorted windows for Hill, scipy.stats.skew / kurtosis, two-pass central moments for the variance ratio
and the autocorrelation, pandas' EWM for the volatility, L-moments for the GPD fit and
scipy.stats.genpareto (ppf, mean of the excess distribution) for VaR / ES at the same refit candles.
Tolerance rtol=1e-9 (required); atol is the absolute rounding of each value where it sits near 0: the
module sums raw powers (sum r^k) where the references take two-pass deviations, so a central moment
carries ~1e-16 of the raw one; skewness / autocorrelation / jump share near 0 differ by ~1e-14
absolute (measured <= 8e-14), hence atol=1e-12 for those (bounded ratios, |value| <~ 30).

Streaming vs batch from the same history start is bit-identical (asserted as such, 10,000+ candles,
refit candles included). from_history on a `warmup` window: rtol=1e-9, atol=1e-12 for every feature;
the regime probabilities come from a recursion started 2,096 candles earlier than the full history's,
and filters started anywhere (any prior) coalesce to the same bits within <= 500 candles on FILUSDT and
NEARUSDT (max |dp| after 250 candles <= 1e-7, after 500 exactly 0); the warm-up is 2,000.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy import stats

from pipelines.features import (
    FeatureError,
    StreamingFeatures,
    compute_features,
    feature_matrix,
    fit_feature_params,
    get_feature_set,
    risk,
)
from tests.conftest import FIL_FILES

RISK = [
    "hill_left",
    "hill_right",
    "evt_var_99",
    "evt_es_99",
    "realised_skew_60",
    "realised_kurt_60",
    "semivar_up_60",
    "semivar_down_60",
    "jump_share_60",
    "drawdown_240",
    "variance_ratio_240",
    "autocorr_1_240",
    "regime_p0",
    "regime_p1",
    "regime_p2",
    "regime_p3",
]
N_REAL = 20000
FV = dict(zip(RISK, risk.first_valid().tolist(), strict=True))
RTOL = 1e-9


@pytest.fixture(scope="module")
def fil(shared_data) -> pd.DataFrame:
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:N_REAL].reset_index(drop=True)


@pytest.fixture(scope="module")
def params(fil) -> dict:
    return fit_feature_params(fil, "risk")


@pytest.fixture(scope="module")
def ours(fil, params) -> pd.DataFrame:
    return compute_features(fil, "risk", params=params)


@pytest.fixture(scope="module")
def records(fil) -> list[dict]:
    df = fil.copy()
    df["open_time"] = df["open_time"].astype("datetime64[ms, UTC]").astype("int64")
    return df.to_dict("records")


@pytest.fixture(scope="module")
def ret(fil) -> np.ndarray:
    """r_t = ln(c_t / c_{t-1}), r_0 = 0."""
    c = fil["close"].to_numpy(np.float64)
    return np.concatenate([[0.0], np.log(c[1:] / c[:-1])])


def windows(x: np.ndarray, n: int) -> np.ndarray:
    """(N, n): the n values ending at each row (rows < n-1 padded with the first values; not compared)."""
    return sliding_window_view(np.concatenate([np.full(n - 1, x[0]), x]), n)


@pytest.fixture(autouse=True)
def _quiet_references():
    with np.errstate(divide="ignore", invalid="ignore"):  # the references' padded rows divide 0 by 0
        yield


def check(name: str, got: np.ndarray, want: np.ndarray, start: int, atol: float = 0.0) -> None:
    assert np.isfinite(want[start:]).all(), f"{name}: reference undefined"
    np.testing.assert_allclose(got[start:], want[start:], rtol=RTOL, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------------- the spec


def test_feature_set_spec():
    fs = get_feature_set("risk")
    assert fs.name == "risk" and fs.version == 1 and list(fs.names) == RISK and fs.fitted == ("risk",)
    assert FV == {
        "hill_left": 240, "hill_right": 240, "evt_var_99": 2095, "evt_es_99": 2095, "realised_skew_60": 60,
        "realised_kurt_60": 60, "semivar_up_60": 60, "semivar_down_60": 60, "jump_share_60": 60,
        "drawdown_240": 239, "variance_ratio_240": 240, "autocorr_1_240": 240, "regime_p0": 2000,
        "regime_p1": 2000, "regime_p2": 2000, "regime_p3": 2000,
    }  # fmt: skip
    assert fs.warmup == 2096
    assert 0.94**596 < 1e-16 <= 0.94**595  # the EWMA's missing history at its first exact row
    both = get_feature_set("core27+risk")
    assert both.names == get_feature_set("core27").names + fs.names and both.fitted == ("risk",)


def test_nan_exactly_before_first_valid(ours):
    for name in RISK:
        col = ours[name].to_numpy()
        assert np.isnan(col[: FV[name]]).all(), f"{name}: values before its first valid row"
        assert np.isfinite(col[FV[name] :]).all(), f"{name}: NaN after its first valid row"


def test_missing_or_bad_params_raise_naming_the_set(fil, params):
    for call in (
        lambda: compute_features(fil.iloc[:100], "risk"),
        lambda: feature_matrix(fil.iloc[:100], "core27+risk"),
        lambda: StreamingFeatures("risk"),
        lambda: StreamingFeatures.from_history(fil.iloc[:100], "core27+risk"),
    ):
        with pytest.raises(FeatureError, match="'risk'"):
            call()
    bad = {"risk": {**params["risk"], "variances": [1.0, -1.0, 1.0, 1.0]}}
    with pytest.raises(FeatureError, match="'risk'"):
        compute_features(fil.iloc[:100], "risk", params=bad)
    with pytest.raises(FeatureError, match="'risk'"):
        fit_feature_params(fil.iloc[:50], "risk")  # too few training candles
    assert fit_feature_params(fil.iloc[:100], "core27") == {}


# ------------------------------------------------------------------------ references


def test_hill_matches_sorted_windows(ours, ret):
    W = windows(ret, 240)
    k = 24
    for name, tail in (("hill_right", W), ("hill_left", -W)):
        top = -np.sort(-tail, axis=1)[:, : k + 1]  # descending
        th = top[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.log(top[:, :k]).mean(axis=1) - np.log(th)
        want = np.where(th > 0, h, 0.0)
        check(name, ours[name].to_numpy(), want, 240, atol=1e-13)
    assert (ours["hill_left"].iloc[240:] > 0).mean() > 0.95  # enough nonzero tail values here


def test_realised_moments_match_scipy(ours, ret, fil):
    W = windows(ret, 60)
    m2 = W.var(axis=1)
    assert (m2[60:] > 0).all()
    check(
        "realised_skew_60", ours["realised_skew_60"].to_numpy(), stats.skew(W, axis=1, bias=True), 60, 1e-12
    )
    kurt = stats.kurtosis(W, axis=1, fisher=True, bias=True)
    check("realised_kurt_60", ours["realised_kurt_60"].to_numpy(), kurt, 60, 1e-12)
    rv = (W * W).sum(axis=1)
    up = (W * W * (W > 0)).sum(axis=1) / rv
    down = (W * W * (W < 0)).sum(axis=1) / rv
    check("semivar_up_60", ours["semivar_up_60"].to_numpy(), up, 60, 1e-15)
    check("semivar_down_60", ours["semivar_down_60"].to_numpy(), down, 60, 1e-15)
    bv = (math.pi / 2) * (60 / 59) * (np.abs(W[:, 1:]) * np.abs(W[:, :-1])).sum(axis=1)
    check("jump_share_60", ours["jump_share_60"].to_numpy(), np.maximum(0.0, 1.0 - bv / rv), 60, 1e-12)
    c = fil["close"]
    dd = (c / c.rolling(240).max() - 1.0).to_numpy()
    check("drawdown_240", ours["drawdown_240"].to_numpy(), dd, 239)


def test_variance_ratio_and_autocorrelation_match_two_pass(ours, ret):
    n, q = 240, 5
    W = windows(ret, n)
    d = W - W.mean(axis=1, keepdims=True)
    ss = (d * d).sum(axis=1)
    ac = (d[:, 1:] * d[:, :-1]).sum(axis=1) / ss
    check("autocorr_1_240", ours["autocorr_1_240"].to_numpy(), ac, n, 1e-12)
    R = sliding_window_view(d, q, axis=1).sum(axis=2)  # q-sums of deviations = q-sum - q mu (236 of them)
    m = q * (n - q + 1) * (1 - q / n)
    vr = ((R * R).sum(axis=1) / m) / (ss / (n - 1))
    check("variance_ratio_240", ours["variance_ratio_240"].to_numpy(), vr, n, 1e-12)


def gpd_reference(y: np.ndarray) -> tuple[float, float]:
    """GPD (xi, beta) of exceedances y >= 0 from sample L-moments (Hosking & Wallis 1987)."""
    y = np.sort(y)
    k = y.size
    b0 = y.mean()
    b1 = (np.arange(k) / (k - 1) * y).mean()
    l1, l2 = b0, 2 * b1 - b0
    kappa = l1 / l2 - 2  # Hosking's k = -xi
    return -kappa, (1 + kappa) * l1


def test_evt_matches_scipy_genpareto_at_the_refit_candles(ours, ret, fil):
    s2 = pd.Series(ret * ret).ewm(alpha=0.06, adjust=False).mean().to_numpy()  # sigma^2_{t+1|t}
    prev = np.sqrt(np.concatenate([[0.0], s2[:-1]]))
    z = np.divide(-ret, prev, out=np.zeros_like(ret), where=prev > 0)
    t_ms = fil["open_time"].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    refits = np.flatnonzero(t_ms % 3_600_000 == 0)
    var = np.full(ret.size, np.nan)
    es = np.full(ret.size, np.nan)
    xis = []
    for i, s in enumerate(refits):
        if s < 1439:
            continue
        w = np.sort(z[s - 1439 : s + 1])
        u = w[-145]
        xi, beta = gpd_reference(w[-144:] - u)
        xis.append(xi)
        # P(Z > z) = (144/1440) (1 - G(z - u)): the 99 % quantile is G's 90 % quantile
        zq = stats.genpareto.ppf(0.9, xi, loc=u, scale=beta)
        ez = zq + stats.genpareto.mean(xi, scale=beta + xi * (zq - u))  # mean excess beyond z_q
        end = refits[i + 1] if i + 1 < refits.size else ret.size
        sd = np.sqrt(s2[s:end])
        var[s:end], es[s:end] = sd * zq, sd * ez
    start = FV["evt_var_99"]
    check("evt_var_99", ours["evt_var_99"].to_numpy(), var, start)
    check("evt_es_99", ours["evt_es_99"].to_numpy(), es, start)
    assert max(xis) < risk.XI_MAX  # the cap never bites here
    assert (ours["evt_es_99"].iloc[start:] > ours["evt_var_99"].iloc[start:]).all()


def test_gpd_tail_pwm_is_close_to_scipy_mle():
    """The PWM fit estimates the same tail as scipy's MLE (documented choice: PWM is ~100x faster)."""
    rng = np.random.default_rng(5)
    for xi in (-0.2, 0.0, 0.25):
        Z = stats.genpareto.rvs(xi, scale=0.7, size=(3, 1440), random_state=rng) + 1.0
        got = risk.gpd_tail(Z)
        for row, g in zip(Z, got, strict=True):
            u = np.sort(row)[-145]
            c, _, scale = stats.genpareto.fit(np.sort(row)[-144:] - u, floc=0)
            assert abs(g[0] - u) == 0 and abs(g[1] - c) < 0.2 and abs(g[2] / scale - 1) < 0.3
            assert abs(g[3] / stats.genpareto.ppf(0.9, c, loc=u, scale=scale) - 1) < 0.1


# ------------------------------------------------------------------------------- regime HMM


def test_fitted_params_are_json_and_sorted(params, fil):
    p = params["risk"]
    assert json.loads(json.dumps(params)) == params
    assert p["n_states"] == 4 and p["n_obs"] == N_REAL - 1 and p["converged"]
    assert np.all(np.diff(p["variances"]) > 0)  # labels sorted by variance
    A = np.array(p["transmat"])
    np.testing.assert_allclose(A.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert p["log_likelihood"] >= max(p["restart_log_likelihoods"]) - 1e-6
    # a round trip through JSON gives the same features (floats survive JSON exactly)
    again = compute_features(fil.iloc[:3000], "risk", params=json.loads(json.dumps(params)))
    np.testing.assert_array_equal(again.to_numpy(), compute_features(fil.iloc[:3000], "risk", params=params))


def test_fit_is_deterministic(fil):
    a = fit_feature_params(fil.iloc[:6000], "risk")
    b = fit_feature_params(fil.iloc[:6000].copy(), "risk")
    assert a == b


def simulate_hmm(rng, mu, var, A, T):
    s = np.empty(T, dtype=int)
    s[0] = 0
    u = rng.random(T)
    cum = np.cumsum(A, axis=1)
    for t in range(1, T):
        s[t] = np.searchsorted(cum[s[t - 1]], u[t])
    return rng.normal(np.asarray(mu)[s], np.sqrt(np.asarray(var)[s])), s


def test_hmm_recovers_a_known_model():
    rng = np.random.default_rng(11)
    scale = 1e-3  # return-sized numbers
    mu = np.array([0.0, 0.1, -0.2, 0.3]) * scale
    var = np.array([0.2, 1.0, 4.0, 16.0]) * scale**2
    A = np.full((4, 4), 0.01 / 3) + np.eye(4) * (0.99 - 0.01 / 3)
    order = [2, 0, 3, 1]  # generate with shuffled labels: the fit must sort them by variance
    x, _ = simulate_hmm(rng, mu[order], var[order], A, 30000)
    h = risk.fit_hmm(x)
    # measured: variances within 1.7 %, means within 0.015 sd, transition entries within 0.0021
    np.testing.assert_allclose(h["variances"], var, rtol=0.05)
    assert (np.abs(h["means"] - mu) < 0.05 * np.sqrt(var)).all(), h["means"]
    np.testing.assert_allclose(h["transmat"], A, rtol=0, atol=0.005)
    assert np.all(np.diff(h["variances"]) > 0) and h["converged"]


def forward_reference(r: np.ndarray, p: dict) -> np.ndarray:
    """Plain forward algorithm: P(s_t | r_1..r_t) for t >= 1 (row 0: the prior), densities from scipy."""
    mu, var = np.array(p["means"]), np.array(p["variances"])
    A, pi = np.array(p["transmat"]), np.array(p["startprob"])
    dens = stats.norm.pdf(r[1:, None], loc=mu, scale=np.sqrt(var))
    out = np.empty((r.size, 4))
    out[0] = pi
    prior = pi
    for t in range(1, r.size):
        a = prior * dens[t - 1]
        out[t] = a / a.sum()
        prior = out[t] @ A
    return out


def test_filtered_probabilities_match_a_forward_reference(ours, ret, params):
    got = ours[[f"regime_p{j}" for j in range(4)]].to_numpy()
    want = forward_reference(ret, params["risk"])
    np.testing.assert_allclose(got[2000:], want[2000:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[2000:].sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert got[2000:].argmax(axis=1).min() == 0 and got[2000:].argmax(axis=1).max() >= 2  # regimes do change


# ---------------------------------------------------------------------- streaming == batch


@pytest.mark.parametrize("feature_set", ["risk", "core27+risk"])
def test_streaming_equals_batch_bit_for_bit(fil, records, params, feature_set):
    n = 12000
    want = compute_features(fil.iloc[:n], feature_set, params=params).to_numpy()
    sf = StreamingFeatures(feature_set, interval_ms=60_000, params=params)
    got = np.empty_like(want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division / log warnings on the serving path
        for i in range(n):
            got[i] = sf.update(records[i])
    np.testing.assert_array_equal(got, want)  # NaN == NaN during warm-up
    assert np.isfinite(got[sf.feature_set.warmup - 1 :]).all()


# ------------------------------------------------------------------------- no look-ahead


def test_no_look_ahead(fil, ours, params):
    full = ours.to_numpy()
    rng = np.random.default_rng(7)
    cuts = np.concatenate([[1, 2, 241, 2096, 8193, 8196], rng.integers(2, N_REAL, size=5)])  # M = 1, 4 tails
    for cut in cuts:
        part = compute_features(fil.iloc[:cut], "risk", params=params).to_numpy()
        np.testing.assert_array_equal(part, full[:cut], err_msg=f"prefix of {cut}")


def test_future_candles_do_not_change_the_past(fil, ours, params):
    spoiled = fil.copy()
    spoiled.loc[5000:, "close"] *= np.linspace(1.0, 3.0, len(spoiled) - 5000)
    got = compute_features(spoiled, "risk", params=params).to_numpy()
    np.testing.assert_array_equal(got[:5000], ours.to_numpy()[:5000])


# --------------------------------------------------------------------------- from_history


@pytest.mark.parametrize("feature_set", ["risk", "core27+risk"])
def test_from_history_window_gives_the_full_history_row(fil, records, params, feature_set):
    w = get_feature_set(feature_set).warmup
    full = compute_features(fil.iloc[: 12000 + w + 300], feature_set, params=params).to_numpy()
    for start in (3100, 12000):
        window = fil.iloc[start : start + w]
        sf = StreamingFeatures.from_history(window, feature_set, params=params)
        assert sf.ready and sf.count == w
        last = compute_features(window, feature_set, params=params).to_numpy()[-1]
        assert np.isfinite(last).all()
        np.testing.assert_allclose(last, full[start + w - 1], rtol=1e-9, atol=1e-12)
        got = np.array([sf.update(r) for r in records[start + w : start + w + 300]])
        np.testing.assert_allclose(got, full[start + w : start + w + 300], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- flat candles


def test_flat_stretch_gives_the_documented_defaults(fil, params):
    a, b = 2500, 3000  # 500 unchanged closes inside real data
    df = fil.iloc[:3300].copy()
    df.loc[a : b - 1, ["open", "high", "low", "close"]] = df.loc[a - 1, "close"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = compute_features(df, "risk", params=params)
        sf = StreamingFeatures.from_history(df.iloc[:2200], "risk", params=params)
        streamed = np.array([sf.update(r) for r in df.iloc[2200:].assign(
            open_time=df["open_time"].iloc[2200:].astype("datetime64[ms, UTC]").astype("int64")
        ).to_dict("records")])  # fmt: skip
    np.testing.assert_array_equal(streamed, f.iloc[2200:].to_numpy())
    late = f.iloc[a + 240 : b]  # every window (<= 240 returns) inside the flat stretch
    for name, value in (
        ("hill_left", 0.0), ("hill_right", 0.0), ("realised_skew_60", 0.0), ("realised_kurt_60", 0.0),
        ("semivar_up_60", 0.5), ("semivar_down_60", 0.5), ("jump_share_60", 0.0), ("drawdown_240", 0.0),
        ("variance_ratio_240", 1.0), ("autocorr_1_240", 0.0),
    ):  # fmt: skip
        assert (late[name] == value).all(), name
    assert np.isfinite(f.iloc[2096:].to_numpy()).all()
    assert late["regime_p0"].iloc[-1] > 0.5  # no movement: the calmest regime
