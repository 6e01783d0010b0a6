"""Batch scoring of a bundle on candles: features (the one shared implementation) → onnxruntime.

`score_candles` scores every candle of a frame through every output of the bundle's graph (what
`kairos predict` writes); `predict_bundle` is its narrow form, the task's output per horizon on the
scored rows only (used to score the champion on the challenger's newest test window).

A row is scored only when its features (and, for sequence models, all T rows of its window) are
exact: past the feature set's warm-up and finite, except the manifest's nullable features, which may
be NaN. Pure numpy/pandas/onnxruntime: no mlflow, no prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contracts.bundle import BundleError, Manifest, OutputSpec

BATCH_ROWS = 4096  # rows per session run: bounds peak memory ([4096, T, F] float32 per chunk)
KEY_COLUMNS = ("symbol", "open_time", "scored")
_ONNX_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def horizon_columns(horizons: list[int]) -> list[str]:
    """Output column names: "h1", "h2", ... (one per horizon)."""
    return [f"h{h}" for h in horizons]


def history_rows(manifest: Manifest) -> int:
    """Candles needed before a row for it to be scored: warm-up - 1, plus T - 1 for sequence models."""
    return max(int(manifest.feature_set.warmup) - 1, 0) + (manifest.sequence_length or 1) - 1


def output_columns(name: str, width: int, spec: OutputSpec | None) -> list[str]:
    """Column names of one graph output of `width` values per row.

    `<name>_h<h>` when the manifest gives the output as many horizons as its width, `<name>` for
    width 1, else `<name>_<i>` (i = 0..width-1), e.g. a future whale bundle's `feature_deviation`.
    """
    if spec is not None and spec.horizons and len(spec.horizons) == width:
        return [f"{name}_h{h}" for h in spec.horizons]
    if width == 1:
        return [name]
    return [f"{name}_{i}" for i in range(width)]


def _feature_rows(candles: pd.DataFrame, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (N, F) in the manifest's feature order, ok (N,) bool: the rows that can be scored)."""
    from pipelines.features import compute_features
    from pipelines.training.walk_forward import usable_rows

    fs = manifest.feature_set
    shape = manifest.input.shape
    if len(shape) not in (2, 3):
        raise BundleError(f"manifest input shape {shape} is neither [N, F] nor [N, T, F]")
    if shape[-1] != len(fs.names):
        raise BundleError(f"manifest input shape {shape} does not match {len(fs.names)} feature names")
    feats = compute_features(candles, fs.name, fs.params or None)
    missing = [c for c in fs.names if c not in feats.columns]
    if missing:
        raise BundleError(
            f"feature set {fs.name!r} lacks {missing} named by the manifest; "
            "the bundle needs a newer pipelines.features"
        )
    X = np.ascontiguousarray(feats[list(fs.names)].to_numpy(np.float64), dtype=np.float32)
    ok = usable_rows(X, fs.names, fs.nullable)
    ok[: max(int(fs.warmup) - 1, 0)] = False  # before warm-up a finite value is still inexact
    T = manifest.sequence_length or 1
    if T > 1:  # a window is scored iff all its T rows are: count bad rows with a cumsum
        bad = np.concatenate([[0], np.cumsum(~ok)])
        windows_ok = np.zeros(len(X), bool)
        if len(X) >= T:
            windows_ok[T - 1 :] = (bad[T:] - bad[:-T]) == 0
        ok = windows_ok
    return X, ok


def _column(values: np.ndarray, pos: np.ndarray, n: int) -> Any:
    """One output column of n rows: `values` at rows `pos`, missing elsewhere (NaN / <NA> / None)."""
    kind = values.dtype.kind
    if kind == "f":
        col = np.full(n, np.nan)
        col[pos] = values
        return col
    if kind in "iub":
        full = np.zeros(n, dtype=np.int64 if kind in "iu" else bool)
        full[pos] = values
        mask = np.ones(n, bool)
        mask[pos] = False
        return pd.arrays.IntegerArray(full, mask) if kind in "iu" else pd.arrays.BooleanArray(full, mask)
    col = np.full(n, None, dtype=object)
    col[pos] = values
    return col


def score_candles(
    candles: pd.DataFrame,
    onnx_bytes: bytes,
    manifest: Manifest,
    *,
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
    outputs: Sequence[str] | None = None,
    batch_size: int = BATCH_ROWS,
    threads: int = 1,
) -> pd.DataFrame:
    """Every candle in [start, end] scored through every output of a bundle's graph.

    Args:
        candles: candle frame of one symbol and the bundle's interval, oldest first, with
            `history_rows(manifest)` candles of history before `start` for its first row to be scored.
            The symbol may differ from the manifest's.
        onnx_bytes: the bundle's `model.onnx`.
        manifest: the bundle's manifest (feature set, fitted params, input shape, outputs).
        start, end: open times (inclusive, UTC if naive) of the rows returned; None = all rows.
        outputs: graph outputs to return (default: all, in the graph's order, read from the session,
            so outputs the manifest does not list are returned too).
        batch_size: rows per session run.
        threads: onnxruntime intra-op threads.

    Returns:
        One row per candle in [start, end]: `symbol`, `open_time` (as in `candles`), `scored` (bool)
        and the outputs' columns (`output_columns`: `<output>_h<h>`, `<output>` or `<output>_<i>`;
        float64, nullable Int64/boolean for integer/bool outputs). Rows not scored (warm-up, non-finite
        features other than the nullable ones, or a window holding such a row) have empty outputs.

    Raises:
        BundleError: the graph, the manifest and the features do not fit together.
    """
    from pipelines.contracts.onnx import make_session
    from pipelines.training.windows import sliding_windows

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    X, ok = _feature_rows(candles, manifest)
    times = candles["open_time"].reset_index(drop=True)
    keep = np.ones(len(times), bool)
    for bound, side in ((start, "start"), (end, "end")):
        if bound is not None:
            t = pd.Timestamp(bound)
            t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
            keep &= (times >= t).to_numpy() if side == "start" else (times <= t).to_numpy()
    rows = np.flatnonzero(keep)  # candle rows returned
    pos = np.flatnonzero(ok[rows])  # positions (in the result) of the scored rows
    score_rows = rows[pos]

    sess = make_session(onnx_bytes, threads=threads)
    inputs = sess.get_inputs()
    rank = len(manifest.input.shape)
    if len(inputs) != 1 or len(inputs[0].shape) != rank:
        raise BundleError(
            f"graph inputs {[(i.name, i.shape) for i in inputs]} do not match the manifest's one "
            f"input of shape {manifest.input.shape}"
        )
    metas = sess.get_outputs()
    names = [o.name for o in metas]
    wanted = names if outputs is None else list(outputs)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise BundleError(f"the ONNX graph has no output {unknown}; its outputs are {names}")
    not_tensors = [
        f"{o.name}: {o.type}" for o in metas if o.name in wanted and not o.type.startswith("tensor(")
    ]
    if not_tensors:
        raise BundleError(f"batch scoring writes tensor outputs only; the graph has {not_tensors}")

    T = manifest.sequence_length or 1
    source = sliding_windows(X, T) if T > 1 and len(X) >= T else X  # window k ends at row k + T - 1
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    for i in range(0, len(score_rows), batch_size):
        idx = score_rows[i : i + batch_size] - (T - 1)
        batch = np.ascontiguousarray(source[idx], dtype=np.float32)
        for n, v in zip(wanted, sess.run(wanted, {inputs[0].name: batch})):
            chunks[n].append(np.asarray(v).reshape(len(idx), -1))

    specs = {o.name: o for o in manifest.outputs}
    n_out = len(rows)
    symbol = candles["symbol"].iloc[rows] if "symbol" in candles.columns else [manifest.symbol] * n_out
    frame: dict[str, Any] = {
        "symbol": np.asarray(symbol, dtype=object),
        "open_time": times.iloc[rows].reset_index(drop=True),
        "scored": ok[rows],
    }
    for meta in metas:
        if meta.name not in chunks:
            continue
        if chunks[meta.name]:
            values = np.concatenate(chunks[meta.name])
        else:  # nothing scored: the width from the graph's declared shape, else the manifest's horizons
            dims = list(meta.shape[1:])
            spec = specs.get(meta.name)
            if all(isinstance(d, int) for d in dims):
                width = int(np.prod(dims))
            else:
                width = len(spec.horizons) if spec is not None and spec.horizons else 1
            values = np.empty((0, width), dtype=_ONNX_DTYPES.get(meta.type, np.float32))
        if values.dtype.kind == "f":
            values = values.astype(np.float64)
        for j, col in enumerate(output_columns(meta.name, values.shape[1], specs.get(meta.name))):
            if col in frame:
                raise BundleError(f"graph output {meta.name!r} gives column {col!r}, which is already taken")
            frame[col] = _column(values[:, j], pos, n_out)
    return pd.DataFrame(frame)


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
        Frame with `open_time` (as in `candles`) and one float64 column per horizon ("h1", ...) of the
        task's output (the manifest's first), e.g. ln(close[t+h]/close[t]); rows not scored are left out.

    Raises:
        BundleError: the features do not match the manifest's input.
    """
    first = [manifest.outputs[0].name] if manifest.outputs else None
    scored = score_candles(candles, onnx_bytes, manifest, outputs=first, threads=threads)
    scored = scored[scored["scored"]].reset_index(drop=True)
    cols = horizon_columns(manifest.horizons)
    values = scored.drop(columns=list(KEY_COLUMNS)).to_numpy(np.float64)
    if values.shape[1] != len(cols):
        raise BundleError(
            f"the graph's first output gives {values.shape[1]} values per row, the manifest {len(cols)} horizons"
        )
    out = pd.DataFrame(values, columns=cols)
    out.insert(0, "open_time", scored["open_time"])
    return out
