"""Training pooled over many symbols' event windows: the whale task's trainer (`kairos train --task whale`).

A pump-and-dump window is four days of one symbol, so a useful whale model learns from many windows
(symbols) at once, on scale-free features. Each window is a **segment**: one symbol's contiguous
candles (+ trade minutes), with its announced event time when known. Segments are kept whole:

    features, labels and rule inputs are computed per segment (no window reads another's candles);
    the evaluation trains on the earliest segments and tests on the `test_segments` latest (by start
    time), so a window never straddles train and test and the test is later in time than training;
    inside training, calibration and threat thresholds come from group folds of whole segments.

The final model is refitted on every segment and exported as one ONNX graph (pipelines.models.whale).
The report has the task's metrics for the model and its rules on the test rows, event-level detection
(share of announced pumps flagged within 2 minutes, median delay, false alerts per day away from
events), and the realised share of normal test minutes at each threat level beside its stated rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import TrainingConfig
from pipelines.contracts.newest_window import NewestWindow
from pipelines.tasks import Task, nested_report
from pipelines.training.walk_forward import (
    Progress,
    TrainingError,
    TrainResult,
    _manifest,
    data_hash,
    usable_rows,
)

NORMAL_AWAY_MIN = 60  # minutes either side of an announced event that are never "normal"
ALERT_MERGE_MIN = 30  # alarms within this many minutes of the previous one are one alert
DETECT_WITHIN_MIN = 2  # an event counts as detected by an alarm within this many minutes of its start


@dataclass(frozen=True)
class Segment:
    """One symbol's contiguous candles (with trade-minute columns when the label needs them)."""

    symbol: str
    frame: pd.DataFrame  # candle contract columns (+ max_order_quote, order_p999_24h, ...), oldest first
    events: tuple[pd.Timestamp, ...] = ()  # announced event starts inside the segment (UTC, to the minute)

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.frame["open_time"].iloc[0])

    @property
    def name(self) -> str:
        return f"{self.symbol}@{self.start:%Y-%m-%d}"


def split_segments(
    frame: pd.DataFrame,
    symbol: str,
    events: Sequence[pd.Timestamp] = (),
    max_gap: str = "6h",
    max_len: str | None = None,
) -> list[Segment]:
    """A symbol's stored candles cut at gaps longer than `max_gap` into segments, and segments longer
    than `max_len` (e.g. "4D": a months-long kline series becomes windows the time-ordered evaluation can
    hold out) into consecutive pieces (a last piece shorter than half of `max_len` stays with the one
    before); each gets the `events` that fall inside it."""
    if frame.empty:
        return []
    t = pd.to_datetime(frame["open_time"], utc=True).reset_index(drop=True)
    cut = np.flatnonzero(t.diff().to_numpy() > pd.Timedelta(max_gap).to_timedelta64()) if len(t) > 1 else []
    bounds = [0, *cut.tolist(), len(t)]
    if max_len:
        step, pieces = pd.Timedelta(max_len), [0]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            start = t[lo]
            for i in range(lo + 1, hi):
                if t[i] - start >= step and t[hi - 1] - t[i] >= step / 2:  # no stub shorter than half a piece
                    pieces.append(i)
                    start = t[i]
            pieces.append(hi)
        bounds = sorted(set(pieces))
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = frame.iloc[lo:hi].reset_index(drop=True)
        first, last = t[lo], t[hi - 1]
        inside = tuple(sorted(pd.Timestamp(e) for e in events if first <= pd.Timestamp(e) <= last))
        out.append(Segment(symbol, part, inside))
    return out


def segments_from_trade_files(paths: Sequence[Any], events_csv: Any | None = None) -> list[Segment]:
    """One segment per trade file (ccxt or aggTrades layout; `pipelines.sources.trades`): its candles
    joined with its trade minutes, the symbol and event time from `events_csv` (columns `file`, `symbol`,
    `pump_time_utc`, as ../shared/data/pumps/events.csv) when given, else the file name's stem."""
    from pathlib import Path

    from pipelines.sources.trades import read_trades, trades_to_minutes

    table = pd.read_csv(events_csv).set_index("file") if events_csv is not None else None
    out = []
    for p in map(Path, paths):
        row = table.loc[p.name] if table is not None and p.name in table.index else None
        symbol = str(row["symbol"]) if row is not None else p.stem.split("_")[0].upper()
        candles, minutes = trades_to_minutes(read_trades(p), symbol)
        frame = candles.merge(minutes, on="open_time", how="left", validate="one_to_one")
        events = (pd.Timestamp(row["pump_time_utc"], tz="UTC"),) if row is not None else ()
        out.append(Segment(symbol, frame, events))
    return out


@dataclass
class _Rows:
    X: np.ndarray  # float32 (n, F)
    Y: np.ndarray  # (n, H)
    A: np.ndarray  # (n, K)
    times: np.ndarray  # int64 epoch ms
    group: np.ndarray  # segment index
    normal: np.ndarray  # bool: away from any announced event
    events: np.ndarray  # (n,) event-minute indicator at the row's own minute (NaN undefined)


def _rows(segments: Sequence[Segment], fs: Any, task: Task, seq_len: int | None = None) -> _Rows:
    """Every usable row of every segment; with `seq_len` T, X holds the window of the T rows ending at
    each row (inside its segment), whose never-NaN-by-design features must all be finite."""
    from pipelines.features import compute_features

    parts = []
    for g, seg in enumerate(segments):
        f = seg.frame
        times = pd.to_datetime(f["open_time"], utc=True)
        if not times.is_monotonic_increasing or times.duplicated().any():
            raise TrainingError(f"segment {seg.name}: candles are not strictly increasing in open_time")
        X = np.ascontiguousarray(
            compute_features(f, fs.name)[list(fs.names)].to_numpy(np.float64), dtype=np.float32
        )
        Y = np.asarray(task.frame_labels(f), float)
        A = np.asarray(task.frame_baseline_inputs(f), float)
        ev = (
            np.asarray(task.event_minutes(f), float)
            if hasattr(task, "event_minutes")
            else np.full(len(f), np.nan)
        )
        start = max(int(fs.warmup), int(task.warmup)) + (seq_len or 1) - 1
        ok = np.zeros(len(f), bool)
        ok[start:] = True
        ok &= np.isfinite(Y).all(axis=1) & np.isfinite(A).all(axis=1)
        good = usable_rows(X, fs.names, tuple(getattr(fs, "nullable", ())))
        if seq_len:  # every row of the window usable: a rolling AND over seq_len rows
            bad = np.convolve((~good).astype(np.int64), np.ones(seq_len, np.int64))[: len(good)]
            good = bad == 0
        ok &= good
        ms = times.astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        normal = _away(ms, seg.events)
        if seq_len:
            idx = np.flatnonzero(ok)
            X = X[idx[:, None] + np.arange(1 - seq_len, 1)[None, :]]  # (n, T, F) windows ending at each row
        else:
            X = X[ok]
        parts.append((X, Y[ok], A[ok], ms[ok], np.full(int(ok.sum()), g), normal[ok], ev[ok]))
    cat = [np.concatenate([p[i] for p in parts]) for i in range(7)]
    return _Rows(*cat)


def usable_segments(segments: Sequence[Segment], fs: Any, task: Task) -> tuple[list[Segment], list[str]]:
    """Segments long enough to hold a usable row (warm-up + label horizon; the trade_size label also needs
    24 h of trades first), and the names of those dropped with the reason."""
    need = max(int(fs.warmup), int(task.warmup)) + task.lookahead + 1
    keep, dropped = [], []
    for seg in segments:
        if len(seg.frame) < need:
            dropped.append(f"{seg.name}: {len(seg.frame)} candles < {need} (warm-up + horizon)")
        else:
            keep.append(seg)
    return keep, dropped


def _away(ms: np.ndarray, events: Sequence[pd.Timestamp]) -> np.ndarray:
    """(n,) bool: rows (epoch ms) more than NORMAL_AWAY_MIN minutes from every announced event."""
    away = np.ones(np.shape(ms), bool)
    for ev in events:
        away &= np.abs(ms - pd.Timestamp(ev).value // 1_000_000) > NORMAL_AWAY_MIN * 60_000
    return away


def event_detection(
    level: np.ndarray, times: np.ndarray, group: np.ndarray, segments: Sequence[Segment], min_level: int
) -> dict[str, float]:
    """Event-level view of alarms (level >= min_level): share of announced events with an alarm within
    DETECT_WITHIN_MIN minutes of their start (from the event minute on), median delay of the first
    alarm at or after the start (within 60 minutes), and false alerts per day away from events
    (alarms merged when within ALERT_MERGE_MIN minutes of the previous one)."""
    hits, delays, false_alerts, normal_minutes = [], [], 0, 0
    for g, seg in enumerate(segments):
        m = group == g
        if not m.any():
            continue
        t, alarm = times[m], level[m] >= min_level
        # the candle that opens at minute t closes at t + 1 min: an alarm at row t is raised at t + 1
        raised = t + 60_000
        for ev in seg.events:
            e = pd.Timestamp(ev).value // 1_000_000
            after = (raised >= e) & (raised <= e + 60 * 60_000) & alarm
            first = raised[after].min() if after.any() else None
            delay = (first - e) / 60_000 if first is not None else math.inf
            hits.append(delay <= DETECT_WITHIN_MIN)
            if first is not None:
                delays.append(delay)
        away = _away(t, seg.events)
        normal_minutes += int(away.sum())
        last = -math.inf
        for ts in raised[alarm & away]:
            if ts - last > ALERT_MERGE_MIN * 60_000:
                false_alerts += 1
            last = ts
    return {
        "events": float(len(hits)),
        "detected_2min": float(np.mean(hits)) if hits else math.nan,
        "median_delay_min": float(np.median(delays)) if delays else math.nan,
        "false_alerts_per_day": false_alerts / (normal_minutes / 1440) if normal_minutes else math.nan,
    }


def _call_levels(score: np.ndarray, threshold: float) -> np.ndarray:
    """Alarm rows of a score as levels (2 where score > threshold, else 1), for event_detection."""
    return np.where(score > threshold, 2, 1)


def train_pooled(
    segments: Sequence[Segment],
    *,
    universe: str,
    interval: str,
    cfg: TrainingConfig,
    task: Task,
    test_segments: int = 10,
    model_type: str = "lightgbm",
    preset: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Evaluate on the latest `test_segments` segments (trained on the earlier ones), refit on all, export.

    Returns a TrainResult (registered like any run: model name `<task>-<universe>-<interval>`) whose
    `report` holds the task's metrics on the test rows for the model and its rules, and whose
    `manifest.extra` holds the universe, threat thresholds, event detection and realised level rates.
    `model_type` is the classifier: "lightgbm", or a sequence architecture of the zoo (transformer,
    lstm_attention, tft, mamba) with its `preset` and flat `model_overrides` (e.g. max_epochs).
    """
    from pipelines.features import get_feature_set
    from pipelines.models.whale import OUTPUTS, WhaleDetector, WhaleDetectorConfig
    from pipelines.training.parity import check_parity

    def step(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    if len(task.horizons) != 1:
        raise TrainingError(f"pooled whale training takes one horizon; got {list(task.horizons)}")
    fs = get_feature_set(cfg.features.feature_set)
    segs, dropped = usable_segments(sorted(segments, key=lambda s: s.start), fs, task)
    if len(segs) < 2:
        raise TrainingError(
            f"pooled training needs at least 2 segments (event windows), got {len(segs)}"
            + (f" (too short: {'; '.join(dropped)})" if dropped else "")
        )
    if not 0 < test_segments <= len(segs) - 2:  # calibration needs >= 2 training windows (group folds)
        raise TrainingError(
            f"{len(segs)} segments (event windows) leave no room for {test_segments} test window(s) and at "
            f"least 2 training windows; set --test-windows in 1..{max(len(segs) - 2, 0)} or add windows"
        )
    if getattr(fs, "fitted", ()):
        raise TrainingError(
            f"feature set {fs.name} has fitted parts {list(fs.fitted)}; pooled training does not refit them"
        )
    det_cfg = WhaleDetectorConfig.from_options(cfg.lightgbm, task.options)
    if model_type != "lightgbm":
        from dataclasses import replace

        from pipelines.config import load_model_preset
        from pipelines.contracts.settings import get_settings

        seq_cfg = load_model_preset(get_settings().configs_dir, model_type, preset, model_overrides)
        det_cfg = replace(
            det_cfg,
            classifier=model_type,
            preset=preset,
            sequence_overrides=tuple(sorted((model_overrides or {}).items())),
        )
        seq_len = int(seq_cfg.sequence_length)
    else:
        seq_len = None
    step("features", 0, 1)
    R = _rows(segs, fs, task, seq_len)
    step("features", 1, 1)
    n_train_seg = len(segs) - test_segments
    train, test = R.group < n_train_seg, R.group >= n_train_seg
    y = R.Y[:, 0]

    # ---- evaluation: fit on the earlier segments, judge on the later ones
    step("folds", 0, 1)
    kind = "whale_detector" if model_type == "lightgbm" else f"whale_detector_{model_type}"
    det = WhaleDetector(det_cfg, tuple(fs.names), tuple(getattr(fs, "nullable", ())), model_type=kind)
    det.fit(R.X[train], y[train], R.group[train], R.normal[train])
    from pipelines.tasks.whale import best_f1_threshold

    thr = best_f1_threshold(det.oof_[np.isfinite(det.oof_)], y[train][np.isfinite(det.oof_)])
    task = type(task)(task.horizons, {**task.options, "model_threshold": thr})
    out = det.predict_all(R.X[test])
    pred = out["whale_probability"][:, None]
    state = task.fit_baselines(R.A[train], R.Y[train])
    base = task.baseline_forecasts(state, R.A[test])
    summary = task.evaluate(pred, R.Y[test], base, interval=interval, cfg=cfg.evaluation)
    h = task.horizons[0]
    yt = y[test]
    for who, score in (("anomaly_only", out["anomaly_score"]), ("threat_score", out["threat_score"])):
        summary[f"{who}.h{h}.roc_auc"] = float(_auc(score, yt))
        summary[f"{who}.h{h}.pr_auc"] = float(_ap(score, yt))
    step("folds", 1, 1)

    # realised false-alarm rate per threat level on the test windows' normal minutes
    normal_test = R.normal[test] & (yt == 0)
    levels = out["threat_level"]
    rates = {}
    for k, stated in zip(range(2, 2 + len(det_cfg.rates)), det_cfg.rates):
        fired = int((levels[normal_test] >= k).sum())
        rates[f"level{k}"] = {
            "stated": stated,
            "realised": fired / max(int(normal_test.sum()), 1),
            "fired": fired,
            "normal_minutes": int(normal_test.sum()),
        }
    test_segs = segs[n_train_seg:]
    g_test = R.group[test] - n_train_seg
    events = {f"threat>={k}": event_detection(levels, R.times[test], g_test, test_segs, k) for k in (2, 3, 4)}
    events["model_call"] = event_detection(_call_levels(pred[:, 0], thr), R.times[test], g_test, test_segs, 2)
    for who in ("volume_spike", "return_spike"):
        f = np.asarray(base[who])[:, 0]
        events[who] = event_detection(np.where(f[:, 2] > 0.5, 2, 1), R.times[test], g_test, test_segs, 2)

    # ---- final model: every segment
    step("final", 0, 1)
    final = WhaleDetector(det_cfg, tuple(fs.names), tuple(getattr(fs, "nullable", ())), model_type=kind)
    final.fit(R.X, y, R.group, R.normal)
    step("final", 1, 1)
    step("export", 0, 1)
    onnx_bytes = final.to_onnx(cfg.export.target_opset)
    parity_X = np.ascontiguousarray(R.X[-cfg.export.parity_rows :])
    parity = check_parity(
        onnx_bytes, final.predict, parity_X, final.parity_tolerance, rtol=cfg.export.parity_rtol
    )
    parity_anomaly = check_parity(
        onnx_bytes,
        lambda X: final.predict_all(X)["anomaly_score"],
        parity_X,
        1e-3,
        output="anomaly_score",
        rtol=1e-4,
    )
    from pipelines.contracts.onnx import run_onnx

    lvl_onnx = run_onnx(onnx_bytes, parity_X, output="threat_level")[:, 0]
    lvl_native = final.predict_all(parity_X)["threat_level"]
    level_agreement = float(np.mean(lvl_onnx == lvl_native))
    if level_agreement < 0.999:
        from pipelines.contracts.errors import ParityError

        raise ParityError(
            f"ONNX threat levels agree with the native model on {level_agreement:.2%} of rows (< 99.9 %)"
        )
    step("export", 1, 1)

    times = pd.to_datetime(R.times, unit="ms", utc=True)
    frames = pd.concat([s.frame for s in segs], ignore_index=True)
    data_window = {
        "start": times.min().isoformat(),
        "end": times.max().isoformat(),
        "rows": int(len(y)),
        "data_hash": data_hash(frames),
        "segments": [s.name for s in segs],
        "test_segments": [s.name for s in test_segs],
        "dropped_segments": dropped,
        "evaluation_rows": int(test.sum()),
    }
    symbols = sorted({s.symbol for s in segs})
    extra = {
        "universe": {"name": universe, "symbols": symbols},
        "threat": {
            "levels": list(range(2, 2 + len(det_cfg.rates))),
            "rates": list(det_cfg.rates),
            "thresholds": [float(t) for t in final.thresholds_],
            "pot": final.pot_,
        },
        "model_threshold": thr,
        "level_rates_test": rates,
        "event_detection_test": events,
        "parity_max_abs": parity,
        "parity_anomaly_max_abs": parity_anomaly,
        "parity_level_agreement": level_agreement,
        "label": {
            k: task.options.get(k) for k in ("label", "trade_multiple", "volume_multiple", "volume_window")
        },
        "outputs": list(OUTPUTS),
    }
    below = task.below_baselines(summary)
    extra["below_baselines"] = {str(k): v for k, v in below.items()}
    manifest = _manifest(
        onnx_bytes,
        task=task,
        fs=fs,
        model_type=final.model_type,
        symbol=universe,
        interval=interval,
        horizons=list(task.horizons),
        seq_len=seq_len,
        training=data_window,
        metrics=summary,
        synthetic=False,
        extra=extra,
    )
    from pipelines.contracts.bundle import OutputSpec

    manifest.outputs.extend(
        [
            OutputSpec(
                "anomaly_score", [None, 1], meaning="anomaly ensemble score (0 = a typical normal minute)"
            ),
            OutputSpec(
                "threat_level", [None, 1], meaning="threat level 1-5 (levels 2-5 at stated false-alarm rates)"
            ),
            OutputSpec(
                "feature_deviation", [None, len(fs.names)], meaning="|x - median| / robust scale per feature"
            ),
        ]
    )
    t_test = R.times[test]
    newest = NewestWindow(open_times=t_test, predictions=pred, actuals=R.Y[test].copy(), baselines=base)
    return TrainResult(
        task=task.name,
        model_type=final.model_type,
        symbol=universe,
        interval=interval,
        feature_names=list(fs.names),
        horizons=list(task.horizons),
        params=final.get_params(),
        fold_metrics=[summary],
        summary_metrics=summary,
        report=nested_report(summary),
        newest_window=newest,
        newest_metric=task.promotion_metric,
        newest_scores={
            h: (
                float(
                    task.score(
                        pred[:, 0], yt, task.promotion_metric, h, interval=interval, cfg=cfg.evaluation
                    )
                ),
                int(yt.size),
            )
        },
        data_window=data_window,
        onnx_bytes=onnx_bytes,
        manifest=manifest,
        parity_max_abs=parity,
        gates={"parity": True},
        model=final,
        pooled=newest,
        below_baselines=below,
    )


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    from pipelines.tasks.whale import roc_auc

    return roc_auc(score, y)


def _ap(score: np.ndarray, y: np.ndarray) -> float:
    from pipelines.tasks.whale import average_precision

    return average_precision(score, y)
