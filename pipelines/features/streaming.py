"""Streaming features: the batch kernel run on one candle at a time over a preallocated ring buffer.

`update()` writes the candle into column p of the work matrix X (the `lags` columns before p are
the context), runs the feature set's kernel on [p, p+1) with the carried EMA/RSI state and returns
the feature row. When X is full the context is copied to the front (every CAPACITY candles), so a
call allocates only small temporaries and never touches pandas.

Sequence rules: a candle must come after the last one (duplicates and out-of-order candles raise
StreamError); when `interval_ms` is known it must be exactly one interval later (a gap raises
StreamError naming the expected and received times). A rejected candle leaves the state unchanged.
Re-sync after a gap: `StreamingFeatures.from_history(window)` on a fresh window of at least
`warmup` candles ending at the newest candle (exact at once), or `reset()` and feed candles again
(NaN until `warmup` candles have passed). A duplicate can simply be dropped.

No pandas here (the serving process never imports it): a frame passed to `from_history` brings
pandas along; a mapping of arrays does not.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.contracts.errors import StreamError
from pipelines.features.base import (
    Candles,
    FeatureError,
    _check_frame,
    _column,
    _impl,
    _run,
    _work_matrix,
    n_candles,
)

if TYPE_CHECKING:
    import pandas as pd  # noqa: F401  (the serving process never imports pandas: see to_epoch_ms)

CAPACITY = 4096  # ring columns after the context; the context is moved to the front when full


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_epoch_ms(t: Any) -> int:
    """open_time as epoch ms: an int (ms), a pandas/datetime timestamp (naive = UTC) or datetime64."""
    if type(t) is int:
        return t
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        return int(t)
    pd = sys.modules.get("pandas")  # a pd.Timestamp implies pandas is loaded; never import it here
    if pd is not None and isinstance(t, pd.Timestamp):
        return int(t.value // 1_000_000)  # .value: epoch ns whatever the unit
    if isinstance(t, datetime):
        aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MS  # integer arithmetic: exact, floor like the ns path
    if isinstance(t, np.datetime64):
        return int(t.astype("datetime64[ms]").astype(np.int64))
    raise StreamError(
        f"open_time {t!r} ({type(t).__name__}) is not epoch ms or a timestamp; send epoch ms as int"
    )


class StreamingFeatures:
    """Features of one symbol, one closed candle at a time, equal to `compute_features` on the history.

    Args:
        feature_set: registered name, e.g. "core27".
        interval_ms: candle length; when given, a gap raises StreamError (otherwise only order is checked).
        params: fitted parameters of the set's fitted parts (`fit_feature_params`, or a bundle
            manifest's `feature_set.params`); None for sets without any.
    """

    def __init__(
        self,
        feature_set: str = "core27",
        interval_ms: int | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        impl = _impl(feature_set)
        self._params = params
        impl.new_state(params)  # a fitted set without its parameters fails here
        if interval_ms is not None and int(interval_ms) <= 0:
            raise StreamError(f"interval_ms must be a positive candle length, got {interval_ms}")
        self._impl = impl
        self.feature_set = impl.spec
        self.interval_ms = None if interval_ms is None else int(interval_ms)
        fields = [(r, n) for r, n in enumerate(impl.inputs) if n is not None]
        # required fields, X-row order; open_time (when a set reads the clock) first, taken from `t`
        self._req = list(dict.fromkeys(n for _, n in fields if n not in impl.optional and n != "open_time"))
        self._clock = any(n == "open_time" for _, n in fields)
        if self._clock:
            self._req.insert(0, "open_time")
        self._opt = list(dict.fromkeys(n for _, n in fields if n in impl.optional))
        rows: dict[str, int] = {}  # first X row of each field
        for r, n in fields:
            rows.setdefault(n, r)
        self._rows = np.array([rows[n] for n in self._req + self._opt])  # X row of each value, in order
        # a composite ("core27+whale19") reads a field in several parts' rows: copied from the first
        self._dup_to = np.array([r for r, n in fields if rows[n] != r], dtype=np.intp)
        self._dup_from = np.array([rows[n] for r, n in fields if rows[n] != r], dtype=np.intp)
        self._close = self._req.index("close")
        self._X = np.empty((len(impl.inputs), impl.lags + CAPACITY))  # (rows, lags + CAPACITY)
        self._out = np.empty((len(impl.spec.names), 1))  # (F, 1), overwritten by every update
        self._fv = impl.first_valid
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next candle starts a new one (NaN until `warmup` candles)."""
        lags = self._impl.lags
        self._X[:, :lags] = self._impl.pad[:, None]
        self._p = lags  # next column to write
        self._count = 0  # candles seen since the history started
        self._state = self._impl.new_state(self._params)
        self.last_open_time: int | None = None  # epoch ms of the last accepted candle

    @classmethod
    def from_history(
        cls,
        candles: Candles,
        feature_set: str = "core27",
        interval_ms: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> StreamingFeatures:
        """A stream warmed on `candles` (oldest first), as if each had been passed to `update`.

        `candles` is a candle frame or a mapping column → (N,) numpy array (open_time int64 epoch
        ms; no pandas needed, see `arrays_from_records`). `interval_ms` defaults to the `interval`
        column (e.g. "1m"); when known, the window must have no gap. With at least `warmup`
        candles the stream is `ready` at once.
        """
        n = n_candles(candles)
        if interval_ms is None and "interval" in candles and n:
            from pipelines.contracts.schema import interval_ms as interval_length

            try:
                col = _column(candles, "interval")
                interval_ms = interval_length(str(col.iloc[0] if hasattr(col, "iloc") else col[0]))
            except ValueError as e:
                raise FeatureError(str(e)) from None
        obj = cls(feature_set, interval_ms, params)
        if n == 0:
            return obj
        impl = obj._impl
        t = _check_frame(candles, impl)
        if obj.interval_ms is not None:
            gaps = np.flatnonzero(np.diff(t) != obj.interval_ms)
            if gaps.size:
                i = int(gaps[0])
                raise StreamError(
                    f"history has a gap after {_iso(int(t[i]))}: expected open_time "
                    f"{int(t[i]) + obj.interval_ms}, got {int(t[i + 1])}; warm from a gap-free window"
                )
        X = _work_matrix(candles, impl)
        with np.errstate(all="ignore"):
            _run(impl, X, 0, obj._state, None)
        obj._X[:, : impl.lags] = X[:, -impl.lags :]
        obj._count = len(t)
        obj.last_open_time = int(t[-1])
        return obj

    @property
    def ready(self) -> bool:
        """True once every feature is defined and exact (`warmup` candles seen)."""
        return self._count >= self.feature_set.warmup

    @property
    def count(self) -> int:
        """Candles seen since the history started (from_history's window included)."""
        return self._count

    def update(self, candle: Mapping[str, Any]) -> np.ndarray:
        """Advance one closed candle; returns its features, float64 (F,), NaN while warming.

        Args:
            candle: mapping with `open_time` (epoch ms int or timestamp) and the candle fields
                (`spread_bps` optional). Extra keys are ignored.

        Raises:
            StreamError: duplicate, out-of-order or gapped candle, or a missing/non-finite field;
                the state is unchanged.
        """
        return self.update_view(candle).copy()

    def update_view(self, candle: Mapping[str, Any]) -> np.ndarray:
        """`update` without the copy: the row is a view of a buffer the next call overwrites (for a
        caller that copies it at once, e.g. into a model's input row)."""
        try:
            t = to_epoch_ms(candle["open_time"])
        except KeyError:
            raise StreamError("candle lacks open_time; send epoch ms of the candle's open") from None
        last = self.last_open_time
        iv = self.interval_ms
        if last is not None and (t <= last or (iv is not None and t != last + iv)):
            raise self._sequence_error(t, last)
        try:
            if self._clock:
                vals = [float(t)] + [float(candle[n]) for n in self._req[1:]]
            else:
                vals = [float(candle[n]) for n in self._req]
        except (KeyError, TypeError, ValueError):
            raise self._field_error(candle, t) from None
        if not math.isfinite(sum(vals)) or vals[self._close] <= 0:
            raise self._field_error(candle, t)
        for n in self._opt:
            v = candle.get(n)
            vals.append(math.nan if v is None else float(v))
        X, p = self._X, self._p
        if p == X.shape[1]:  # ring full: keep the context, start over at the front
            lags = self._impl.lags
            X[:, :lags] = X[:, p - lags : p]
            p = lags
        X[self._rows, p] = vals
        if self._dup_to.size:
            X[self._dup_to, p] = X[self._dup_from, p]
        out = self._out
        self._impl.kernel(X, p, p + 1, self._count, self._state, out)
        if self._count < self.feature_set.warmup:
            out[self._fv > self._count, 0] = np.nan
        self._p = p + 1
        self._count += 1
        self.last_open_time = t
        return out[:, 0]

    def _sequence_error(self, t: int, last: int) -> StreamError:
        iv = self.interval_ms
        expected = f"{last + iv} ({_iso(last + iv)})" if iv else f"> {last} ({_iso(last)})"
        if t == last:
            what = "duplicate candle"
        elif t < last:
            what = "out-of-order candle"
        else:
            what = f"gap of {(t - last) // iv - 1} candle(s)" if (t - last) % iv == 0 else "misaligned candle"
        return StreamError(
            f"{what}: expected open_time {expected}, got {t} ({_iso(t)}); drop duplicates, "
            "re-sync otherwise with from_history(fresh window) or reset()"
        )

    def _field_error(self, candle: Mapping[str, Any], t: int) -> StreamError:
        for n in self._req:
            if n == "open_time":  # already converted (to_epoch_ms) and accepted
                continue
            v = candle.get(n)
            try:
                ok = v is not None and math.isfinite(float(v)) and (n != "close" or float(v) > 0)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                return StreamError(
                    f"candle {_iso(t)} has {n}={v!r}; features need finite numbers (close > 0)"
                )
        return StreamError(f"candle {_iso(t)} has a non-finite field")

    def __repr__(self) -> str:
        return (
            f"StreamingFeatures({self.feature_set.name!r}, interval_ms={self.interval_ms}, "
            f"count={self._count}, ready={self.ready})"
        )
