"""Drift of live features and model outputs against a model's reference profile, with a calibrated alarm.

The statistic (PSI or binned KS, `pipelines.contracts.profile`) of a column compares the counts of its
last `window` live rows in the profile's quantile bins with the reference shares; it is evaluated every
`step` rows. On 1-minute market data these rows are strongly autocorrelated and the days differ
(volume regimes, the intraday cycle, the price level), so a textbook threshold (a KS test at p < 0.05,
PSI > 0.2) fires nearly all the time. The ALARM is calibrated instead: `calibrate_alarm` replays no-drift
history (a moving circular block bootstrap with blocks of at least a day, so each window keeps its
autocorrelation and every block a whole intraday cycle) into many 30-day paths and picks per-column
thresholds, all at the same rank of the per-path maxima, such that the expected number of alarm
episodes (any column, `consecutive` evaluations in a row above threshold) per 30 days meets the target
(held to a third of it in the replays: tail thresholds from one month of history are optimistic, see
BOOTSTRAP_OPTIMISM). A column whose no-drift windows already reach the statistic's ceiling (the price
level: a day sits in one or two deciles of a month) is listed as saturated and never fires.

The calibration is out of sample: the history is split in two halves, a profile is built on one and
the other is replayed against it, then the halves swap (a profile compared with its own rows reads
small and would set thresholds too low).

`profile_at_training` builds the profile stored in the bundle's manifest; `live_frame` computes the same
columns from stored candles; `evaluate_drift` (the monitor's check) and `replay` (reports, benchmarks)
apply the alarm. Serving counts live values online into the same bins (pure numpy in the contracts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contracts.bundle import Manifest
from pipelines.contracts.errors import KairosError
from pipelines.contracts.profile import PSI_FLOOR, STATISTICS_ROWS, ReferenceProfile, bin_index, build_profile

BINS = 10  # quantile bins per column: deciles
DEFAULT_STATISTIC = "ks"  # binned KS: bounded, and on real 1m data fewer false alarms than PSI at equal power
DEFAULT_WINDOW = 1440  # rows: a day of 1m candles, so the intraday cycle averages out of every window
DEFAULT_STEP = 60  # rows between evaluations (hourly on 1m candles)
DEFAULT_CONSECUTIVE = 2  # evaluations in a row above threshold before the alarm fires
DEFAULT_BLOCK_DAYS = 1.0  # bootstrap blocks: whole intraday cycles
DEFAULT_PATHS = 64  # bootstrap paths per calibration fold (two folds)
# Thresholds picked in the tail of one month of history are optimistic: on fresh data from the same
# process (an AR(1) with daily seasonality and day-level regimes, tests/unit/test_drift.py) alarms come
# about 3x as often as in the bootstrap replays (the replays reuse ~15 distinct days per half, and the
# threshold sits where the sample's own extremes are). So the replays are held to a third of the target.
BOOTSTRAP_OPTIMISM = 3.0
PATH_DAYS = 30
MAX_EVALUATIONS = 720  # per bootstrap path (30 days of hourly evaluations)
SATURATION = 0.8  # no-drift peaks at this share of the statistic's ceiling: the column cannot alarm
MIN_WINDOW = 30  # rows: below this a window's histogram is noise; shorter histories are not calibrated


class DriftError(KairosError):
    """Drift input does not fit the profile (missing column, too few rows, no calibrated alarm)."""


@dataclass(frozen=True)
class DriftCheck:
    """One column's drift statistic over the last `rows` live rows against its calibrated threshold."""

    name: str
    kind: str  # "feature" | "output"
    statistic: str  # "psi" | "ks"
    value: float  # the newest evaluation (NaN when the window holds no finite value)
    threshold: float  # NaN: the column could not be calibrated and never fires
    fired: bool  # the newest `consecutive` evaluations are all above threshold
    rows: int


# ---------------------------------------------------------------------------------------------------
# Window statistics


def _values(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        raise DriftError(
            f"live data has no column {name!r} of the reference profile; build it with live_frame "
            "(features and outputs named as the profile's)"
        )
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _cumulative_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """(n + 1, B) int32: counts per bin of values[:i] (NaN counted nowhere)."""
    idx = bin_index(values, edges)
    n, b = len(idx), len(edges) + 1
    onehot = np.zeros((n + 1, b), np.int32)
    ok = np.flatnonzero(idx >= 0)
    onehot[ok + 1, idx[ok]] = 1
    return np.cumsum(onehot, axis=0, out=onehot)


def window_statistics(
    profile: ReferenceProfile, frame: pd.DataFrame, ends: np.ndarray, window: int, statistic: str
) -> np.ndarray:
    """(E, C): the statistic of each profile column over rows [end - window, end) for each end."""
    stat = _statistic(statistic)
    ends = np.asarray(ends, dtype=np.int64)
    out = np.empty((len(ends), len(profile.columns)))
    for j, col in enumerate(profile.columns):
        cum = _cumulative_counts(_values(frame, col.name), col.edges)
        out[:, j] = stat(col.shares, cum[ends] - cum[ends - window])
    return out


def _statistic(name: str):
    if name not in STATISTICS_ROWS:
        raise DriftError(f"unknown drift statistic {name!r}; expected one of {sorted(STATISTICS_ROWS)}")
    return STATISTICS_ROWS[name]


def _rolling_min(values: np.ndarray, k: int) -> np.ndarray:
    """min over the last k rows (axis -2) of (..., E, C); NaN for the first k - 1 rows (or any NaN)."""
    out = values.copy()
    for i in range(1, k):
        out[..., i:, :] = np.minimum(out[..., i:, :], values[..., :-i, :])
        out[..., :i, :] = np.nan
    return out


def _thresholds(profile: ReferenceProfile, alarm: dict[str, Any]) -> np.ndarray:
    """(C,) the alarm's thresholds in the profile's column order (NaN: never fires)."""
    missing = [n for n in profile.names() if n not in alarm.get("thresholds", {})]
    if missing:
        raise DriftError(f"the profile's alarm has no threshold for {missing}; recalibrate the profile")
    return np.array([np.nan if (t := alarm["thresholds"][n]) is None else float(t) for n in profile.names()])


def _alarm(profile: ReferenceProfile) -> dict[str, Any]:
    alarm = profile.alarm
    if not alarm or not alarm.get("thresholds"):
        why = alarm.get("method", "no alarm was stored") if alarm else "no alarm was stored"
        raise DriftError(f"the reference profile has no calibrated alarm ({why}); retrain the model")
    return alarm


def evaluate_drift(profile: ReferenceProfile, live: pd.DataFrame) -> list[DriftCheck]:
    """One check per profile column over the last `profile.alarm["window"]` rows of `live`.

    `live` holds the profile's columns (features and outputs, e.g. from `live_frame`), oldest first. A
    column fires when its statistic is above threshold at the newest evaluation and at the
    `consecutive - 1` evaluations before it (every `step` rows back), as in the calibration; with too few
    rows for those earlier evaluations nothing fires yet.

    Raises:
        DriftError: no calibrated alarm, a profile column missing from `live`, fewer rows than a window.
    """
    alarm = _alarm(profile)
    window, step, k = int(alarm["window"]), int(alarm["step"]), int(alarm["consecutive"])
    n = len(live)
    if n < window:
        raise DriftError(f"drift needs {window} live rows (the alarm's window); got {n}")
    ends = np.array([n - i * step for i in range(k) if n - i * step >= window][::-1])
    values = window_statistics(profile, live, ends, window, alarm["statistic"])
    thr = _thresholds(profile, alarm)
    fired = (values > thr).all(axis=0) & (len(ends) == k)
    return [
        DriftCheck(
            c.name, c.kind, alarm["statistic"], float(values[-1, j]), float(thr[j]), bool(fired[j]), window
        )
        for j, c in enumerate(profile.columns)
    ]


def replay(
    profile: ReferenceProfile,
    frame: pd.DataFrame,
    *,
    alarm: dict[str, Any] | None = None,
    first_end: int | None = None,
) -> pd.DataFrame:
    """The alarm's statistic evaluated every `step` rows over a long frame, as the monitor would.

    Args:
        profile: the reference profile (bins, kinds).
        frame: the profile's columns, oldest first; its index (e.g. open_time) gives each evaluation's time.
        alarm: the alarm to apply (default `profile.alarm`), e.g. another window or statistic.
        first_end: row where the first window ends (exclusive; default `window`); later evaluations
            follow every `step` rows.

    Returns:
        Long frame, one row per evaluation and column: time (of the window's last row), column, kind,
        value, threshold, fired (the consecutive rule over this replay's evaluations).
    """
    alarm = alarm or _alarm(profile)
    window, step, k = int(alarm["window"]), int(alarm["step"]), int(alarm["consecutive"])
    first = window if first_end is None else max(int(first_end), window)
    ends = np.arange(first, len(frame) + 1, step)
    if len(ends) == 0:
        raise DriftError(f"replay needs at least {first} rows (the alarm's window); got {len(frame)}")
    values = window_statistics(profile, frame, ends, window, alarm["statistic"])
    thr = _thresholds(profile, alarm)
    fired = _rolling_min(values, k) > thr
    names, kinds = profile.names(), [c.kind for c in profile.columns]
    C = len(names)
    return pd.DataFrame(
        {
            "time": np.repeat(np.asarray(frame.index[ends - 1]), C),
            "column": np.tile(names, len(ends)),
            "kind": np.tile(kinds, len(ends)),
            "value": values.ravel(),
            "threshold": np.tile(thr, len(ends)),
            "fired": fired.ravel(),
        }
    )


def alarm_episodes(replayed: pd.DataFrame) -> pd.DataFrame:
    """Model-level alarms of a `replay`: each run of evaluations where any column fires is one episode.

    Returns one row per episode: start (time of its first firing evaluation), end (its last),
    evaluations, columns (those that fired during it, comma-joined).
    """
    wide = replayed.pivot_table(index="time", columns="column", values="fired", aggfunc="any", sort=True)
    any_fired = wide.any(axis=1).to_numpy()
    starts = np.flatnonzero(any_fired & ~np.r_[False, any_fired[:-1]])
    stops = np.flatnonzero(any_fired & ~np.r_[any_fired[1:], False])
    rows = []
    for a, b in zip(starts, stops):
        block = wide.iloc[a : b + 1]
        rows.append(
            {
                "start": wide.index[a],
                "end": wide.index[b],
                "evaluations": int(b - a + 1),
                "columns": ",".join(block.columns[block.any(axis=0).to_numpy()]),
            }
        )
    return pd.DataFrame(rows, columns=["start", "end", "evaluations", "columns"])


# ---------------------------------------------------------------------------------------------------
# Calibration


def _bootstrap_statistics(
    reference: pd.DataFrame,
    holdout: pd.DataFrame,
    names: list[str],
    *,
    statistic: str,
    window: int,
    step: int,
    block: int,
    path_rows: int,
    paths: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(paths, E, C) float32: statistics of `holdout`'s bootstrapped paths against a profile of `reference`.

    A path is `path_rows` rows made of blocks of `block` consecutive holdout rows, each starting at a
    uniform random row (circular: a block may wrap from the holdout's end to its start). Windows are
    never longer than a block, so each spans at most two blocks; its counts are differences of the
    holdout's cumulative counts, without building the paths. float32: thresholds need no more.
    """
    _statistic(statistic)
    cal = build_profile({n: _values(reference, n) for n in names}, bins=BINS)
    n_h = len(holdout)
    ends = np.arange(window, path_rows + 1, step)  # (E,)
    a = ends - window
    kb, off = a // block, a % block
    len1 = np.minimum(window, block - off)
    len2 = window - len1
    starts = rng.integers(0, n_h, size=(paths, int(kb.max()) + 2))
    s1 = starts[:, kb] + off  # (P, E)
    s2 = starts[:, kb + 1]
    out = np.empty((paths, len(ends), len(names)), np.float32)
    for j, col in enumerate(cal.columns):
        v = _values(holdout, col.name)
        cum = _cumulative_counts(np.concatenate([v, v[:block]]), col.edges)  # (n_h + block + 1, B)
        if statistic == "ks":  # cumulate over bins first: each window's CDF counts are then differences
            cum = np.cumsum(cum, axis=1, out=cum)
        c = (cum[s1 + len1] - cum[s1] + cum[s2 + len2] - cum[s2]).astype(np.float32)  # (P, E, B)
        out[:, :, j] = _fast_statistic(statistic, col.shares, c)
    return out


def _fast_statistic(statistic: str, shares: list[float], c: np.ndarray) -> np.ndarray:
    """PSI / binned KS of window counts c (..., B) (KS: counts already cumulated over bins), float32."""
    q = np.asarray(shares, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        if statistic == "ks":
            total = c[..., -1:]
            return np.where(total[..., 0] > 0, np.abs(c / total - np.cumsum(q)).max(axis=-1), np.nan)
        total = c.sum(axis=-1, keepdims=True)
        p = np.maximum(c / total, np.float32(PSI_FLOOR))
        q = np.maximum(q, np.float32(PSI_FLOOR))
        return np.where(total[..., 0] > 0, ((p - q) * np.log(p / q)).sum(axis=-1), np.nan)


def ceiling_of(shares: list[float], statistic: str) -> float:
    """The largest value the statistic can take against these reference shares (all rows in one bin)."""
    b = len(shares)
    return float(np.nanmax(_statistic(statistic)(shares, np.eye(b)))) if b else 0.0


def _rising_edges(fired: np.ndarray) -> np.ndarray:
    """(P,) alarm episodes per path: rising edges of `fired` (P, E) along E (a path firing from its start counts)."""
    return (fired & ~np.concatenate([np.zeros((len(fired), 1), bool), fired[:, :-1]], axis=1)).sum(axis=1)


def fit_window(rows: int, window: int = DEFAULT_WINDOW, step: int = DEFAULT_STEP) -> tuple[int, int]:
    """(window, step) that fit a calibration history of `rows` rows: each half must hold 3 windows.

    Short histories (tests, coarse intervals) get a proportionally shorter window and step; a window
    below MIN_WINDOW rows cannot be calibrated (DriftError).
    """
    w = min(window, rows // 6)
    if w < MIN_WINDOW:
        raise DriftError(
            f"a drift alarm needs at least {6 * MIN_WINDOW} history rows to calibrate; got {rows}"
        )
    return w, max(1, min(step, round(step * w / window)))


def calibrate_alarm(
    profile: ReferenceProfile,
    history: pd.DataFrame,
    *,
    window: int,
    step: int,
    target_false_alarms_per_30d: float = 1.0,
    seed: int = 0,
    interval_minutes: int = 1,
    statistic: str = DEFAULT_STATISTIC,
    consecutive: int = DEFAULT_CONSECUTIVE,
    paths: int = DEFAULT_PATHS,
    block_days: float = DEFAULT_BLOCK_DAYS,
    optimism: float = BOOTSTRAP_OPTIMISM,
) -> dict[str, Any]:
    """The alarm dict stored in `profile.alarm`: per-column thresholds from replayed no-drift history.

    Each bootstrap path gives, per column, its peak: the largest value that stayed above for
    `consecutive` evaluations in a row. Every column's threshold is its m-th largest peak over the
    paths (one rank m for all columns: the same tail level each, a Bonferroni-like spread), with m the
    largest rank whose expected alarm episodes (any column) per 30 days stay within the target.

    Args:
        profile: the reference profile (its columns are calibrated; its bins are not used: each half
            of the history gets its own profile, see the module docstring).
        history: no-drift rows of the profile's columns, oldest first (e.g. the training window).
        window: rows per evaluated window. step: rows between evaluations.
        target_false_alarms_per_30d: expected alarm episodes per 30 days of no-drift data, per model.
        seed: of the bootstrap.
        interval_minutes: candle length, to turn 30 days and a day-long block into rows.
        statistic: "psi" or "ks". consecutive: evaluations in a row above threshold to fire.
        paths: bootstrap paths of 30 days per half.
        block_days: bootstrap block length in days (at least a window).
        optimism: the bootstrap is held to target / optimism (see BOOTSTRAP_OPTIMISM).

    Returns:
        {"statistic", "window", "step", "consecutive", "thresholds": {column: float | None},
        "saturated": [column], "target_false_alarms_per_30d", "interval_minutes", "method",
        "calibration": {...}} (JSON-ready; a None threshold never fires).

    Raises:
        DriftError: a profile column missing from `history`, or a history too short for the window.
    """
    if window < 1 or step < 1 or consecutive < 1 or paths < 2:
        raise DriftError(
            f"window, step, consecutive must be >= 1 and paths >= 2; got {window}, {step}, {consecutive}, {paths}"
        )
    if optimism < 1:
        raise DriftError(f"optimism must be >= 1 (the bootstrap cannot be pessimistic), got {optimism}")
    if target_false_alarms_per_30d <= 0:
        raise DriftError(f"target_false_alarms_per_30d must be > 0, got {target_false_alarms_per_30d}")
    _statistic(statistic)
    names = profile.names()
    for n in names:
        _values(history, n)  # names the first missing column
    half = len(history) // 2
    if half < 3 * window:
        raise DriftError(
            f"calibrating a {window}-row window needs {6 * window} history rows (two halves of 3 windows); "
            f"got {len(history)}: shorten the window (fit_window) or supply more history"
        )
    day = max(1, 1440 // interval_minutes)
    block = max(window, min(round(block_days * day), half))  # a block never longer than a half
    # Paths of 30 days, or shorter where a short step would give more than MAX_EVALUATIONS each (rates are
    # per evaluated row, so a shorter path only changes which rank meets the target, not the rate)
    path_rows = min(PATH_DAYS * day, window + (MAX_EVALUATIONS - 1) * step)
    if (path_rows - window) // step + 1 < consecutive:
        raise DriftError(f"a {PATH_DAYS}-day path holds fewer than {consecutive} evaluations of step {step}")
    rng = np.random.default_rng(seed)
    first, second = history.iloc[:half], history.iloc[half:]
    kw = dict(
        statistic=statistic, window=window, step=step, block=block, path_rows=path_rows, paths=paths, rng=rng
    )
    run = _rolling_min(
        np.concatenate(
            [
                _bootstrap_statistics(first, second, names, **kw),
                _bootstrap_statistics(second, first, names, **kw),
            ]
        ),
        consecutive,
    )  # (N, E, C): the value that must exceed a threshold to fire
    run[np.isnan(run)] = -np.inf  # never fires
    peaks = run.max(axis=1)  # (N, C) per-path peaks
    N, E, C = run.shape

    # A column whose no-drift windows routinely come near the statistic's ceiling (all rows in one bin:
    # the price level, whose day spans a decile or two of a month) cannot show drift: it gets no threshold.
    ceiling = np.array([ceiling_of(c.shares, statistic) for c in profile.columns])
    with np.errstate(invalid="ignore"):  # a column without finite peaks interpolates -inf: NaN
        saturated = (np.quantile(peaks, 0.9, axis=0) >= SATURATION * ceiling) | (ceiling <= 0)
    saturated |= ~np.isfinite(peaks).any(axis=0)

    # n_ge[p, e, c] = how many peaks of column c are >= run[p, e, c]; the column fires at rank m (threshold
    # = its m-th largest peak) iff n_ge < m, so the model fires iff min over columns of n_ge < m.
    sorted_peaks = np.sort(peaks, axis=0)
    g = np.full((N, E), N, np.int32)
    for j in np.flatnonzero(~saturated):
        n_ge = N - np.searchsorted(sorted_peaks[:, j], run[:, :, j].ravel(), side="left").reshape(N, E)
        np.minimum(g, n_ge, out=g)
    per_30d = PATH_DAYS * day / (E * step)  # evaluations cover E * step rows of each path

    def rate(m: int) -> float:
        return float(_rising_edges(g < m).mean() * per_30d)

    goal = target_false_alarms_per_30d / optimism
    lo, hi = 1, N  # rate(1) = 0 (nothing exceeds the largest peak); the largest m with rate <= goal
    if rate(hi) <= goal:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if rate(mid) <= goal else (lo, mid)
    thr = sorted_peaks[N - lo]
    return {
        "statistic": statistic,
        "window": int(window),
        "step": int(step),
        "consecutive": int(consecutive),
        "thresholds": {
            n: (None if saturated[j] or not np.isfinite(thr[j]) else float(thr[j]))
            for j, n in enumerate(names)
        },
        "saturated": [n for n, s in zip(names, saturated) if s],
        "target_false_alarms_per_30d": float(target_false_alarms_per_30d),
        "interval_minutes": int(interval_minutes),
        "method": (
            f"moving circular block bootstrap of no-drift history ({block}-row blocks), each half replayed "
            f"against a profile of the other, {N} paths of {path_rows / day:.3g} days; every column's threshold is "
            f"its {lo}-th largest per-path peak of {consecutive} consecutive evaluations, the largest rank "
            f"whose expected alarm episodes (any column) per 30 days in the replays <= target / {optimism:g} "
            "(thresholds picked in the tail of 30 days of history are optimistic by about that factor)"
        ),
        "calibration": {
            "history_rows": int(len(history)),
            "reference_rows": int(half),
            "block_rows": int(block),
            "path_rows": int(path_rows),
            "blocks_per_path": int(-(-path_rows // block)),
            "replays": int(N),
            "evaluations_per_replay": int(E),
            "rank": int(lo),
            "tail_level": lo / N,
            "achieved_false_alarms_per_30d": rate(lo),  # in the replays, before the optimism factor
            "optimism": float(optimism),
            "seed": int(seed),
        },
    }


# ---------------------------------------------------------------------------------------------------
# Profiles at training time, live frames at monitoring time


def model_outputs(
    onnx_bytes: bytes, manifest: Manifest, X: np.ndarray, batch: int = 4096
) -> dict[str, np.ndarray]:
    """Every tensor output of the graph on model inputs X ((N, F) or (N, T, F)), named as `score_candles`
    names them (`pipelines.training.predict.output_columns`), as float64 columns."""
    from pipelines.contracts.onnx import make_session
    from pipelines.training.predict import output_columns

    sess = make_session(onnx_bytes, threads=1)
    inp = sess.get_inputs()[0].name
    metas = [o for o in sess.get_outputs() if o.type.startswith("tensor(")]
    names = [o.name for o in metas]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(X), batch):
        chunk = np.ascontiguousarray(X[i : i + batch], dtype=np.float32)
        for n, v in zip(names, sess.run(names, {inp: chunk})):
            parts[n].append(np.asarray(v, dtype=np.float64).reshape(len(chunk), -1))
    specs = {o.name: o for o in manifest.outputs}
    out: dict[str, np.ndarray] = {}
    for n in names:
        values = np.concatenate(parts[n]) if parts[n] else np.empty((0, 1))
        for j, col in enumerate(output_columns(n, values.shape[1], specs.get(n))):
            out[col] = values[:, j]
    return out


def reference_profile(
    history: pd.DataFrame,
    kinds: dict[str, str] | None = None,
    *,
    profile_rows: int,
    interval_minutes: int = 1,
    window: int | None = None,
    step: int | None = None,
    **alarm: Any,
) -> ReferenceProfile:
    """A profile of the newest `profile_rows` rows of `history` (every column), with its alarm calibrated
    on all of `history`.

    Args:
        history: the columns to profile (features and outputs), oldest first, indexed by time.
        kinds: column → "output" (default "feature").
        profile_rows: the newest rows that form the reference (the final training window).
        interval_minutes: the candle length.
        window, step: of the alarm (default a day and an hour of candles, shortened by `fit_window`
            where the history is too short for them).
        alarm: more `calibrate_alarm` arguments (statistic, consecutive, target_false_alarms_per_30d, ...).

    A history too short to calibrate gives a profile whose alarm says why (`evaluate_drift` refuses it).
    """
    if not 0 < profile_rows <= len(history):
        raise DriftError(
            f"profile_rows must be in [1, {len(history)}] (the history's rows), got {profile_rows}"
        )
    ref = history.iloc[len(history) - profile_rows :]
    t = pd.DatetimeIndex(pd.to_datetime(ref.index, utc=True)) if len(ref) else None
    profile = build_profile(
        {n: _values(ref, n) for n in history.columns},
        kinds,
        bins=BINS,
        window={"start": t[0].isoformat(), "end": t[-1].isoformat(), "rows": int(profile_rows)},
    )
    day = max(1, 1440 // interval_minutes)
    try:
        w, s = fit_window(
            len(history),
            window=window or min(DEFAULT_WINDOW, day),
            step=step or max(1, DEFAULT_STEP // interval_minutes),
        )
        calibrated = calibrate_alarm(
            profile, history, window=w, step=s, interval_minutes=interval_minutes, **alarm
        )
    except DriftError as e:  # too little history: the bundle says why instead of carrying a bad alarm
        calibrated = {"method": f"not calibrated: {e}", "thresholds": {}}
    return replace(profile, alarm=calibrated)


def profile_at_training(
    onnx_bytes: bytes,
    manifest: Manifest,
    X: np.ndarray,
    *,
    feature_rows: np.ndarray,
    profile_rows: int,
    times: pd.Series,
    interval_minutes: int = 1,
    **alarm: Any,
) -> ReferenceProfile:
    """The reference profile of a freshly trained model (`reference_profile` of its features and outputs).

    Args:
        onnx_bytes, manifest: the exported graph and its manifest (feature names, outputs).
        X: the model inputs of the history rows ((N, F) or sequence windows (N, T, F)), oldest first.
        feature_rows: (N, F) each row's own feature values (for sequence models the windows' last rows).
        profile_rows: the newest rows that form the reference (the final training window).
        times: (N,) open times of the rows.
        interval_minutes: the candle length.
        alarm: more `calibrate_alarm` arguments.
    """
    names = list(manifest.feature_set.names)
    columns = {n: np.asarray(feature_rows[:, j], dtype=np.float64) for j, n in enumerate(names)}
    outputs = model_outputs(onnx_bytes, manifest, X)
    columns.update(outputs)
    history = pd.DataFrame(columns, index=pd.DatetimeIndex(pd.to_datetime(np.asarray(times), utc=True)))
    return reference_profile(
        history,
        {n: "output" for n in outputs},
        profile_rows=profile_rows,
        interval_minutes=interval_minutes,
        **alarm,
    )


def live_frame(onnx_bytes: bytes, manifest: Manifest, candles: pd.DataFrame) -> pd.DataFrame:
    """Features and model outputs of stored candles, columns named as the profile's, indexed by open_time.

    Only scored rows are kept (past the feature warm-up, and for sequence models a full window), so the
    first `history_rows(manifest)` candles give no row. Features come from the one shared feature code
    with the manifest's fitted parameters, outputs from the bundle's graph (`score_candles`).
    """
    from pipelines.features import compute_features
    from pipelines.training.predict import KEY_COLUMNS, score_candles

    fs = manifest.feature_set
    candles = candles.reset_index(drop=True)
    feats = compute_features(candles, fs.name, fs.params or None)[list(fs.names)].reset_index(drop=True)
    scored = score_candles(candles, onnx_bytes, manifest)
    keep = scored["scored"].to_numpy(bool)
    outputs = scored.drop(columns=list(KEY_COLUMNS)).astype("float64")
    frame = pd.concat([feats.astype("float64"), outputs], axis=1).loc[keep]
    frame.index = pd.DatetimeIndex(pd.to_datetime(scored["open_time"][keep], utc=True), name="open_time")
    return frame
