"""What serving watches of each loaded model version, and its Prometheus export (issue 14, items 2-4).

A `ModelWatch` belongs to one loaded version (`Predictor.set_model` builds it with the version; a
hot swap starts a fresh one): the time of its last prediction, its `DriftMonitor` (serving/drift.py)
when its bundle has a reference profile, and its `LiveAccuracy` when its task is signed (returns).

Live accuracy is bookkeeping over the candles serving itself receives: a prediction at candle t for
horizon h is realised at candle t+h, right when sign(value) == sign(close[t+h] - close[t]) (a zero
value or a zero return is no outcome). The per-candle path only appends (symbol, open_time, values);
outcomes are realised when a reader asks (/metrics) or when 4,096 predictions wait, from the symbol's
stream history (`api.history_candles` consecutive candles: a prediction whose candle left the history,
or whose stream was reset, is dropped). The window is the last 24 h of candle time (target candles
after the newest candle's open_time - 24 h). Every prediction the version made on a streamed candle
counts, served or shadow: the A/B review's view of a version.

`MonitoringCollector` exports, at scrape time and only for the versions loaded now (a swapped-out
version's series disappear rather than go stale):

| metric                                      | labels                                   |
|---------------------------------------------|------------------------------------------|
| kairos_drift_statistic                      | model, version, column, kind, statistic (psi, ks) |
| kairos_drift_ratio                          | model, version, column, kind (alarm statistic / threshold) |
| kairos_drift_alarm                          | model, version (1 = the calibrated rule fires) |
| kairos_drift_window_rows                    | model, version                           |
| kairos_live_accuracy                        | model, version, horizon (NaN without outcomes) |
| kairos_live_outcomes                        | model, version, horizon                  |
| kairos_last_prediction_timestamp_seconds    | model, version                           |
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from serving.drift import NO_PROFILE, DriftMonitor, monitor_for

if TYPE_CHECKING:
    from serving.predictor import Prediction
    from serving.runtime import LoadedModel

log = logging.getLogger("kairos.serving")

LIVE_WINDOW_MS = 24 * 3600 * 1000
REALISE_EVERY = 4096  # predictions waiting before they are realised on the request path

History = Callable[[str], Sequence[Mapping[str, Any]]]  # symbol → its stream's candles, oldest first


class LiveAccuracy:
    """Rolling 24 h direction accuracy per horizon of one version's predictions (see the module doc).

    Args:
        horizons: the served horizons, in candles (the order of `Prediction.values`).
        interval_ms: the candle interval.
        history: symbol → the stream's consecutive candles (dicts with open_time, close), oldest first.
        window_ms: the rolling window, in candle time.
    """

    def __init__(
        self, horizons: Sequence[int], interval_ms: int, history: History, window_ms: int = LIVE_WINDOW_MS
    ):
        self.horizons = tuple(int(h) for h in horizons)
        self.interval_ms = int(interval_ms)
        self.window_ms = int(window_ms)
        self._history = history
        self._new: list[tuple[str, int, tuple[float, ...]]] = []  # the per-candle appends
        # symbol → (open_time (n,), values (n, H), realised (n, H)) of predictions still waiting
        self._waiting: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        H = len(self.horizons)
        self._times = [np.zeros(0, np.int64) for _ in range(H)]  # per horizon: target candle open_time
        self._right = [np.zeros(0, bool) for _ in range(H)]  # per horizon: the call was right
        self._now = -1  # newest candle open_time seen in a history
        self._seen: set[str] = set()  # symbols this version predicted
        self._lock = threading.Lock()

    def add(self, p: Prediction) -> None:
        """The per-candle path: one append (realised later)."""
        self._new.append((p.symbol, p.open_time, p.values))
        if len(self._new) >= REALISE_EVERY:
            self.realise()

    def realise(self) -> None:
        """Judge every waiting prediction whose target candles have arrived; evict outcomes past 24 h."""
        with self._lock:
            new, self._new = self._new, []
            by_symbol: dict[str, list[tuple[int, tuple[float, ...]]]] = {}
            for sym, t, vals in new:
                by_symbol.setdefault(sym, []).append((t, vals))
            self._seen.update(by_symbol)
            for sym in self._seen:  # every symbol: the window slides with its candles even when nothing waits
                self._realise_symbol(sym, by_symbol.get(sym, []))
            self._evict()

    def _realise_symbol(self, sym: str, new: list[tuple[int, tuple[float, ...]]]) -> None:
        H = len(self.horizons)
        t0, v0, d0 = self._waiting.pop(sym, (np.zeros(0, np.int64), np.zeros((0, H)), np.zeros((0, H), bool)))
        if new:
            t = np.concatenate([t0, np.fromiter((e[0] for e in new), np.int64, len(new))])
            vals = np.concatenate([v0, np.array([e[1] for e in new], dtype=np.float64).reshape(len(new), H)])
            done = np.concatenate([d0, np.zeros((len(new), H), bool)])
        else:
            t, vals, done = t0, v0, d0
        hist = self._history(sym)
        if not hist:
            return  # the stream is gone (reset, not served any more): nothing waiting can be judged
        n, last = len(hist), int(hist[-1]["open_time"])
        self._now = max(self._now, last)
        if not len(t):
            return
        back = last - t  # ms before the newest candle
        pos = n - 1 - back // self.interval_ms  # index in the history (consecutive candles)
        ok = (back >= 0) & (back % self.interval_ms == 0) & (pos >= 0)
        if not ok.any():
            return
        start = int(pos[ok].min())
        tail = hist[start:]
        times = np.fromiter((c["open_time"] for c in tail), np.int64, len(tail))
        closes = np.fromiter((c["close"] for c in tail), np.float64, len(tail))
        rel = np.where(ok, pos - start, 0)
        ok &= times[rel] == t  # the candle itself is still there (always, unless replaced by a reset)
        for j, h in enumerate(self.horizons):
            ready = ok & ~done[:, j] & (rel + h < len(tail))
            if not ready.any():
                continue
            ret = closes[rel[ready] + h] - closes[rel[ready]]
            v = vals[ready, j]
            call = (ret != 0) & (v != 0) & np.isfinite(v)
            self._times[j] = np.concatenate([self._times[j], t[ready][call] + h * self.interval_ms])
            self._right[j] = np.concatenate([self._right[j], ((ret > 0) == (v > 0))[call]])
            done[ready, j] = True
        keep = ok & ~done.all(1)
        if keep.any():
            self._waiting[sym] = (t[keep], vals[keep], done[keep])

    def _evict(self) -> None:
        cut = self._now - self.window_ms
        for j in range(len(self.horizons)):
            m = self._times[j] > cut
            if not m.all():
                self._times[j], self._right[j] = self._times[j][m], self._right[j][m]

    def summary(self) -> dict[int, tuple[float, int]]:
        """horizon → (accuracy over the window, NaN without outcomes; outcomes in the window)."""
        self.realise()
        with self._lock:
            out = {}
            for h, right in zip(self.horizons, self._right):
                n = int(right.size)
                out[h] = (float(right.sum()) / n if n else float("nan"), n)
            return out


class ModelWatch:
    """One loaded version's last prediction time, drift monitor and live accuracy."""

    __slots__ = ("drift", "drift_note", "last_prediction", "live", "name", "version")

    def __init__(
        self,
        model: LoadedModel,
        history: History,
        interval_ms: int,
        drift: bool = True,
        live_accuracy: bool = True,
    ):
        self.name, self.version = model.name, model.version
        self.last_prediction: float | None = None  # epoch seconds
        self.drift: DriftMonitor | None
        self.drift, self.drift_note = monitor_for(model, drift)
        self.live = (
            LiveAccuracy(model.horizons_tuple, interval_ms, history)
            if live_accuracy and model.signed
            else None
        )

    def observe(self, x: Any, p: Prediction) -> None:
        """One prediction of this version on a streamed candle (`x` the model input it scored)."""
        self.last_prediction = time.time()
        try:
            if self.drift is not None:
                self.drift.add(x, p)
            if self.live is not None:
                self.live.add(p)
        except Exception as e:  # monitoring must never fail a prediction: stop it, say why, once
            log.exception("%s v%s: monitoring stopped", self.name, self.version)
            self.drift, self.live, self.drift_note = None, None, f"monitoring stopped: {e}"

    def drift_status(self) -> str:
        """ "ok" | "drift" | "warming up (n/window rows)" | "no reference profile" (or why else none)."""
        return self.drift_note if self.drift is None else self.drift.status()

    def health(self) -> dict[str, Any]:
        """This version's part of /healthz: version, last prediction (UTC ISO), drift status."""
        t = self.last_prediction
        return {
            "version": self.version,
            "last_prediction": None
            if t is None
            else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "drift": self.drift_status(),
        }


class MonitoringCollector:
    """Prometheus collector of the loaded versions' watches, read at scrape time.

    `watches()` yields the ModelWatch of every loaded version (champion first); a version loaded as
    both arms is exported once (two identical label sets would break the scrape)."""

    def __init__(self, watches: Callable[[], Iterable[ModelWatch]]):
        self._watches = watches

    def describe(self) -> list:
        return []  # names are not claimed up front: collect() reads live state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        mv = ["model", "version"]
        stat = GaugeMetricFamily(
            "kairos_drift_statistic",
            "Drift statistic of a feature or output over the rolling window against the version's reference profile",
            labels=[*mv, "column", "kind", "statistic"],
        )
        ratio = GaugeMetricFamily(
            "kairos_drift_ratio",
            "Alarm statistic over its calibrated threshold (> 1: beyond it)",
            labels=[*mv, "column", "kind"],
        )
        alarm = GaugeMetricFamily(
            "kairos_drift_alarm",
            "1 while the calibrated drift alarm fires (consecutive evaluations above threshold)",
            labels=mv,
        )
        rows = GaugeMetricFamily("kairos_drift_window_rows", "Candles in the drift window", labels=mv)
        acc = GaugeMetricFamily(
            "kairos_live_accuracy",
            "Direction accuracy of the version's predictions realised over the last 24 h of candles",
            labels=[*mv, "horizon"],
        )
        outcomes = GaugeMetricFamily(
            "kairos_live_outcomes",
            "Predictions realised in the live-accuracy window",
            labels=[*mv, "horizon"],
        )
        last = GaugeMetricFamily(
            "kairos_last_prediction_timestamp_seconds", "Time of the version's last prediction", labels=mv
        )
        seen = set()
        for w in self._watches():
            key = (w.name, w.version)
            if key in seen:
                continue
            seen.add(key)
            lv = [w.name, w.version]
            if w.last_prediction is not None:
                last.add_metric(lv, w.last_prediction)
            if w.drift is not None:
                snap = w.drift.snapshot()
                alarm.add_metric(lv, 1.0 if snap["alarm"] else 0.0)
                rows.add_metric(lv, float(snap["rows"]))
                for c in snap["columns"]:
                    stat.add_metric([*lv, c["name"], c["kind"], "psi"], c["psi"])
                    stat.add_metric([*lv, c["name"], c["kind"], "ks"], c["ks"])
                    ratio.add_metric([*lv, c["name"], c["kind"]], c["ratio"])
            if w.live is not None:
                for h, (a, n) in w.live.summary().items():
                    acc.add_metric([*lv, str(h)], a)
                    outcomes.add_metric([*lv, str(h)], float(n))
        yield from (stat, ratio, alarm, rows, acc, outcomes, last)


__all__ = ["LIVE_WINDOW_MS", "NO_PROFILE", "LiveAccuracy", "ModelWatch", "MonitoringCollector"]
