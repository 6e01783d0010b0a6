"""Online drift of one served model version against its reference profile (issue 14, item 2).

A bundle may carry a reference profile (`Manifest.reference_profile`, `pipelines.contracts.profile`):
quantile bins of every model input feature and output over the final training window, and the alarm
calibrated on no-drift history (`profile.alarm`: `statistic` psi|ks, `window` rows, `step` rows
between evaluations, `thresholds` per column, `consecutive` evaluations above threshold). A
`DriftMonitor` counts the values of each candle the version scores into the same bins, over the
rolling last `window` candles, and applies the same rule:

- evaluations at the `window`-th row counted and every `step` rows after it; a column is above when
  its statistic over the window exceeds its threshold (strictly, as `pipelines.monitoring.drift`);
  the alarm fires while some column has been above for `consecutive` evaluations in a row (a streak
  per column; columns without a threshold are reported, never alarmed on);
- the statistics are those of the contract (`psi`, `ks_binned`), bit for bit on the same counts.

Cost (benchmarks/bench_drift.py). A numpy call costs ~1 µs on one row whatever its size, so the
per-candle path does no numpy arithmetic: it copies the feature row and the outputs into a staging
block (two slice assignments) and counts. Every `block` candles (and at each evaluation row) the
block is binned at once: one comparison against a padded edge array (the bin of x is the number
of its column's edges below x; pads are +inf, NaN lands in a slot of its own), `np.bincount` for
the new and the evicted rows, and the ring of the last `window` bin indices (int16) is overwritten.
An evaluation row only copies the counts; the statistics are computed when /metrics or /healthz
reads them (or when 32 evaluations wait), vectorised over columns, never per request.

Candles are counted once per symbol: a candle at or before the newest one counted for its symbol
(a stream replayed after a reset, a /v1/predict window repeating streamed candles) is skipped.
Output columns are named as `pipelines.training.predict.output_columns` names them (serving may not
import it; `tests/unit/test_serving_drift.py` checks that both agree).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.contracts.profile import PSI_FLOOR, STATISTICS, ReferenceProfile

if TYPE_CHECKING:
    from serving.predictor import Prediction
    from serving.runtime import LoadedModel

log = logging.getLogger("kairos.serving")

NO_PROFILE = "no reference profile"
NO_ALARM = "no calibrated alarm"
BLOCK = 64  # candles staged before they are binned together (bounded by `step` and `window`)
MAX_PENDING = 32  # evaluation snapshots waiting for a reader before they are evaluated in place


class ProfileError(ValueError):
    """A bundle's reference profile or alarm cannot be used for online drift; the message names why."""


def output_columns(name: str, width: int, horizons: Sequence[int] = ()) -> list[str]:
    """Column names of one model output, by the rule of `pipelines.training.predict.output_columns`:
    `<name>_h<h>` when the output has as many horizons as values, `<name>` for width 1, else `<name>_<i>`."""
    if horizons and len(horizons) == width:
        return [f"{name}_h{h}" for h in horizons]
    if width == 1:
        return [name]
    return [f"{name}_{i}" for i in range(width)]


Source = tuple[str, Any]  # ("values", j) | ("confidence", j) | ("extra", name): where a Prediction holds it


def served_output_columns(model: LoadedModel) -> dict[str, Source]:
    """Profile column name → where a `Prediction` of `model` holds its value. Withheld horizons and the
    `feature_deviation` output (a prediction carries only its top entries) are not observable."""
    m = model.manifest
    specs = {o.name: o for o in m.outputs}
    served = {h: j for j, h in enumerate(model.horizons_tuple)}
    out: dict[str, Source] = {}

    def per_horizon(name: str, kind: str) -> None:
        spec = specs[name]
        width = spec.shape[-1] if isinstance(spec.shape[-1], int) else len(m.horizons)
        cols = output_columns(name, width, spec.horizons)
        if width != len(m.horizons):
            return  # not one value per horizon: a Prediction does not carry it by horizon
        for col, h in zip(cols, m.horizons):
            if h in served:
                out[col] = (kind, served[h])

    per_horizon(model.output_name, "values")
    if model.has_confidence:
        per_horizon("confidence", "confidence")
    for name in model.extra_names:
        out[output_columns(name, 1, specs[name].horizons)[0]] = ("extra", name)
    return out


@dataclass(frozen=True)
class Alarm:
    """The calibrated rule of `ReferenceProfile.alarm` (descriptive keys are ignored here)."""

    statistic: str  # "psi" | "ks"
    window: int  # rows in the rolling window
    step: int  # rows between evaluations
    consecutive: int  # evaluations in a row above threshold before the alarm fires
    thresholds: dict[str, float]  # column → threshold of `statistic` (NaN: not calibrated, never fires)

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Alarm | None:
        """None for an empty alarm (a profile not calibrated); ProfileError naming the bad key otherwise."""
        if not d:
            return None
        missing = [k for k in ("statistic", "window", "step", "thresholds", "consecutive") if k not in d]
        if missing:
            raise ProfileError(f"alarm lacks {missing}; it has {sorted(d)}")
        if d["statistic"] not in STATISTICS:
            raise ProfileError(f"alarm.statistic {d['statistic']!r} is not one of {sorted(STATISTICS)}")
        ints = {}
        for k in ("window", "step", "consecutive"):
            v = d[k]
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v != int(v) or v < 1:
                raise ProfileError(f"alarm.{k} must be a whole number >= 1, got {v!r}")
            ints[k] = int(v)
        th = d["thresholds"]
        if not isinstance(th, Mapping):
            raise ProfileError(f"alarm.thresholds must map column → threshold, got {type(th).__name__}")
        bad = {
            k: v
            for k, v in th.items()
            if v is not None
            and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0)
        }
        if bad:
            raise ProfileError(
                f"alarm.thresholds must be finite numbers >= 0 or null; bad: {dict(list(bad.items())[:5])}"
            )
        # null: the column could not be calibrated; it is reported and never fires
        thresholds = {k: math.nan if v is None else float(v) for k, v in th.items()}
        return cls(d["statistic"], ints["window"], ints["step"], ints["consecutive"], thresholds)


class DriftMonitor:
    """Rolling binned counts of one model version's features and outputs, and the calibrated alarm.

    Args:
        profile: the version's reference profile; `profile.alarm` must parse (`Alarm.parse`).
        feature_names: the model's input features in input order (the feature row's columns).
        outputs: profile output column → where a Prediction holds it (`served_output_columns`).
        sequence: the model input is (1, T, F): the newest step is the candle's feature row.
        block: candles staged before binning.

    Profile columns the version cannot observe (a withheld horizon, a name it does not have) are
    left out and listed in `untracked`.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        feature_names: Sequence[str],
        outputs: Mapping[str, Source],
        sequence: bool = False,
        block: int = BLOCK,
    ):
        alarm = Alarm.parse(profile.alarm)
        if alarm is None:
            raise ProfileError("the reference profile has no calibrated alarm")
        self.alarm = alarm
        pos = {n: i for i, n in enumerate(feature_names)}
        feats = [c for c in profile.columns if c.kind == "feature" and c.name in pos]
        outs = [c for c in profile.columns if c.kind == "output" and c.name in outputs]
        self.untracked = [c.name for c in profile.columns if c not in feats and c not in outs]
        cols = feats + outs
        if not cols:
            raise ProfileError(
                f"no profile column is observable by this version (profile columns: {profile.names()[:8]})"
            )
        for c in cols:
            finite = all(math.isfinite(e) for e in c.edges)
            increasing = all(b > a for a, b in zip(c.edges, c.edges[1:]))
            if len(c.shares) != len(c.edges) + 1 or not finite or not increasing:
                raise ProfileError(
                    f"column {c.name!r}: edges must be finite and increase strictly, and shares have one more entry "
                    f"({len(c.edges)} edges, {len(c.shares)} shares)"
                )
        self.names = [c.name for c in cols]
        self._nbins = [len(c.shares) for c in cols]
        self.kinds = [c.kind for c in cols]
        C, self._nf = len(cols), len(feats)
        fidx = [pos[c.name] for c in feats]
        self._fidx = None if fidx == list(range(len(feature_names))) else np.asarray(fidx)
        self._sequence = sequence
        srcs = [outputs[c.name] for c in outs]
        # the common case: the outputs profiled are the prediction's values, all of them, in order
        n_values = sum(1 for s in outputs.values() if s[0] == "values")
        self._outs_direct = srcs == [("values", j) for j in range(n_values)]
        self._srcs = srcs
        # padded edges (C, W1): each row its column's edges then +inf; W1 = max edges + 1 so that the
        # count of edges >= x is W1 for NaN only (every comparison false) → bin W1, the NaN slot
        W1 = max(len(c.edges) for c in cols) + 1
        E = np.full((C, W1), np.inf)
        for i, c in enumerate(cols):
            E[i, : len(c.edges)] = c.edges
        self._E = np.ascontiguousarray(E.T)[:, None, :]  # (W1, 1, C): the count runs over whole slabs
        self._count_dtype = np.uint8 if W1 < 255 else np.int32
        self._B = W1 + 1  # slots per column: bins 0..len(edges), unused pads, NaN at W1
        self._base = np.arange(C) * self._B + W1  # flat slot = column base + W1 - #(edges >= x)
        self._counts = np.zeros(C * self._B, dtype=np.int64)
        self.window = alarm.window
        self._k = max(1, min(block, alarm.step, alarm.window))
        self._stage = np.zeros((self._k, C), dtype=np.float64)
        self._n = 0  # staged rows
        ring_dtype = np.int16 if C * self._B < np.iinfo(np.int16).max else np.int32
        self._ring = np.zeros((alarm.window, C), dtype=ring_dtype)
        self._pos = 0  # next ring row written
        self._filled = 0  # ring rows holding a counted candle (<= window)
        self.rows = 0  # candles counted since the version was loaded (staged included)
        self._next_eval = alarm.window
        self._pending: list[np.ndarray] = []  # counts at evaluation rows not yet evaluated
        # per-group reference (columns with the same number of bins, so that every sum runs over
        # exactly the contract's elements: numpy's pairwise sum depends on the length)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(cols):
            groups.setdefault(len(c.shares), []).append(i)
        self._groups = []
        for nb, idx in groups.items():
            shares = np.array([cols[i].shares for i in idx], dtype=np.float64)  # (k, nb)
            self._groups.append((np.asarray(idx), nb, np.maximum(shares, PSI_FLOOR), np.cumsum(shares, -1)))
        self._thr = np.array([alarm.thresholds.get(n, np.nan) for n in self.names])
        self._streak = np.zeros(C, dtype=np.int64)
        self.evaluations = 0
        self.alarm_on = False
        self.alarm_columns: list[str] = []
        self._last: dict[str, int] = {}  # symbol → open_time of the newest candle counted
        self._snap: tuple[int, dict[str, Any]] | None = None  # (rows, the last snapshot())
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: LoadedModel, profile: ReferenceProfile) -> DriftMonitor:
        mon = cls(
            profile,
            model.feature_names,
            served_output_columns(model),
            sequence=model.rank == 3,
        )
        if mon.untracked:
            log.warning(
                "%s v%s: drift not tracked for profile columns %s (withheld, or not in a served prediction)",
                model.name,
                model.version,
                mon.untracked,
            )
        return mon

    # ---- the per-candle path ---------------------------------------------------------------
    def add(self, x: np.ndarray, p: Prediction) -> None:
        """Count one scored candle: `x` the model input (1, F) or (1, T, F), `p` its prediction."""
        t = p.open_time
        if t <= self._last.get(p.symbol, -1):
            return
        self._last[p.symbol] = t
        with self._lock:
            i = self._n
            nf = self._nf
            if nf:
                row = x[0, -1] if self._sequence else x  # (F,) or (1, F): broadcast into the stage row
                self._stage[i, :nf] = row if self._fidx is None else row.reshape(-1)[self._fidx]
            if self._srcs:
                self._stage[i, nf:] = p.values if self._outs_direct else self._outputs(p)
            self._n = i + 1
            self.rows += 1
            if i + 1 == self._k or self.rows == self._next_eval:
                self._flush()

    def _outputs(self, p: Prediction) -> list[float]:
        vals = []
        for kind, key in self._srcs:
            if kind == "values":
                v = p.values[key]
            elif kind == "confidence":
                v = p.confidence[key] if p.confidence is not None else None
            else:
                v = p.extras.get(key) if p.extras is not None else None
            vals.append(math.nan if v is None else v)
        return vals

    def _flush(self) -> None:
        """Bin the staged rows into the ring and the counts; snapshot the counts at an evaluation row.
        Caller holds the lock."""
        n = self._n
        if n:
            above = self._E >= self._stage[None, :n]  # (W1, n, C): edge k of column c >= x
            dt = self._count_dtype
            idx = self._base - above.view(np.uint8).sum(0, dtype=dt)  # (n, C) flat slots
            W, pos = self.window, self._pos
            # the ring rows written: a slice, or (wrapping) an index array
            where = slice(pos, pos + n) if pos + n <= W else (pos + np.arange(n)) % W
            evict = self._filled + n - W  # the oldest rows overwritten: the last `evict` written
            M = self._counts.size
            if evict > 0:
                old = self._ring[where][n - evict :]
                self._counts -= np.bincount(old.ravel(), minlength=M)
            self._counts += np.bincount(idx.ravel(), minlength=M)
            self._ring[where] = idx
            self._pos = (self._pos + n) % W
            self._filled = min(W, self._filled + n)
            self._n = 0
        if self.rows == self._next_eval:
            self._pending.append(self._counts.copy())
            self._next_eval += self.alarm.step
            if len(self._pending) >= MAX_PENDING:
                self._evaluate()

    # ---- statistics (readers: /metrics, /healthz) --------------------------------------------
    def _stats(self, counts: np.ndarray, which: Sequence[str]) -> dict[str, np.ndarray]:
        """counts (s, C*B) → {statistic: (s, C)} as `pipelines.contracts.profile` computes them per column."""
        s, C = counts.shape[0], len(self.names)
        L3 = counts.reshape(s, C, self._B).astype(np.float64)
        out = {w: np.full((s, C), np.nan) for w in which}
        with np.errstate(invalid="ignore", divide="ignore"):
            for idx, nb, q, cq in self._groups:
                L = L3[:, idx, :nb]  # (s, k, nb)
                total = L.sum(-1, keepdims=True)
                f = L / total
                empty = total[..., 0] <= 0
                if "psi" in out:
                    p = np.maximum(f, PSI_FLOOR)
                    v = ((p - q) * np.log(p / q)).sum(-1)
                    out["psi"][:, idx] = np.where(empty, np.nan, v)
                if "ks" in out:
                    v = np.abs(np.cumsum(f, -1) - cq).max(-1)
                    out["ks"][:, idx] = np.where(empty, np.nan, v)
        return out

    def _evaluate(self) -> None:
        """Apply the rule to the waiting evaluation snapshots, oldest first. Caller holds the lock."""
        if not self._pending:
            return
        snaps, self._pending = np.stack(self._pending), []
        values = self._stats(snaps, (self.alarm.statistic,))[self.alarm.statistic]
        k = self.alarm.consecutive
        with np.errstate(invalid="ignore"):
            for row in values:
                above = row > self._thr  # NaN (no rows, no threshold) is never above
                self._streak = np.where(above, self._streak + 1, 0)
        self.evaluations += len(values)
        fired = self._streak >= k
        self.alarm_on = bool(fired.any())
        self.alarm_columns = [n for n, f in zip(self.names, fired) if f]

    def status(self) -> str:
        """ "ok" | "drift" | "warming up (n/window rows)" (evaluates what waits; no statistics else)."""
        with self._lock:
            self._evaluate()
            if self.rows < self.window:
                return f"warming up ({self.rows}/{self.window} rows)"
            return "drift" if self.alarm_on else "ok"

    def snapshot(self) -> dict[str, Any]:
        """Everything /metrics shows: rows in the window, the alarm, and per column psi, ks and the
        ratio of the alarm statistic to its threshold, over the window as it is now."""
        with self._lock:
            if self._snap is not None and self._snap[0] == self.rows:
                return self._snap[1]  # nothing counted since the last read (scrapes outpace candles)
            self._flush()
            self._evaluate()
            stats = self._stats(self._counts[None], ("psi", "ks"))
            rows, alarm_on, counted = self._filled, self.alarm_on, self.rows
        psi, ks = stats["psi"][0], stats["ks"][0]
        with np.errstate(invalid="ignore"):
            ratio = (psi if self.alarm.statistic == "psi" else ks) / self._thr
        snap = {
            "rows": rows,
            "alarm": alarm_on,
            "columns": [
                {"name": n, "kind": k, "psi": float(a), "ks": float(b), "ratio": float(r)}
                for n, k, a, b, r in zip(self.names, self.kinds, psi, ks, ratio)
            ],
        }
        self._snap = (counted, snap)
        return snap

    def counts(self, name: str) -> np.ndarray:
        """Live counts per bin of column `name` over the window (NaN values not counted), float64."""
        i = self.names.index(name)
        with self._lock:
            self._flush()
            row = self._counts[i * self._B : (i + 1) * self._B]
            return row[: self._nbins[i]].astype(np.float64)


def monitor_for(model: LoadedModel, enabled: bool = True) -> tuple[DriftMonitor | None, str]:
    """(the version's DriftMonitor or None, why not): "off", NO_PROFILE, NO_ALARM or the profile's fault."""
    if not enabled:
        return None, "off"
    if model.manifest.reference_profile is None:
        return None, NO_PROFILE
    try:
        profile = model.manifest.profile()
        if not profile.alarm:
            return None, NO_ALARM
        return DriftMonitor.for_model(model, profile), ""
    except (ProfileError, ValueError, KeyError, TypeError) as e:
        log.error("%s v%s: online drift off, unusable reference profile: %s", model.name, model.version, e)
        return None, f"invalid reference profile: {e}"


__all__ = [
    "NO_ALARM",
    "NO_PROFILE",
    "Alarm",
    "DriftMonitor",
    "ProfileError",
    "monitor_for",
    "output_columns",
    "served_output_columns",
]
