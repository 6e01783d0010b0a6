"""Walk-forward training of one model for one symbol: the pure core of `kairos train`.

`train_walk_forward(candles, cfg, task=...)` → features + the task's labels → folds (purged) → per-fold
fit/predict → the task's metrics beside its naive baselines (fitted on the training fold only) → final
fit on the newest window → ONNX export → parity check → `TrainResult` (everything the registry logs,
and the bundle). Nothing here knows which task it trains: `pipelines.tasks` does.

Row bookkeeping (all indices are candle rows of the input frame, oldest first):
    [0, start)        warm-up (features or baseline inputs inexact; for sequence models also the first T-1 rows)
    [start, end)      labelled rows, end = N - task.lookahead (later rows have NaN labels)
    [lo, end)         the newest `walk_forward.window` of them: the rows folds index into
"""

from __future__ import annotations

import hashlib
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import TrainingConfig
from pipelines.contracts.bundle import FeatureSetSpec, Manifest, OutputSpec, TensorSpec
from pipelines.contracts.errors import KairosError
from pipelines.contracts.newest_window import NewestWindow  # re-exported: tests and callers import it here
from pipelines.models.base import OUTPUT_NAME
from pipelines.tasks import DEFAULT_TASK, Task, get_task, nested_report
from pipelines.training.export import rename_output

Progress = Callable[[str, int, int], None]  # (stage, done, total)
HASHED_COLUMNS = ["open", "high", "low", "close", "volume"]  # candle values the data hash covers


@dataclass
class TrainResult:
    task: str  # "returns", "volatility", ...
    model_type: str
    symbol: str
    interval: str
    feature_names: list[str]
    horizons: list[int]
    params: dict[str, Any]  # model hyperparameters, flat
    fold_metrics: list[
        dict[str, float]
    ]  # per fold, flat "{who}.h{h}.{metric}" (who: model | the task's baselines)
    summary_metrics: dict[str, float]  # overall (all test rows pooled), same flat keys
    report: dict[str, Any]  # nested: {who: {"h1": {metric: value, ...}}} for tables
    newest_window: NewestWindow
    newest_metric: str  # the task's promotion metric, scored per horizon on the newest window
    newest_scores: dict[int, tuple[float, int]]  # horizon → (promotion metric, rows judged)
    data_window: dict[str, Any]  # {"start": iso, "end": iso, "rows": int, "data_hash": sha256}
    onnx_bytes: bytes
    manifest: Manifest
    parity_max_abs: float
    gates: dict[str, bool] = field(default_factory=dict)  # {"parity": True, ...}
    folds: list[Any] = field(
        default_factory=list
    )  # pipelines.training.splits.Fold, oldest first (rows index [lo, end))
    model: Any = None  # the final fitted model (native), e.g. for an ensemble or an ad-hoc check
    run_tags: dict[str, str] = field(
        default_factory=dict
    )  # extra tags for the training run (e.g. tuning provenance)
    # every pooled out-of-sample row (model, labels, the task's baselines): the run's curves are drawn from it
    pooled: NewestWindow | None = None
    # horizon → reason, where the pooled walk-forward score does not beat the best naive baseline
    # (Task.below_baselines); the promotion policy refuses such a model when require_beats_baselines
    below_baselines: dict[int, str] = field(default_factory=dict)


class TrainingError(KairosError):
    """The candles cannot be trained on (unsorted, non-finite features past warm-up, too few rows)."""


@dataclass(frozen=True)
class _Dataset:
    """Rows [lo, end) of the candle frame, ready for folds: X, Y, baseline inputs and times."""

    X: np.ndarray  # float32 (n, F) or a (n, T, F) window view
    Y: np.ndarray  # float64 (n, H): the task's labels
    A: np.ndarray  # float64 (n, K): the task's baseline inputs (candles <= t)
    open_time: pd.Series  # UTC timestamps of the rows
    lo: int
    end: int
    start: int  # first usable row (warm-up excluded)


def code_version() -> str:
    """`git rev-parse HEAD` of this repository, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_hash(candles: pd.DataFrame) -> str:
    """sha256 over open_time (epoch ms) and OHLCV of the candle rows, in order."""
    times = (
        pd.to_datetime(candles["open_time"], utc=True)
        .astype("datetime64[ms, UTC]")
        .astype("int64")
        .to_numpy()
    )
    values = np.ascontiguousarray(candles[HASHED_COLUMNS].to_numpy(np.float64))
    h = hashlib.sha256(np.ascontiguousarray(times, dtype=np.int64).tobytes())
    h.update(values.tobytes())
    return h.hexdigest()


def _prepare(
    candles: pd.DataFrame,
    cfg: TrainingConfig,
    fs: Any,
    seq_len: int | None,
    task: Task,
    params: dict[str, Any] | None = None,
) -> _Dataset:
    """Features, the task's labels and baseline inputs, and the usable row range [lo, end) (module docstring).

    `params`: fitted parameters of the feature set's fitted parts (None when it has none)."""
    from pipelines.features import compute_features

    times = pd.to_datetime(candles["open_time"], utc=True).reset_index(drop=True)
    if not times.is_monotonic_increasing or times.duplicated().any():
        raise TrainingError(
            "candles are not strictly increasing in open_time; sort and de-duplicate them first"
        )
    feats = compute_features(candles, fs.name, params)
    X_all = np.ascontiguousarray(feats[list(fs.names)].to_numpy(np.float64), dtype=np.float32)  # (N, F)
    Y_all = np.asarray(task.frame_labels(candles), dtype=np.float64)  # (N, H)
    A_all = np.asarray(task.frame_baseline_inputs(candles), dtype=np.float64)  # (N, K)

    n_rows, T = len(candles), seq_len or 1
    start = (
        max(int(fs.warmup), int(task.warmup), 1) + T - 1
    )  # a window ending at `start` holds only exact rows
    end = n_rows - task.lookahead
    if end <= start:
        raise TrainingError(
            f"{n_rows} candles leave no labelled rows after {start} warm-up rows and {task.lookahead} label rows; "
            "supply more candles"
        )
    if not np.isfinite(A_all[start:end]).all() or not np.isfinite(Y_all[start:end]).all():
        raise TrainingError(
            f"task {task.name}: labels or baseline inputs are not finite past warm-up row {start}; "
            "check the candles for gaps or bad values (validation.candles)"
        )
    first_row = start - T + 1
    bad = ~usable_rows(X_all[first_row:end], fs.names, tuple(getattr(fs, "nullable", ())))
    if bad.any():
        where = first_row + int(np.argmax(bad))
        raise TrainingError(
            f"{int(bad.sum())} feature rows past warm-up are not finite (first at {times[where]}); "
            "check the candles for gaps or bad values (validation.candles) before training"
        )
    window = cfg.walk_forward.window
    lo = max(start, end - window) if window else start
    if seq_len:
        from pipelines.training.windows import sliding_windows

        X = sliding_windows(X_all[lo - T + 1 : end], T)  # (end-lo, T, F); window k ends at row lo+k
    else:
        X = X_all[lo:end]
    return _Dataset(
        X=X,
        Y=Y_all[lo:end],
        A=A_all[lo:end],
        open_time=times[lo:end].reset_index(drop=True),
        lo=lo,
        end=end,
        start=start,
    )


def usable_rows(X: np.ndarray, names: Any, nullable: Any = ()) -> np.ndarray:
    """(N,) bool: rows of a (N, F) feature matrix whose values are finite, except that the `nullable`
    features (NaN by design where an optional input is missing, e.g. whale19's book fields) may be NaN
    (never ±inf)."""
    X = np.asarray(X)
    may = (
        np.isin(np.asarray(list(names), dtype=object), list(nullable))
        if len(nullable)
        else np.zeros(X.shape[-1], bool)
    )
    return (np.isfinite(X) | (np.isnan(X) & may)).all(axis=1)


def _fit_params(candles: pd.DataFrame, fs: Any, lo: int, hi: int | None) -> dict[str, Any]:
    """Fitted feature parameters from candle rows [lo, hi) (a training window: nothing after it)."""
    from pipelines.features import fit_feature_params

    return fit_feature_params(candles.iloc[lo:hi].reset_index(drop=True), fs.name)


def _fit(model: Any, ds: _Dataset, train_start: int, train_end: int, purge: int) -> Any:
    """Fit on [train_start, train_end) minus a purged validation slice at its end (`training.fit.fit_fold`,
    the fit path the tuner uses too)."""
    from pipelines.training.fit import fit_fold

    return fit_fold(model, ds.X, ds.Y, train_start, train_end, purge)


def _finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN → None so manifest.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def train_walk_forward(
    candles: pd.DataFrame,
    *,
    symbol: str,
    interval: str,
    cfg: TrainingConfig,
    task: Task | None = None,
    model_type: str = "lightgbm",
    preset: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    synthetic: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Walk-forward train and evaluate one model, then fit on the newest rows, export and parity-check.

    Args:
        candles: candle frame (pipelines.contracts.schema contract) of one symbol/interval, oldest first.
        symbol: e.g. "FILUSDT".
        interval: e.g. "1m".
        cfg: the training config (features, labels, walk-forward, evaluation, model, export).
        task: what is predicted and how it is judged (`pipelines.tasks`); default returns at
            `cfg.labels.horizons`.
        model_type: a model family (`pipelines.models.available_models()`).
        preset: a preset of `configs/models/<model_type>.yaml` (default: the file's `default`).
        model_overrides: fields of the family's config set last (e.g. tuned params).
        synthetic: the candles are synthetic (recorded in the manifest).
        progress: optional callback (stage, done, total); stages "features", "folds", "final", "export".

    Returns:
        TrainResult with fold/summary metrics for the model and the task's baselines, the newest
        test window, the ONNX bytes and the manifest.

    Raises:
        TrainingError: unusable candles; SplitError: too few rows; ParityError: the export disagrees.
    """
    from pipelines.features import get_feature_set
    from pipelines.models import get_spec, make_model
    from pipelines.training.parity import check_parity
    from pipelines.training.splits import walk_forward_folds

    report_progress: Progress = progress or (lambda stage, done, total: None)
    horizons = list(cfg.labels.horizons)
    task = task or get_task(DEFAULT_TASK, horizons)
    if list(task.horizons) != horizons:
        raise TrainingError(
            f"task {task.name} horizons {list(task.horizons)} != labels.horizons {horizons}; "
            "build the task from the training config"
        )
    fs = get_feature_set(cfg.features.feature_set)
    n_features = len(fs.names)
    task = task.for_family(get_spec(model_type).objectives, f"model {model_type}")

    def new_model() -> Any:
        return make_model(
            model_type,
            cfg,
            n_features,
            horizons,
            preset=preset,
            overrides=model_overrides,
            objective=task.training_objective,
            task=task.name,
        )

    probe = new_model()  # __init__ only stores params: tells us the input kind and T
    seq_len = probe.sequence_length if probe.input_kind == "sequence" else None
    fitted = bool(getattr(fs, "fitted", ()))
    report_progress("features", 0, 1)
    # A fitted feature set (e.g. risk's HMM) is first built with parameters fitted on the oldest
    # train_size candles, only to find the row range; each fold then refits them on its own training
    # rows and recomputes its features, and so does the final model on its training window.
    first = _fit_params(candles, fs, 0, cfg.walk_forward.train_size) if fitted else None
    ds = _prepare(candles, cfg, fs, seq_len, task, first)
    report_progress("features", 1, 1)
    if not getattr(probe, "accepts_nan", False) and np.isnan(np.asarray(ds.X)).any():
        cols = [n for j, n in enumerate(fs.names) if np.isnan(np.asarray(ds.X)[..., j]).any()]
        raise TrainingError(
            f"features {cols} of {fs.name} are NaN on these candles (no book fields on this feed); "
            f"{model_type} cannot take missing inputs: train lightgbm, or use a feed with those fields"
        )
    n = ds.end - ds.lo
    wf, ev = cfg.walk_forward, cfg.evaluation
    folds = walk_forward_folds(n, wf)
    base_ds = ds

    def fold_data(train_start: int, train_end: int) -> tuple[_Dataset, dict[str, Any]]:
        if not fitted:
            return base_ds, {}
        params = _fit_params(candles, fs, base_ds.lo + train_start, base_ds.lo + train_end)
        return _prepare(candles, cfg, fs, seq_len, task, params), params

    fold_metrics: list[dict[str, float]] = []
    pooled: list[tuple[np.ndarray, slice]] = []
    pooled_base: dict[str, list[np.ndarray]] = {}  # the task's baselines, on the same pooled rows
    pooled_members: list[dict[str, np.ndarray]] = []  # ensembles: each member's predictions, same rows
    covered = 0  # pooled rows end here; overlapping test windows (step < test_size) count once
    report_progress("folds", 0, len(folds))
    for fold in folds:
        ds, _ = fold_data(fold.train_start, fold.train_end)
        model = _fit(new_model(), ds, fold.train_start, fold.train_end, wf.purge)
        test = slice(fold.test_start, fold.test_end)
        pred = np.asarray(model.predict(ds.X[test]), dtype=np.float64)  # (test_rows, H)
        state = task.fit_baselines(
            ds.A[fold.train_start : fold.train_end], ds.Y[fold.train_start : fold.train_end]
        )
        base = task.baseline_forecasts(state, ds.A[test])
        fold_metrics.append(task.evaluate(pred, ds.Y[test], base, interval=interval, cfg=ev))
        keep = max(fold.test_start, covered) - fold.test_start
        pooled.append((pred[keep:], slice(fold.test_start + keep, fold.test_end)))
        for who, b in base.items():
            pooled_base.setdefault(who, []).append(b[keep:])
        if hasattr(model, "predict_members"):
            members = model.predict_members(ds.X[test])  # {"sequence"|"tabular"|"ensemble": (test_rows, H)}
            pooled_members.append({k: np.asarray(v)[keep:] for k, v in members.items()})
        covered = fold.test_end
        report_progress("folds", fold.index + 1, len(folds))

    pooled_pred = np.concatenate([p for p, _ in pooled])
    rows = np.concatenate([np.arange(s.start, s.stop) for _, s in pooled])
    segments = [s.stop - s.start for _, s in pooled]
    base_rows = {who: np.concatenate(parts) for who, parts in pooled_base.items()}
    summary = task.evaluate(pooled_pred, ds.Y[rows], base_rows, interval=interval, cfg=ev, segments=segments)
    if pooled_members:  # each member beside the blend, scored on the same pooled rows as the model
        for who in pooled_members[0]:
            if who == "ensemble":
                continue
            flat = task.evaluate(
                np.concatenate([m[who] for m in pooled_members]),
                ds.Y[rows],
                base_rows,
                interval=interval,
                cfg=ev,
                segments=segments,
            )
            summary.update(
                {f"member_{who}.{k.split('.', 1)[1]}": v for k, v in flat.items() if k.startswith("model.")}
            )
    below = task.below_baselines(summary)
    newest_fold, newest_pred = folds[-1], pred
    newest_times = ds.open_time[newest_fold.test_start : newest_fold.test_end]
    newest = NewestWindow(
        open_times=newest_times.astype("datetime64[ms, UTC]").astype("int64").to_numpy(),
        predictions=newest_pred,
        actuals=ds.Y[newest_fold.test_start : newest_fold.test_end].copy(),
        baselines={who: np.asarray(b).copy() for who, b in base.items()},  # the newest fold's
    )
    # export.variant's walk-forward gate: the newest fold's model on its out-of-sample windows
    newest_model, newest_X = model, ds.X[newest_fold.test_start : newest_fold.test_end]

    # Final model: the newest train_size labelled rows (its labels reach max(h) candles past `end`).
    report_progress("final", 0, 1)
    final_start = max(0, n - wf.train_size)
    ds, feature_params = fold_data(final_start, n)
    final = _fit(new_model(), ds, final_start, n, wf.purge)
    report_progress("final", 1, 1)

    report_progress("export", 0, 2)
    onnx_bytes = rename_output(final.to_onnx(), OUTPUT_NAME, task.output_name)
    report_progress("export", 1, 2)
    parity_X = ds.X[max(0, n - cfg.export.parity_rows) : n]
    # The config sets a floor; a model family may declare a looser bound (deep models: float32 kernels).
    tolerance = max(cfg.export.parity_tolerance, float(getattr(final, "parity_tolerance", 0.0)))
    parity = check_parity(onnx_bytes, final.predict, parity_X, tolerance, rtol=cfg.export.parity_rtol)
    variant = _export_variant(cfg, task, final, onnx_bytes, parity_X, newest_model, newest_X, newest.actuals)
    onnx_bytes = variant.onnx_bytes if variant else onnx_bytes
    report_progress("export", 2, 2)

    used = candles.iloc[ds.lo - ds.start : len(candles)]  # every candle the features/labels read
    data_window = {
        "start": ds.open_time[final_start].isoformat(),
        "end": ds.open_time[n - 1].isoformat(),
        "rows": n - final_start,
        "data_hash": data_hash(used),
        "label_end": pd.Timestamp(pd.to_datetime(candles["open_time"].iloc[-1], utc=True)).isoformat(),
        "evaluation_start": ds.open_time[0].isoformat(),
        "evaluation_rows": n,
        "candles": len(used),
    }
    manifest = _manifest(
        onnx_bytes,
        feature_params=feature_params,
        task=task,
        fs=fs,
        model_type=model_type,
        symbol=symbol,
        interval=interval,
        horizons=horizons,
        seq_len=seq_len,
        training=data_window,
        metrics=summary,
        synthetic=synthetic,
        extra={
            "parity_max_abs": parity,
            "parity_tolerance": tolerance,
            "parity_rtol": cfg.export.parity_rtol,
            "below_baselines": {str(h): why for h, why in below.items()},
            "n_folds": len(folds),
            "fold_test_starts": [ds.open_time[f.test_start].isoformat() for f in folds],
            **({"export_variant": variant.record} if variant else {}),
        },
    )
    manifest = replace(
        manifest,
        reference_profile=_reference_profile(onnx_bytes, manifest, ds, final_start, seq_len, interval),
    )
    return TrainResult(
        task=task.name,
        model_type=model_type,
        symbol=symbol,
        interval=interval,
        feature_names=list(fs.names),
        horizons=horizons,
        params=final.get_params(),
        fold_metrics=fold_metrics,
        summary_metrics=summary,
        report=nested_report(summary),
        newest_window=newest,
        data_window=data_window,
        newest_metric=task.promotion_metric,
        newest_scores={
            h: (
                float(
                    task.score(
                        newest.predictions[:, j],
                        newest.actuals[:, j],
                        task.promotion_metric,
                        h,
                        interval=interval,
                        cfg=ev,
                    )
                ),
                int(
                    task.score(
                        newest.predictions[:, j], newest.actuals[:, j], "n", h, interval=interval, cfg=ev
                    )
                ),
            )
            for j, h in enumerate(horizons)
        },
        onnx_bytes=onnx_bytes,
        manifest=manifest,
        parity_max_abs=parity,
        gates={"parity": True},
        run_tags={"kairos.export_variant": variant.variant} if variant else {},
        below_baselines=below,
        folds=folds,
        model=final,
        pooled=NewestWindow(
            open_times=ds.open_time[rows].astype("datetime64[ms, UTC]").astype("int64").to_numpy(),
            predictions=pooled_pred,
            actuals=ds.Y[rows],
            baselines=base_rows,
        ),
    )


def _reference_profile(
    onnx_bytes: bytes, manifest: Manifest, ds: _Dataset, final_start: int, seq_len: int | None, interval: str
) -> dict[str, Any]:
    """What the final model saw (`pipelines.monitoring.drift.profile_at_training`): quantile bins of every
    input feature and output over the final training window, and the drift alarm calibrated on the
    whole walk-forward window. Sequence models are profiled on each row's own features (a window's last)."""
    from pipelines.contracts.schema import interval_ms
    from pipelines.monitoring.drift import profile_at_training

    X = np.asarray(ds.X)
    return profile_at_training(
        onnx_bytes,
        manifest,
        X,
        feature_rows=X[:, -1, :] if seq_len else X,
        profile_rows=len(X) - final_start,
        times=ds.open_time,
        interval_minutes=max(1, interval_ms(interval) // 60_000),
    ).to_dict()


def _export_variant(
    cfg: TrainingConfig,
    task: Task,
    final: Any,
    onnx_bytes: bytes,
    parity_X: np.ndarray,
    fold_model: Any,
    fold_X: np.ndarray,
    fold_Y: np.ndarray,
) -> Any:
    """`export.variant` of a sequence model's bundle (`variants.choose_export_variant`: gated on the parity
    rows and on the newest fold's out-of-sample direction accuracy; rejected → the fp32 export stays).
    None when fp32 is asked for or the model is not a sequence model (no variants of tabular graphs)."""
    if cfg.export.variant == "fp32" or getattr(final, "input_kind", "tabular") != "sequence":
        return None
    from pipelines.models.sequence.variants import choose_export_variant

    return choose_export_variant(
        onnx_bytes,
        cfg.export.variant,
        parity_X,
        walk_forward=(rename_output(fold_model.to_onnx(), OUTPUT_NAME, task.output_name), fold_X, fold_Y),
        output=task.output_name,
        signed=task.directional,
        max_accuracy_drop_pp=cfg.export.variant_max_accuracy_drop_pp,
    )


CONFIDENCE_MEANING = {
    "tft": "sign confidence 2*Phi(|mu|/sigma)-1 in [0, 1], sigma from the p10-p90 quantile interval",
    "ensemble": "member agreement |w_s*a + w_t*b| / (w_s*|a| + w_t*|b|) in [0, 1]",
    "default": "sign confidence 2*Phi(|mu|/sigma)-1 in [0, 1], sigma from 16 frozen MC-dropout masks",
}


def _manifest(
    onnx_bytes: bytes,
    *,
    task: Task,
    fs: Any,
    model_type: str,
    symbol: str,
    interval: str,
    horizons: list[int],
    seq_len: int | None,
    training: dict[str, Any],
    metrics: dict[str, float],
    synthetic: bool,
    extra: dict[str, Any],
    feature_params: dict[str, Any] | None = None,
) -> Manifest:
    """The bundle manifest; outputs are read from the graph so an optional "confidence" is declared."""
    import onnx

    from pipelines.models.base import CONFIDENCE_NAME, INPUT_NAME

    graph_outputs = {o.name for o in onnx.load_model_from_string(onnx_bytes).graph.output}
    n_f, n_h = len(fs.names), len(horizons)
    outputs = [
        OutputSpec(
            task.output_name,
            [None, n_h],
            horizons=horizons,
            meaning=task.meaning,
            signed=task.directional,
        )
    ]
    if CONFIDENCE_NAME in graph_outputs:
        outputs.append(
            OutputSpec(
                CONFIDENCE_NAME,
                [None, n_h],
                horizons=horizons,
                meaning=CONFIDENCE_MEANING.get(model_type, CONFIDENCE_MEANING["default"]),
            )
        )
    return Manifest(
        task=task.name,
        model_name=f"{task.name}-{symbol}-{interval}",
        model_type=model_type,
        symbol=symbol,
        interval=interval,
        feature_set=FeatureSetSpec(
            name=fs.name,
            version=int(fs.version),
            names=list(fs.names),
            warmup=int(fs.warmup),
            components={n: int(v) for n, v in getattr(fs, "components", ())},
            params=feature_params or {},
            nullable=list(getattr(fs, "nullable", ())),
        ),
        input=TensorSpec(INPUT_NAME, [None, seq_len, n_f] if seq_len else [None, n_f]),
        outputs=outputs,
        training=training,
        metrics=_finite_or_none(metrics),
        code_version=code_version(),
        created_at=datetime.now(UTC).isoformat(),
        synthetic=synthetic,
        extra=extra,
    )
