"""In-process prediction API: `Predictor.update(candle)` (streaming) and `Predictor.predict(window)`.

A `Predictor` serves one registered model (one symbol + interval) with a champion and an optional
challenger. Streaming features come from `pipelines.features.StreamingFeatures` (the one feature
implementation): one state per feature set, advanced once per candle whatever the arms, so champion
and challenger see identical inputs. Sequence models ([N, T, F] input) read the last T feature rows
from a ring buffer. Models are swapped by replacing one immutable dict (atomic under the GIL), so a
request sees either the old or the new version, never a mix.

Re-sync: an out-of-order, duplicate or gapped candle raises `pipelines.contracts.errors.StreamError` and leaves
the state unchanged; the client either sends the missing candles or calls `reset()` and pushes a
fresh history (the feature set's warm-up length) before predictions resume.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pipelines.contracts.errors import KairosError, StreamError
from pipelines.contracts.schema import interval_ms
from serving.config import RoutingConfig
from serving.predlog import SCHEMA_VERSION, PredictionLog, iso_from_epoch
from serving.router import Route, Router
from serving.runtime import LoadedModel


class InputError(KairosError):
    """A request's candles cannot be used (too short, not increasing, wrong symbol/interval)."""


@dataclass(frozen=True)
class Prediction:
    """One arm's answer at candle `open_time`: per-horizon value of the task's output (and confidence)."""

    request_id: str
    symbol: str
    interval: str
    open_time: int  # epoch ms of the last candle used
    model: str
    version: str
    arm: str  # "champion" | "challenger"
    horizons: tuple[int, ...]
    values: tuple[float, ...]  # the task's output per horizon (returns: ln(close[t+h]/close[t]))
    confidence: tuple[float, ...] | None  # from the model's "confidence" output, if it has one
    latency_us: float  # features + model, microseconds
    signed: bool = True  # the sign of a value is a direction call (returns-like tasks)
    output: str = "returns"  # the ONNX output the values come from (the task's; "returns" = log returns)

    @property
    def log_returns(self) -> tuple[float, ...]:
        """The values of a returns model (the name predating tasks)."""
        return self.values

    @property
    def directions(self) -> tuple[int, ...]:
        """Sign of each value: +1, -1, 0 (meaningful only when `signed`)."""
        return tuple((v > 0) - (v < 0) for v in self.values)


class FeatureState:
    """Streaming features of one feature set for one symbol, plus the last `seq_len` rows (T, F).

    Built empty (`StreamingFeatures(name, interval_ms)`) or, when a model with a new feature set is
    swapped in mid-stream or for a stateless window, warmed on raw candle records by the batch kernel
    (`arrays_from_records`: numpy arrays, no pandas anywhere in the serving process).
    """

    def __init__(
        self,
        name: str,
        n_features: int,
        seq_len: int,
        interval_ms: int | None,
        history: Sequence[Mapping[str, Any]] = (),
        params: Mapping[str, Any] | None = None,
    ):
        from pipelines import features

        self.name = name
        if history:
            arrays = features.arrays_from_records(history, name)
            self._sf = features.StreamingFeatures.from_history(arrays, name, interval_ms, params)
        else:
            self._sf = features.StreamingFeatures(name, interval_ms, params)
        self.seq_len = seq_len
        self._rows = np.zeros((seq_len, n_features), dtype=np.float32)  # ring: last seq_len feature rows
        self._n_rows = 0  # feature rows appended since ready

    def update(self, candle: Mapping[str, Any]) -> np.ndarray:
        """Advance one candle; returns the float64 feature row (F,). Raises StreamError, state unchanged."""
        row = self._sf.update(candle)
        if self._sf.ready:
            if self.seq_len > 1:
                self._rows[:-1] = self._rows[1:].copy()
            self._rows[-1] = row
            self._n_rows += 1
        return row

    @property
    def ready(self) -> bool:
        return bool(self._sf.ready) and self._n_rows >= self.seq_len

    @property
    def count(self) -> int:
        return self._sf.count

    def model_input(self, rank: int) -> np.ndarray:
        """float32 (1, F) for tabular models or (1, T, F) for sequence models."""
        return self._rows[-1:] if rank == 2 else self._rows[None]


_IDS = itertools.count()
_ID_PREFIX = (
    f"{os.getpid():x}-{uuid.uuid4().hex[:8]}-"  # unique per process start; uuid4 per call costs ~3 µs
)


def new_request_id() -> str:
    """Unique id of one request: process prefix + counter (cheap on the hot path)."""
    return f"{_ID_PREFIX}{next(_IDS)}"


class Predictor:
    """Champion/challenger predictor for one registered model.

    Args:
        champion: the loaded champion (its manifest fixes symbol, interval and feature set).
        challenger: optional second arm.
        routing: split/shadow config.
        log: prediction log (records of every arm that scored); None = no log.
        history: raw candles kept, to build a feature state when a new feature set is swapped in.
        observer: called with (prediction, served) for every arm that scored (metrics).
    """

    def __init__(
        self,
        champion: LoadedModel,
        challenger: LoadedModel | None = None,
        routing: RoutingConfig = RoutingConfig(),
        log: PredictionLog | None = None,
        history: int = 2000,
        observer: Callable[[Prediction, bool], None] | None = None,
    ):
        m = champion.manifest
        self.name, self.symbol, self.interval = m.model_name, m.symbol, m.interval
        self.interval_ms = interval_ms(m.interval)
        self.routing = routing
        self.router = Router(routing)
        self.log = log
        self.observer = observer
        self._lock = threading.Lock()  # serialises stream updates of this symbol
        self._history: deque[Mapping[str, Any]] = deque(maxlen=history)
        self._states: dict[str, FeatureState] = {}
        self._arms: dict[str, LoadedModel] = {}
        self.set_model("champion", champion)
        if challenger is not None:
            self.set_model("challenger", challenger)

    # ---- models ---------------------------------------------------------------------------------
    @property
    def arms(self) -> dict[str, LoadedModel]:
        """Snapshot of the loaded arms (do not mutate)."""
        return self._arms

    def set_model(self, arm: str, model: LoadedModel | None) -> None:
        """Swap `arm` to `model` (None removes a challenger) atomically; builds its feature state first."""
        if arm not in ("champion", "challenger"):
            raise ValueError(f"arm must be 'champion' or 'challenger', got {arm!r}")
        if model is None:
            if arm == "champion":
                raise ValueError("the champion cannot be removed")
            arms = {k: v for k, v in self._arms.items() if k != arm}
        else:
            m = model.manifest
            if (m.symbol, m.interval) != (self.symbol, self.interval):
                raise InputError(
                    f"{m.model_name} v{model.version} is for {m.symbol} {m.interval}, this predictor serves "
                    f"{self.symbol} {self.interval}"
                )
            with self._lock:
                self._ensure_state(model)
            arms = {**self._arms, arm: model}
        self._arms = arms  # the atomic swap

    def _ensure_state(self, model: LoadedModel) -> FeatureState:
        fs = model.manifest.feature_set
        seq = model.manifest.sequence_length or 1
        st = self._states.get(model.state_key)
        if st is None or st.seq_len < seq:
            st = FeatureState(
                fs.name, len(fs.names), seq, self.interval_ms, list(self._history), fs.params or None
            )
            self._states[model.state_key] = st
        return st

    def reset(self) -> None:
        """Forget the stream (after a gap the client cannot fill); predictions resume after warm-up."""
        with self._lock:
            self._history.clear()
            self._states = {}
            for model in self._arms.values():
                self._ensure_state(model)

    @property
    def warmup_remaining(self) -> int:
        champ = self._arms["champion"]
        st = self._states[champ.state_key]
        need = champ.manifest.feature_set.warmup + (champ.manifest.sequence_length or 1) - 1
        return 0 if st.ready else max(1, need - st.count)

    # ---- predictions ----------------------------------------------------------------------------
    def update(
        self, candle: Mapping[str, Any], routing_key: str | None = None, request_id: str | None = None
    ) -> Prediction | None:
        """Feed one closed candle (contract names, open_time epoch ms); the served arm's prediction,
        or None while the features warm up. Raises StreamError on out-of-order/duplicate/gap."""
        t0 = time.perf_counter_ns()
        arms = self._arms
        with self._lock:
            for st in self._states.values():
                st.update(candle)
            self._history.append(candle)
            route = self.router.route(routing_key or self.symbol, "challenger" in arms)
            served = arms[route.served]
            st = self._states[served.state_key]
            if not st.ready and route.served == "challenger":  # challenger still warming: champion answers
                route, served = Route("champion", None), arms["champion"]
                st = self._states[served.state_key]
            if not st.ready:
                return None
            x = st.model_input(len(served.manifest.input.shape))
            t_feat = time.perf_counter_ns()
            pred = self._score(served, route.served, x, candle["open_time"], t0, request_id)
            shadow = None
            if route.shadow is not None:
                other = arms[route.shadow]
                st2 = self._states[other.state_key]
                if st2.ready:  # a challenger with a new feature set may still be warming up
                    x2 = st2.model_input(len(other.manifest.input.shape))
                    t1 = time.perf_counter_ns()
                    shadow = self._score(
                        other, route.shadow, x2, candle["open_time"], t1 - (t_feat - t0), pred.request_id
                    )
        self._log(pred, True, routing_key or self.symbol)
        if shadow is not None:
            self._log(shadow, False, routing_key or self.symbol)
        return pred

    def predict(
        self,
        window: Sequence[Mapping[str, Any]],
        routing_key: str | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """Stateless: features over `window` (consecutive candles, oldest first) → prediction at its
        last candle. Raises InputError if the window is shorter than the warm-up or not consecutive."""
        t0 = time.perf_counter_ns()
        arms = self._arms
        route = self.router.route(routing_key or self.symbol, "challenger" in arms)
        served = arms[route.served]
        need = served.manifest.feature_set.warmup + (served.manifest.sequence_length or 1) - 1
        if len(window) < need:
            raise InputError(
                f"window has {len(window)} candles; {served.name} v{served.version} needs at least {need} "
                f"(feature warm-up {served.manifest.feature_set.warmup})"
            )
        states: dict[str, FeatureState] = {}
        try:
            for arm in (route.served, route.shadow):
                if arm is None:
                    continue
                m, key = arms[arm].manifest, arms[arm].state_key
                if key not in states:
                    seq = m.sequence_length or 1
                    # the batch kernel over all but the last T candles, then T streamed to fill the rows
                    st = FeatureState(
                        m.feature_set.name,
                        len(m.feature_set.names),
                        seq,
                        self.interval_ms,
                        window[:-seq],
                        m.feature_set.params or None,
                    )
                    for c in window[-seq:]:
                        st.update(c)
                    states[key] = st
        except (KeyError, ValueError, KairosError) as e:
            raise InputError(f"window rejected by the feature code: {e}") from None
        last = window[-1]["open_time"]
        st = states[served.state_key]
        if not st.ready:
            raise InputError(f"window of {len(window)} candles is too short for the features to be ready")
        t_feat = time.perf_counter_ns()
        pred = self._score(
            served, route.served, st.model_input(len(served.manifest.input.shape)), last, t0, request_id
        )
        self._log(pred, True, routing_key or self.symbol)
        if route.shadow is not None:
            other = arms[route.shadow]
            x2 = states[other.state_key].model_input(len(other.manifest.input.shape))
            t1 = time.perf_counter_ns()
            shadow = self._score(other, route.shadow, x2, last, t1 - (t_feat - t0), pred.request_id)
            self._log(shadow, False, routing_key or self.symbol)
        return pred

    def _score(
        self, model: LoadedModel, arm: str, x: np.ndarray, open_time: int, t0: int, request_id: str | None
    ) -> Prediction:
        ret, conf = model.run(x)
        r = ret[0].tolist()  # float32 → Python floats (exact, as float64); 5 values: cheaper than numpy here
        if not all(map(math.isfinite, r)):
            raise InputError(
                f"{model.name} v{model.version} gave non-finite predictions for this input; "
                "check the candle values (out-of-range volumes or prices)"
            )
        latency = (time.perf_counter_ns() - t0) / 1e3
        return Prediction(
            request_id or new_request_id(),
            self.symbol,
            self.interval,
            int(open_time),
            model.name,
            model.version,
            arm,
            model.horizons_tuple,
            tuple(r),
            None if conf is None else tuple(conf[0].tolist()),
            latency,
            model.signed,
            model.output_name,
        )

    def _log(self, p: Prediction, served: bool, routing_key: str) -> None:
        if self.observer is not None:
            self.observer(p, served)
        if self.log is not None:  # the dict is built on the writer thread (see predlog)
            self.log.append(partial(_record, p, served, self.routing.mode, routing_key, time.time()))


def _record(p: Prediction, served: bool, mode: str, routing_key: str, at: float) -> dict[str, Any]:
    """The prediction-log record (schema in serving/predlog.py) of one arm's answer made at `at` (epoch s)."""
    return {
        "v": SCHEMA_VERSION,
        "request_id": p.request_id,
        "time": iso_from_epoch(at),
        "symbol": p.symbol,
        "interval": p.interval,
        "open_time": p.open_time,
        "arm": p.arm,
        "served": served,
        "mode": mode,
        "routing_key": routing_key,
        "model": p.model,
        "version": p.version,
        "horizons": list(p.horizons),
        "predictions": list(p.values),
        "confidence": None if p.confidence is None else list(p.confidence),
        "latency_us": p.latency_us,
    }


__all__ = ["FeatureState", "InputError", "Prediction", "Predictor", "StreamError"]
