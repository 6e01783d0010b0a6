"""Feature-set registry and the batch engine (see the package docstring)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from pipelines.contracts.errors import KairosError

if TYPE_CHECKING:
    import pandas as pd

# A candle frame, or a mapping column name → (N,) numpy array (open_time int64 epoch ms)
Candles = Union["pd.DataFrame", Mapping[str, Any]]

CHUNK = 8192  # batch columns per kernel call: bounds the (series, chunk, lags) temporaries (~20 MB)


class FeatureError(KairosError):
    """Candles cannot be turned into features (missing column, unsorted times, bad values)."""


class UnknownFeatureSet(FeatureError, KeyError):
    """No feature set of that name (also a KeyError, as a failed lookup)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class FeatureSet:
    """What a model's manifest records about its inputs.

    Attributes:
        name: e.g. "core27".
        version: bumped whenever any value could change.
        names: feature (column) names, in model-input order.
        warmup: candles of history after which every feature is defined and exact (to ~1e-16
            relative for EMA/RSI), i.e. rows with index >= warmup - 1 are exact.
    """

    name: str
    version: int
    names: tuple[str, ...]
    warmup: int
    components: tuple[tuple[str, int], ...] = ()  # a composite "a+b": each part's (name, version)
    fitted: tuple[str, ...] = ()  # parts whose kernels need parameters fitted on training data
    nullable: tuple[str, ...] = ()  # features that are NaN by design when an optional input is missing


@dataclass(frozen=True)
class _Impl:
    spec: FeatureSet
    inputs: tuple[str | None, ...]  # candle field of each X row; None = scratch the kernel writes
    pad: np.ndarray  # (rows,) X values before the first candle
    lags: int  # context columns the kernel reads before `lo`
    first_valid: np.ndarray  # (F,) first candle index at which each feature is defined
    new_state: Callable[[Mapping[str, Any] | None], Any]  # params {set name: fitted params} → state
    kernel: Callable[..., None]
    optional: frozenset[str] = frozenset({"spread_bps"})  # fields that may be missing (→ NaN)
    fitters: tuple[tuple[str, tuple[str, ...], Callable[..., Any]], ...] = ()  # (set, its fields, fit)


# Registered feature-set modules, by import path. A new set is one module exposing NAME, VERSION,
# NAMES, INPUTS, PAD_VALUES, LAGS, first_valid(), new_state() and kernel() (see core27), optionally
# OPTIONAL (candle fields that may be missing, → NaN); bump its VERSION on any value change.
# A *fitted* set (e.g. risk: an HMM fitted on the training fold) also exposes
# `fit(arrays: dict[field, (N,) float64]) -> dict` (JSON-serialisable parameters, from training rows
# only) and takes them in `new_state(params)`; the parameters travel in the bundle manifest.
SET_MODULES: tuple[str, ...] = (
    "pipelines.features.core27",
    "pipelines.features.core18",
    "pipelines.features.ta",
    "pipelines.features.whale19",
    "pipelines.features.whale19r",
    "pipelines.features.mtf",
    "pipelines.features.risk",
)


@lru_cache(maxsize=1)
def _registry() -> dict[str, _Impl]:
    """Every feature set by name (single sets; `a+b` composites are built on demand by `_impl`)."""
    import importlib

    reg = {}
    for path in SET_MODULES:
        m = importlib.import_module(path)
        fv = np.asarray(m.first_valid())
        fitted = hasattr(m, "fit")
        spec = FeatureSet(
            m.NAME,
            m.VERSION,
            tuple(m.NAMES),
            int(fv.max()) + 1,
            fitted=(m.NAME,) * fitted,
            nullable=tuple(getattr(m, "NULLABLE", ())),
        )
        optional = frozenset(getattr(m, "OPTIONAL", ("spread_bps",)))
        fields = tuple(dict.fromkeys(i for i in m.INPUTS if i is not None))
        fitters = ((m.NAME, fields, m.fit),) if fitted else ()
        reg[m.NAME] = _Impl(
            spec,
            tuple(m.INPUTS),
            m.PAD_VALUES,
            m.LAGS,
            fv,
            _state_maker(m, fitted),
            m.kernel,
            optional,
            fitters,
        )
    return reg


def _state_maker(m: Any, fitted: bool) -> Callable[[Mapping[str, Any] | None], Any]:
    def new_state(params: Mapping[str, Any] | None = None) -> Any:
        if not fitted:
            return m.new_state()
        p = (params or {}).get(m.NAME)
        if p is None:
            raise FeatureError(
                f"feature set {m.NAME!r} is fitted on training data: pass its parameters "
                f"(fit_feature_params(training candles, ...) or the bundle manifest's feature_set.params)"
            )
        return m.new_state(p)

    return new_state


def known_feature_sets() -> list[str]:
    return sorted(_registry())


def composite_name(parts: str | Sequence[str]) -> str:
    """Canonical name of a set or a composition: "core27,ta", ["core27", "ta"] or "core27+ta" → "core27+ta"."""
    if isinstance(parts, str):
        parts = parts.replace(",", "+").split("+")
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise UnknownFeatureSet(f"no feature set named in {parts!r}; known: {known_feature_sets()}")
    return "+".join(names)


def _impl(name: str) -> _Impl:
    name = composite_name(name)
    if "+" in name:
        return _composite(name)
    try:
        return _registry()[name]
    except KeyError:
        raise UnknownFeatureSet(f"unknown feature set {name!r}; known: {known_feature_sets()}") from None


@lru_cache(maxsize=32)
def _composite(name: str) -> _Impl:
    """Sets side by side ("core27+ta"): one work matrix stacking each part's rows, each part's kernel
    run on its own rows and writing its own feature rows; the names concatenate in the given order."""
    parts = [_impl(p) for p in name.split("+")]
    seen: dict[str, str] = {}
    for p in parts:
        for f in p.spec.names:
            if f in seen:
                raise FeatureError(
                    f"feature {f!r} is in both {seen[f]!r} and {p.spec.name!r}; a composition needs distinct names"
                )
            seen[f] = p.spec.name
    rows = np.cumsum([0] + [len(p.inputs) for p in parts])
    feats = np.cumsum([0] + [len(p.spec.names) for p in parts])

    def new_state(params: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
        return tuple(p.new_state(params) for p in parts)

    # (kernel, its X rows, its feature rows, its index) per part; Python slices and ints (per candle,
    # slicing with numpy integers costs ~3x as much)
    calls = [
        (p.kernel, slice(int(rows[i]), int(rows[i + 1])), slice(int(feats[i]), int(feats[i + 1])), i)
        for i, p in enumerate(parts)
    ]

    def kernel(X: np.ndarray, lo: int, hi: int, t0: int, state: tuple[Any, ...], out: np.ndarray) -> None:
        for k, r, f, i in calls:  # X[a:b] of a C-contiguous matrix is C-contiguous
            k(X[r], lo, hi, t0, state[i], out[f])

    fv = np.concatenate([p.first_valid for p in parts])
    spec = FeatureSet(
        name,
        1,
        tuple(seen),
        int(fv.max()) + 1,
        tuple((p.spec.name, p.spec.version) for p in parts),
        tuple(f for p in parts for f in p.spec.fitted),
        tuple(f for p in parts for f in p.spec.nullable),
    )
    return _Impl(
        spec,
        tuple(i for p in parts for i in p.inputs),
        np.concatenate([p.pad for p in parts]),
        max(p.lags for p in parts),
        fv,
        new_state,
        kernel,
        frozenset().union(*(p.optional for p in parts)),
        tuple(f for p in parts for f in p.fitters),
    )


def get_feature_set(name: str = "core27") -> FeatureSet:
    """The spec (name, version, names, warmup) of a feature set; UnknownFeatureSet if none."""
    return _impl(name).spec


# ---------------------------------------------------------------------------------------- batch
# A batch input is a candle frame or a mapping of equal-length numpy arrays (column → (N,) array,
# open_time as int64 epoch ms or datetime64): the array form lets the serving process compute
# features without importing pandas. pandas is imported only when a frame is given or returned.


def _is_frame(candles: Any) -> bool:
    """True for a pandas DataFrame (without importing pandas: a frame implies pandas is loaded)."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(candles, pd.DataFrame)


def n_candles(candles: Candles) -> int:
    """Rows of a frame, or the length of a mapping's open_time (0 for an empty mapping)."""
    if _is_frame(candles):
        return len(candles)
    if "open_time" in candles:
        return int(np.shape(candles["open_time"])[0])
    return len(next(iter(candles.values()), ()))


def _column(candles: Candles, name: str) -> Any:
    return candles[name] if _is_frame(candles) else np.atleast_1d(np.asarray(candles[name]))


def _epoch_ms(times: Any) -> np.ndarray:
    """open_time column (datetime64 of any unit/tz, or integer epoch ms) → int64 epoch ms (N,)."""
    if isinstance(times, np.ndarray):
        if times.dtype.kind in "iu":
            return times.astype(np.int64, copy=False)
        if times.dtype.kind == "M":  # naive datetime64 = UTC
            return times.astype("datetime64[ms]").astype(np.int64)
        raise FeatureError(f"open_time array has dtype {times.dtype}; give int64 epoch ms or datetime64")
    import pandas as pd

    if pd.api.types.is_integer_dtype(times.dtype):
        return times.to_numpy(np.int64)
    ts = pd.to_datetime(times, utc=True)
    return ts.dt.tz_convert(None).to_numpy("datetime64[ms]").astype(np.int64)


def _check_frame(candles: Candles, impl: _Impl) -> np.ndarray:
    """Raise FeatureError for unusable candles (frame or mapping); returns open_time as epoch ms (N,)."""
    need = ["open_time"] + [n for n in impl.inputs if n is not None and n not in impl.optional]
    missing = [c for c in need if c not in candles]  # `in` a frame tests its columns
    if missing:
        raise FeatureError(
            f"candle frame lacks columns {missing}; map it to the candle contract (pipelines.contracts.schema)"
        )
    if "symbol" in candles:
        if _is_frame(candles):
            symbols = sorted(candles["symbol"].unique()) if candles["symbol"].nunique() > 1 else []
        else:
            symbols = sorted(set(_column(candles, "symbol").tolist()))
        if len(symbols) > 1:
            raise FeatureError(f"features take one symbol at a time, got {symbols}; group by symbol")
    t = _epoch_ms(_column(candles, "open_time"))
    bad = np.flatnonzero(np.diff(t) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise FeatureError(
            f"open_time is not strictly increasing at row {i} ({t[i - 1]} then {t[i]} ms); "
            "sort and de-duplicate first"
        )
    return t


def _float_column(candles: Candles, name: str, n: int) -> np.ndarray:
    """(n,) float64 values of `name` (None/NA → NaN; a missing optional column → all NaN)."""
    if name not in candles:
        return np.full(n, np.nan)
    if name == "open_time":  # a feature set may read the clock (e.g. to align higher-timeframe bars)
        return _epoch_ms(_column(candles, name)).astype(np.float64)
    if _is_frame(candles):
        return candles[name].to_numpy(np.float64, na_value=np.nan)
    col = np.asarray(candles[name])
    if col.dtype == object:  # e.g. spread_bps with None where the feed has none
        col = np.array([np.nan if v is None else v for v in col], dtype=np.float64)
    col = col.astype(np.float64, copy=False)
    if col.shape != (n,):
        raise FeatureError(f"column {name} has shape {col.shape}, expected ({n},) like open_time")
    return col


def _work_matrix(candles: Candles, impl: _Impl) -> np.ndarray:
    """(rows, lags + N) float64: pad columns, then the candles' input fields; checks values."""
    n = n_candles(candles)
    X = np.empty((len(impl.inputs), impl.lags + n))
    X[:, : impl.lags] = impl.pad[:, None]
    for r, name in enumerate(impl.inputs):
        if name is None:
            continue
        col = _float_column(candles, name, n)
        if name not in impl.optional:
            bad = ~np.isfinite(col) | ((col <= 0) if name == "close" else False)
            if bad.any():
                i = int(np.argmax(bad))
                raise FeatureError(
                    f"{name} at row {i} is {col[i]}; features need finite values and close > 0 "
                    "(validation.candles)"
                )
        X[r, impl.lags :] = col
    return X


def arrays_from_records(
    records: Sequence[Mapping[str, Any]], feature_set: str = "core27"
) -> dict[str, np.ndarray]:
    """Candle dicts (contract names, open_time epoch ms) → the mapping of arrays the batch functions take.

    Only `open_time` and the feature set's input fields are copied; a missing optional field
    (spread_bps) or None becomes NaN. KeyError names a missing required field.
    """
    impl = _impl(feature_set)
    n = len(records)
    out = {"open_time": np.fromiter((r["open_time"] for r in records), np.int64, n)}
    for name in impl.inputs:
        if name is None or name == "open_time":
            continue
        if name in impl.optional:
            vals = [r.get(name) for r in records]
            out[name] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        else:
            out[name] = np.fromiter((r[name] for r in records), np.float64, n)
    return out


def _run(impl: _Impl, X: np.ndarray, t0: int, state: Any, out: np.ndarray | None) -> None:
    """Kernel over every candle column of X (history index t0 at the first), chunked.

    Writes features (F, N) into `out` (NaN where undefined); out=None only advances the state
    and X's scratch rows (warming a stream).
    """
    lo, hi = impl.lags, X.shape[1]
    scratch = None if out is not None else np.empty((len(impl.spec.names), min(CHUNK, hi - lo)))
    for a in range(lo, hi, CHUNK):
        b = min(a + CHUNK, hi)
        dst = out[:, a - lo : b - lo] if out is not None else scratch[:, : b - a]
        impl.kernel(X, a, b, t0 + a - lo, state, dst)
    if out is not None:
        for j, fv in enumerate(impl.first_valid):
            if fv > t0:
                out[j, : fv - t0] = np.nan


def _batch(candles: Candles, impl: _Impl, params: Mapping[str, Any] | None = None) -> np.ndarray:
    state = impl.new_state(params)  # a fitted set without its parameters fails before any work
    _check_frame(candles, impl)
    X = _work_matrix(candles, impl)
    out = np.empty((len(impl.spec.names), X.shape[1] - impl.lags))
    with np.errstate(all="ignore"):  # masked pad rows may divide by zero; values are checked above
        _run(impl, X, 0, state, out)
    return out


def fit_feature_params(candles: Candles, feature_set: str) -> dict[str, Any]:
    """Parameters of the fitted parts of `feature_set` (e.g. risk's HMM), fitted on `candles`, which
    must be training rows only; {} when no part is fitted. Pass the result as `params` to the batch
    functions and to `StreamingFeatures`; it is JSON-serialisable and travels in the bundle manifest."""
    impl = _impl(feature_set)
    if not impl.fitters:
        return {}
    _check_frame(candles, impl)
    n = n_candles(candles)
    out = {}
    for name, fields, fit in impl.fitters:
        out[name] = fit({f: _float_column(candles, f, n) for f in fields})
    return out


def compute_features(
    candles: Candles, feature_set: str = "core27", params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Features of every candle of one symbol, using candles <= t only.

    Args:
        candles: candle-contract frame (pipelines.contracts.schema), one symbol, sorted by open_time,
            finite values, close > 0; or a mapping column → (N,) numpy array with the same
            fields (open_time int64 epoch ms). Gaps are not detected here (validation.candles
            reports them): rows are treated as consecutive.
        feature_set: registered name, e.g. "core27", or a composition "core27+ta".
        params: fitted parameters of the set's fitted parts (`fit_feature_params`); None for sets
            without any.

    Returns:
        float64 frame (N, F), columns = the set's names, index = candles.index (a RangeIndex for
        a mapping); NaN until each feature's window is full (all defined from row `warmup - 1`).

    Raises:
        UnknownFeatureSet, FeatureError.
    """
    import pandas as pd

    impl = _impl(feature_set)
    out = _batch(candles, impl, params)  # (F, N)
    index = candles.index if _is_frame(candles) else None
    return pd.DataFrame(out.T, index=index, columns=list(impl.spec.names), copy=False)


def feature_matrix(
    candles: Candles, feature_set: str = "core27", params: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Like `compute_features` (frame or mapping of arrays), as the float32 (N, F) matrix the ONNX
    models take; needs no pandas for a mapping."""
    return np.ascontiguousarray(_batch(candles, _impl(feature_set), params).T, dtype=np.float32)
