"""Batch scoring of a bundle on candles: features (the one shared implementation) → onnxruntime.

Used to score the champion on the challenger's newest test window. Only rows whose features (and,
for sequence models, whose whole window of T rows) are exact get a prediction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.contracts.bundle import BundleError, Manifest


def horizon_columns(horizons: list[int]) -> list[str]:
    """Output column names: "h1", "h2", ... (one per horizon)."""
    return [f"h{h}" for h in horizons]


def predict_bundle(
    onnx_bytes: bytes, manifest: Manifest, candles: pd.DataFrame, *, threads: int = 1
) -> pd.DataFrame:
    """Predictions of a bundle for every candle with exact features.

    Args:
        onnx_bytes: the bundle's `model.onnx`.
        manifest: the bundle's manifest (feature set, input shape, horizons).
        candles: candle frame of the bundle's symbol/interval, oldest first, including at least
            `warmup` (+ T - 1 for sequence models) candles of history before the first row to score.
        threads: onnxruntime intra-op threads.

    Returns:
        Frame with `open_time` (as in `candles`) and one float64 column per horizon ("h1", ...),
        predicted ln(close[t+h]/close[t]); warm-up rows are left out.

    Raises:
        BundleError: the features do not match the manifest's input.
    """
    from pipelines.contracts.onnx import run_onnx
    from pipelines.features import compute_features

    fs = manifest.feature_set
    shape = manifest.input.shape
    cols = horizon_columns(manifest.horizons)
    feats = compute_features(candles, fs.name, fs.params or None)
    missing = [c for c in fs.names if c not in feats.columns]
    if missing:
        raise BundleError(
            f"feature set {fs.name!r} lacks {missing} named by the manifest; "
            "the bundle needs a newer pipelines.features"
        )
    if shape[-1] != len(fs.names):
        raise BundleError(f"manifest input shape {shape} does not match {len(fs.names)} feature names")
    X_all = np.ascontiguousarray(feats[list(fs.names)].to_numpy(np.float64), dtype=np.float32)  # (N, F)
    times = candles["open_time"].reset_index(drop=True)
    X_all[: max(int(fs.warmup) - 1, 0)] = np.nan  # rows before warm-up are inexact even if finite
    from pipelines.training.walk_forward import usable_rows

    finite = usable_rows(X_all, fs.names, fs.nullable)
    finite[: max(int(fs.warmup) - 1, 0)] = False
    if len(shape) == 3:
        from pipelines.training.windows import window_dataset

        T = int(shape[1])
        if len(X_all) < T:
            return pd.DataFrame({"open_time": times.iloc[:0], **{c: np.empty(0) for c in cols}})
        dummy_y = np.zeros((len(X_all), 1))
        X, _, end_rows = window_dataset(X_all, dummy_y, T)  # windows of exact rows; end_rows: (M,)
    elif len(shape) == 2:
        end_rows = np.flatnonzero(finite)
        X = X_all[end_rows]
    else:
        raise BundleError(f"manifest input shape {shape} is neither [N, F] nor [N, T, F]")
    output = manifest.outputs[0].name if manifest.outputs else None  # the task's prediction
    if len(end_rows):
        pred = run_onnx(onnx_bytes, X, output=output, threads=threads)
    else:
        pred = np.empty((0, len(cols)))
    out = pd.DataFrame(pred, columns=cols)
    out.insert(0, "open_time", times.iloc[end_rows].reset_index(drop=True))
    return out
