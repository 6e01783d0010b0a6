"""In-process prediction API: `Predictor.update(candle)` (streaming) and `Predictor.predict(window)`.

A `Predictor` serves one registered model with a champion and an optional challenger. A model serves
one symbol, or, when its manifest has `extra.universe` (a model pooled over symbols, e.g.
`whale-PUMPS-1m`), every symbol of its universe plus the ones `configs/serving.yaml` adds
(`universes: {NAME: {add_symbols: [...]}}`); each symbol has its own stream (raw history, feature
states, lock). Streaming features come from `pipelines.features.StreamingFeatures` (the one feature
implementation): per symbol one state per feature set, advanced once per candle whatever the arms, so
champion and challenger see identical inputs. Sequence models ([N, T, F] input) read the last T feature
rows from a ring buffer. Models are swapped by replacing one immutable dict (atomic under the GIL), so
a request sees either the old or the new version, never a mix; every symbol's feature states for the
new model are built before the swap.

Alerts: when the champion has a `threat_level` output, a champion prediction at a level >=
`alert_min_level` raises an alert, once per (symbol, candle) and only for a candle newer than the last
one that alerted (a stream replayed after a reset does not page twice). The served prediction carries
`alert` (answer and log record) and `alert_sink` gets the alert event (`alert_event`). In split mode a
candle routed to the challenger is scored by the champion as well, for the alert only (that score is
neither returned nor logged as a prediction): alerts follow the champion whatever the routing.

Batches: `update_many([(symbol, candles), ...])` pushes several symbols' candles at once (POST
/v1/candles/batch) and scores the newest candle of every item together, one model run per arm over the
stacked rows (a universe model's symbols share its models); each item's answer and log records are those
`update` gives.

Monitoring: every prediction an arm makes on a candle (served or shadow; streamed, batched or a
/v1/predict window) goes to its version's `ModelWatch` (serving/live.py), built with the version and
dropped with it: last prediction time, online drift against the bundle's reference profile
(serving/drift.py, ~1-2 µs a candle), live accuracy bookkeeping (one append).

Re-sync: an out-of-order, duplicate or gapped candle raises `pipelines.contracts.errors.StreamError` and leaves
the state unchanged; the client either sends the missing candles or calls `reset()` and pushes a
fresh history (the feature set's warm-up length) before predictions resume.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from pipelines.contracts.errors import KairosError, StreamError
from pipelines.contracts.schema import interval_ms
from serving.config import MonitoringConfig, RoutingConfig, UniverseConfig
from serving.live import ModelWatch
from serving.predlog import SCHEMA_VERSION, PredictionLog, iso_from_epoch
from serving.router import Route, Router
from serving.runtime import LoadedModel


class InputError(KairosError):
    """A request's candles cannot be used (too short, not increasing, wrong symbol/interval)."""


class UnknownSymbol(InputError):
    """The predictor does not serve this symbol (not the model's, nor in its universe)."""


THREAT = "threat_level"  # the output whose level raises alerts
ANOMALY = "anomaly_score"


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
    # the bundle's width-1 outputs beyond the task's (whale: anomaly_score, threat_level); None = no such
    # output; a non-finite value is None
    extras: Mapping[str, float | None] | None = None
    # the largest entries of a "feature_deviation" output: (feature name, deviation), largest first
    top_features: tuple[tuple[str, float], ...] | None = None
    # {"level", "model", "version"} when the champion raised an alert at this candle (see module doc)
    alert: Mapping[str, Any] | None = None

    @property
    def log_returns(self) -> tuple[float, ...]:
        """The values of a returns model (the name predating tasks)."""
        return self.values

    @property
    def directions(self) -> tuple[int, ...]:
        """Sign of each value: +1, -1, 0 (meaningful only when `signed`)."""
        return tuple((v > 0) - (v < 0) for v in self.values)


_PREDICTION_FIELDS = tuple(f.name for f in fields(Prediction))
_PREDICTION_DEFAULTS = {f.name: f.default for f in fields(Prediction) if f.default is not MISSING}


def _new_prediction(*values: Any) -> Prediction:
    """`Prediction(*values)` without the frozen dataclass's `__init__` (one `object.__setattr__` per field:
    ~1.3 µs of a ~30 µs update): the same object (fields, defaults, equality, `replace`)."""
    p = object.__new__(Prediction)
    d = p.__dict__
    d.update(_PREDICTION_DEFAULTS)
    d.update(zip(_PREDICTION_FIELDS, values))
    return p


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
        self.row = self._rows[-1:]  # (1, F) view of the newest row: a tabular model's input
        self._n_rows = 0  # feature rows appended since ready
        self._warmup = self._sf.feature_set.warmup
        self.ready = False  # the features are exact and the last seq_len rows are filled

    def update(self, candle: Mapping[str, Any]) -> np.ndarray:
        """Advance one candle; returns the float64 feature row (F,). Raises StreamError, state unchanged."""
        row = self._sf.update_view(candle)
        self._push(row)
        return row.copy()

    def advance(self, candle: Mapping[str, Any]) -> None:
        """`update` without returning the row (the Predictor's hot path). Raises StreamError."""
        self._push(self._sf.update_view(candle))

    def _push(self, row: np.ndarray) -> None:
        if self._sf.count >= self._warmup:
            if self.seq_len > 1:
                self._rows[:-1] = self._rows[1:].copy()
            self._rows[-1] = row
            self._n_rows += 1
            self.ready = self._n_rows >= self.seq_len

    @property
    def count(self) -> int:
        return self._sf.count

    def model_input(self, rank: int) -> np.ndarray:
        """float32 (1, F) for tabular models or (1, T, F) for sequence models."""
        return self.row if rank == 2 else self._rows[None]


_CHAMPION = Route("champion", None)  # the route when only a champion is loaded
_IDS = itertools.count()
_ID_PREFIX = (
    f"{os.getpid():x}-{uuid.uuid4().hex[:8]}-"  # unique per process start; uuid4 per call costs ~3 µs
)


def new_request_id() -> str:
    """Unique id of one request: process prefix + counter (cheap on the hot path)."""
    return f"{_ID_PREFIX}{next(_IDS)}"


class _Stream:
    """One symbol's stream: raw candles kept (to build a new feature state), feature states, a lock."""

    __slots__ = ("history", "lock", "states", "symbol")

    def __init__(self, symbol: str, history: int):
        self.symbol = symbol
        self.lock = threading.Lock()  # serialises updates of this symbol's stream
        self.history: deque[Mapping[str, Any]] = deque(maxlen=history)
        self.states: dict[str, FeatureState] = {}


class Predictor:
    """Champion/challenger predictor for one registered model (one symbol, or a universe of symbols).

    Args:
        champion: the loaded champion (its manifest fixes symbol or universe, interval and feature set).
        challenger: optional second arm.
        routing: split/shadow config.
        log: prediction log (records of every arm that scored); None = no log.
        history: raw candles kept per symbol, to build a feature state when a new feature set is swapped in.
        observer: called with (prediction, served) for every arm that scored (metrics).
        universes: `configs/serving.yaml` universes (symbols added to a universe model).
        alert_sink: called with each alert event (a dict, see `alert_event`); must not block.
        alert_min_level: the threat level from which a champion prediction raises an alert.
        monitoring: per-version drift and live accuracy (`ModelWatch`, built with each version).
    """

    def __init__(
        self,
        champion: LoadedModel,
        challenger: LoadedModel | None = None,
        routing: RoutingConfig = RoutingConfig(),
        log: PredictionLog | None = None,
        history: int = 2000,
        observer: Callable[[Prediction, bool], None] | None = None,
        universes: Mapping[str, UniverseConfig] | None = None,
        alert_sink: Callable[[dict[str, Any]], None] | None = None,
        alert_min_level: int = 2,
        monitoring: MonitoringConfig | None = None,
    ):
        m = champion.manifest
        self.name, self.symbol, self.interval = m.model_name, m.symbol, m.interval
        self.universe_name = champion.universe_name  # None: a single-symbol model
        self.interval_ms = interval_ms(m.interval)
        self.routing = routing
        self.router = Router(routing)
        self.log = log
        self.observer = observer
        self.alert_sink = alert_sink
        self.alert_min_level = alert_min_level
        self._universes = dict(universes or {})
        self._history_len = history
        self._swap_lock = threading.Lock()  # serialises model swaps (watcher vs start-up)
        self._alert_lock = threading.Lock()  # the once-per-candle check of alerts
        self._last_alert: dict[str, int] = {}  # symbol → open_time of the newest candle that alerted
        self._streams: dict[str, _Stream] = {}
        self._arms: dict[str, LoadedModel] = {}
        self.monitoring = monitoring or MonitoringConfig()
        # id(loaded model) → its watch: a request holding the arms of before a swap still finds its own
        self._watches: dict[int, ModelWatch] = {}
        self.set_model("champion", champion)
        if challenger is not None:
            self.set_model("challenger", challenger)

    # ---- models and symbols ---------------------------------------------------------------------
    @property
    def arms(self) -> dict[str, LoadedModel]:
        """Snapshot of the loaded arms (do not mutate)."""
        return self._arms

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols served: the model's, or its universe's plus the configured additions."""
        return tuple(self._streams)

    def serves(self, symbol: str) -> bool:
        return symbol in self._streams

    def _symbols_of(self, champion: LoadedModel) -> tuple[str, ...]:
        if champion.universe is None:
            return (self.symbol,)
        added = self._universes.get(champion.universe_name or "")
        return tuple(dict.fromkeys(champion.universe + (added.add_symbols if added else ())))

    def set_model(self, arm: str, model: LoadedModel | None) -> None:
        """Swap `arm` to `model` (None removes a challenger) atomically; builds its feature states first
        (every symbol's). A new champion of a universe model also sets the symbols served."""
        if arm not in ("champion", "challenger"):
            raise ValueError(f"arm must be 'champion' or 'challenger', got {arm!r}")
        if model is None:
            if arm == "champion":
                raise ValueError("the champion cannot be removed")
            with self._swap_lock:
                self._arms = {k: v for k, v in self._arms.items() if k != arm}
                self._drop_watches()
            return
        m = model.manifest
        if (m.symbol, m.interval) != (self.symbol, self.interval):
            raise InputError(
                f"{m.model_name} v{model.version} is for {m.symbol} {m.interval}, this predictor serves "
                f"{self.symbol} {self.interval}"
            )
        if (model.universe is None) != (self.universe_name is None):
            what = "a universe model" if model.universe is not None else "a single-symbol model"
            raise InputError(
                f"{m.model_name} v{model.version} is {what}; this predictor serves "
                + (f"universe {self.universe_name}" if self.universe_name else f"symbol {self.symbol}")
            )
        with self._swap_lock:
            old_arms = self._arms
            arms = {**old_arms, arm: model}
            symbols = self._symbols_of(arms["champion"])
            old = self._streams
            streams = {s: old.get(s) or _Stream(s, self._history_len) for s in symbols}
            # states for old and new arms in every stream, old or new: a request that read the arms
            # just before the swap and the streams just after (or the reverse) finds its states
            models = [*old_arms.values(), model]
            for st in {id(x): x for x in [*old.values(), *streams.values()]}.values():
                with st.lock:
                    for mdl in models:
                        self._ensure_state(st, mdl)
            self._streams = streams
            if id(model) not in self._watches:  # a new version starts fresh drift and live buffers
                watch = ModelWatch(
                    model,
                    self._history_of,
                    self.interval_ms,
                    drift=self.monitoring.drift,
                    live_accuracy=self.monitoring.live_accuracy,
                )
                self._watches = {**self._watches, id(model): watch}
            self._arms = arms  # the atomic swap
            self._drop_watches()

    def _drop_watches(self) -> None:
        """Forget the watches of versions no longer loaded (caller holds the swap lock)."""
        live = {id(m) for m in self._arms.values()}
        if set(self._watches) - live:
            self._watches = {k: w for k, w in self._watches.items() if k in live}

    def watches(self) -> list[tuple[str, ModelWatch]]:
        """(arm, watch) of each loaded version, champion first."""
        watches = self._watches
        return [(arm, watches[id(m)]) for arm, m in self._arms.items() if id(m) in watches]

    def _history_of(self, symbol: str) -> list[Mapping[str, Any]]:
        """The stream's consecutive candles, oldest first ([] when the symbol is not served): one copy of
        the deque, atomic under the GIL, so no stream lock is taken (a caller may hold one)."""
        stream = self._streams.get(symbol)
        return [] if stream is None else list(stream.history)

    def _watch(self, model: LoadedModel, x: np.ndarray, p: Prediction) -> None:
        w = self._watches.get(id(model))
        if w is not None:
            w.observe(x, p)

    def _ensure_state(self, stream: _Stream, model: LoadedModel) -> FeatureState:
        fs = model.manifest.feature_set
        seq = model.manifest.sequence_length or 1
        st = stream.states.get(model.state_key)
        if st is None or st.seq_len < seq:
            st = FeatureState(
                fs.name, len(fs.names), seq, self.interval_ms, list(stream.history), fs.params or None
            )
            stream.states[model.state_key] = st
        return st

    def _stream(self, symbol: str | None) -> _Stream:
        streams = self._streams
        st = streams.get(symbol) if symbol is not None else None
        if st is None:
            if self.universe_name is None:  # a single-symbol model: the candle's symbol is not checked
                return streams[self.symbol]
            raise UnknownSymbol(
                f"unknown symbol {symbol!r}: {self.name} serves universe {self.universe_name} "
                f"({len(streams)} symbols; add one with universes.{self.universe_name}.add_symbols in "
                "configs/serving.yaml)"
            )
        return st

    def reset(self, symbol: str | None = None) -> None:
        """Forget the stream of `symbol` (None: every symbol) after a gap the client cannot fill;
        predictions resume after warm-up."""
        streams = list(self._streams.values()) if symbol is None else [self._stream(symbol)]
        for st in streams:
            with st.lock:
                st.history.clear()
                st.states = {}
                for model in self._arms.values():
                    self._ensure_state(st, model)

    def warmup_left(self, symbol: str | None = None) -> int:
        """Candles `symbol`'s stream (None: the slowest stream) needs before the champion predicts."""
        champ = self._arms["champion"]
        need = champ.manifest.feature_set.warmup + (champ.manifest.sequence_length or 1) - 1
        streams = list(self._streams.values()) if symbol is None else [self._stream(symbol)]
        left = 0
        for stream in streams:
            st = stream.states[champ.state_key]
            left = max(left, 0 if st.ready else max(1, need - st.count))
        return left

    @property
    def warmup_remaining(self) -> int:
        return self.warmup_left(None)

    # ---- predictions ----------------------------------------------------------------------------
    def update(
        self, candle: Mapping[str, Any], routing_key: str | None = None, request_id: str | None = None
    ) -> Prediction | None:
        """Feed one closed candle (contract names, open_time epoch ms; `symbol` picks the stream of a
        universe model); the served arm's prediction, or None while the features warm up.
        Raises StreamError on out-of-order/duplicate/gap, UnknownSymbol for a symbol not served."""
        t0 = time.perf_counter_ns()
        arms = self._arms
        stream = self._stream(candle.get("symbol"))
        symbol = stream.symbol
        key = routing_key or symbol
        alert = None
        with stream.lock:
            states = stream.states
            for st in states.values():
                st.advance(candle)
            stream.history.append(candle)
            route = self.router.route(key, True) if len(arms) > 1 else _CHAMPION
            served = arms[route.served]
            st = states[served.state_key]
            if not st.ready and route.served == "challenger":  # challenger still warming: champion answers
                route, served = Route("champion", None), arms["champion"]
                st = states[served.state_key]
            if not st.ready:
                return None
            x = st.row if served.rank == 2 else st.model_input(served.rank)
            t_feat = time.perf_counter_ns()
            pred = self._score(served, route.served, x, candle["open_time"], t0, request_id, symbol)
            self._watch(served, x, pred)  # under the lock: x is a view of the stream's feature row
            shadow = None
            if route.shadow is not None:
                other = arms[route.shadow]
                st2 = states[other.state_key]
                if st2.ready:  # a challenger with a new feature set may still be warming up
                    x2 = st2.model_input(other.rank)
                    t1 = time.perf_counter_ns()
                    shadow = self._score(
                        other,
                        route.shadow,
                        x2,
                        candle["open_time"],
                        t1 - (t_feat - t0),
                        pred.request_id,
                        symbol,
                    )
                    self._watch(other, x2, shadow)
            champ = arms["champion"]
            if champ.raises_alerts:
                source = pred
                if route.served != "champion":  # split: score the champion too, for the alert only
                    st3 = states[champ.state_key]
                    source = None
                    if st3.ready:
                        x3 = st3.model_input(champ.rank)
                        source = self._alert_score(
                            champ, x3, candle["open_time"], t0, pred.request_id, symbol
                        )
                if source is not None:
                    alert = self._alert(source)
                    if alert is not None:
                        pred = replace(pred, alert=alert[0])
        self._log(pred, True, key)
        if shadow is not None:
            self._log(shadow, False, key)
        if alert is not None:
            self._emit(alert[1])
        return pred

    def update_many(
        self,
        items: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
        routing_key: str | None = None,
        request_id: str | None = None,
    ) -> list[tuple[Prediction | None, int, KairosError | None]]:
        """Closed candles of several symbols at once (`items`: (symbol, candles oldest first)); per item,
        in order, (the prediction at its newest candle or None while warming up, candles accepted, the
        error that stopped it or None). One item's error (StreamError, UnknownSymbol, InputError) is its
        answer only; the others go on.

        Automatic batching: every candle but an item's newest goes through `update` (each is scored and
        logged, as when pushed one by one); the newest candles of all items are advanced first and then
        scored together, one model run per arm over the stacked rows (a universe model's symbols share
        its models; the rows are copied under each stream's lock, so a concurrent update cannot change
        them). Routing, shadow scoring, alerts and the log are those of `update`; `routing_key` (None:
        each item's symbol) routes every item, `request_id` gets `:<item index>` appended."""
        answers: list[tuple[Prediction | None, int, KairosError | None]] = [(None, 0, None)] * len(items)
        arms = self._arms
        has_challenger = len(arms) > 1
        champ = arms["champion"]
        jobs: list[tuple[int, str, str, int, str, str | None]] = []  # (i, served arm, key, t0, symbol, rid)
        rows: dict[str, list[np.ndarray]] = {}  # arm → model inputs (1, ...) to stack
        # (item, purpose) → (arm, row index in rows[arm]); purpose: served | shadow | alert (split: the
        # champion scores a candle the challenger answered, for the alert only)
        at: dict[tuple[int, str], tuple[str, int]] = {}
        for i, (symbol, candles) in enumerate(items):
            rid = None if request_id is None else f"{request_id}:{i}"
            key = routing_key or symbol
            accepted = 0
            try:
                stream = self._stream(symbol)
                for c in candles[:-1]:
                    self.update(c, key, rid)
                    accepted += 1
                if not candles:
                    continue
                t0 = time.perf_counter_ns()
                candle = candles[-1]
                with stream.lock:
                    states = stream.states
                    for st in states.values():
                        st.advance(candle)
                    stream.history.append(candle)
                    accepted += 1
                    route = self.router.route(key, True) if has_challenger else _CHAMPION
                    st = states[arms[route.served].state_key]
                    if not st.ready and route.served == "challenger":  # challenger warming: champion answers
                        route = _CHAMPION
                        st = states[champ.state_key]
                    if not st.ready:
                        answers[i] = (None, accepted, None)
                        continue
                    wanted = [("served", route.served, st)]
                    if route.shadow is not None:
                        st2 = states[arms[route.shadow].state_key]
                        if st2.ready:
                            wanted.append(("shadow", route.shadow, st2))
                    if champ.raises_alerts and route.served != "champion":
                        st3 = states[champ.state_key]
                        if st3.ready:
                            wanted.append(("alert", "champion", st3))
                    for purpose, arm, state in wanted:
                        stack = rows.setdefault(arm, [])
                        at[(i, purpose)] = (arm, len(stack))
                        stack.append(state.model_input(arms[arm].rank).copy())
                jobs.append((i, route.served, key, t0, stream.symbol, rid))
                answers[i] = (None, accepted, None)
            except (StreamError, InputError) as e:  # UnknownSymbol is an InputError
                answers[i] = (None, accepted, e)
        outputs = {}  # arm → (task output (N, H), confidence or None, [other outputs (N, k)])
        for arm, stack in rows.items():
            x = np.concatenate(stack, axis=0)
            outputs[arm] = arms[arm].run_all(x)

        def row(
            i: int, purpose: str, t0: int, rid: str | None, symbol: str, open_time: int
        ) -> Prediction | None:
            if (i, purpose) not in at:
                return None
            arm, j = at[(i, purpose)]
            ret, conf, rest = outputs[arm]
            return self._prediction(
                arms[arm],
                arm,
                ret[j].tolist(),
                None if conf is None else conf[j].tolist(),
                [o[j : j + 1] for o in rest],
                open_time,
                t0,
                rid,
                symbol,
            )

        for i, served_arm, key, t0, symbol, rid in jobs:
            open_time = items[i][1][-1]["open_time"]
            accepted = answers[i][1]
            try:
                pred = row(i, "served", t0, rid, symbol, open_time)
                assert pred is not None
                # a shadow failure fails the item, as in update
                shadow = row(i, "shadow", t0, pred.request_id, symbol, open_time)
            except InputError as e:
                answers[i] = (None, accepted, e)
                continue
            for purpose, p_ in (("served", pred), ("shadow", shadow)):
                if p_ is not None:
                    arm, j = at[(i, purpose)]
                    self._watch(arms[arm], rows[arm][j], p_)  # the row copied under the stream's lock
            alert = None
            if champ.raises_alerts:
                source: Prediction | None = pred
                if served_arm != "champion":
                    try:
                        source = row(i, "alert", t0, pred.request_id, symbol, open_time)
                    except InputError:
                        source = None
                if source is not None:
                    alert = self._alert(source)
                    if alert is not None:
                        pred = replace(pred, alert=alert[0])
            self._log(pred, True, key)
            if shadow is not None:
                self._log(shadow, False, key)
            if alert is not None:
                self._emit(alert[1])
            answers[i] = (pred, accepted, None)
        return answers

    def predict(
        self,
        window: Sequence[Mapping[str, Any]],
        routing_key: str | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """Stateless: features over `window` (consecutive candles of one symbol, oldest first) →
        prediction at its last candle. Raises InputError if the window is shorter than the warm-up or not
        consecutive, UnknownSymbol for a symbol not served."""
        t0 = time.perf_counter_ns()
        arms = self._arms
        symbol = self._stream(window[-1].get("symbol") if window else None).symbol
        key = routing_key or symbol
        route = self.router.route(key, "challenger" in arms)
        served = arms[route.served]
        champ = arms["champion"]
        alert_arm = "champion" if champ.raises_alerts else None
        need = served.manifest.feature_set.warmup + (served.manifest.sequence_length or 1) - 1
        if len(window) < need:
            raise InputError(
                f"window has {len(window)} candles; {served.name} v{served.version} needs at least {need} "
                f"(feature warm-up {served.manifest.feature_set.warmup})"
            )
        states: dict[str, FeatureState] = {}
        try:
            for arm in dict.fromkeys((route.served, route.shadow, alert_arm)):
                if arm is None:
                    continue
                m, key_ = arms[arm].manifest, arms[arm].state_key
                if key_ not in states:
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
                    states[key_] = st
        except (KeyError, ValueError, KairosError) as e:
            raise InputError(f"window rejected by the feature code: {e}") from None
        last = window[-1]["open_time"]
        st = states[served.state_key]
        if not st.ready:
            raise InputError(f"window of {len(window)} candles is too short for the features to be ready")
        t_feat = time.perf_counter_ns()
        pred = self._score(
            served,
            route.served,
            st.model_input(served.rank),
            last,
            t0,
            request_id,
            symbol,
        )
        alert = None
        if alert_arm is not None:
            source: Prediction | None = pred
            if route.served != "champion":  # split: the champion scores the window for the alert only
                st3 = states[champ.state_key]
                source = None
                if st3.ready:
                    x3 = st3.model_input(champ.rank)
                    source = self._alert_score(champ, x3, last, t0, pred.request_id, symbol)
            if source is not None:
                alert = self._alert(source)
                if alert is not None:
                    pred = replace(pred, alert=alert[0])
        self._watch(served, st.model_input(served.rank), pred)  # a candle counted once per version
        self._log(pred, True, key)
        if route.shadow is not None:
            other = arms[route.shadow]
            x2 = states[other.state_key].model_input(other.rank)
            t1 = time.perf_counter_ns()
            shadow = self._score(other, route.shadow, x2, last, t1 - (t_feat - t0), pred.request_id, symbol)
            self._watch(other, x2, shadow)
            self._log(shadow, False, key)
        if alert is not None:
            self._emit(alert[1])
        return pred

    def _score(
        self,
        model: LoadedModel,
        arm: str,
        x: np.ndarray,
        open_time: int,
        t0: int,
        request_id: str | None,
        symbol: str | None = None,
    ) -> Prediction:
        r, conf, rest = model.run_row(x)  # float32 → Python floats (exact, as float64)
        return self._prediction(model, arm, r, conf, rest, open_time, t0, request_id, symbol)

    def _prediction(
        self,
        model: LoadedModel,
        arm: str,
        r: list[float],
        conf: list[float] | None,
        rest: Sequence[np.ndarray],
        open_time: int,
        t0: int,
        request_id: str | None,
        symbol: str | None = None,
    ) -> Prediction:
        """The Prediction of one row of `model`'s outputs: `r` (and `conf`) as floats, `rest` the other
        outputs (1, k); raises InputError when the task's output is not finite."""
        if not all(map(math.isfinite, r)):
            raise InputError(
                f"{model.name} v{model.version} gave non-finite predictions for this input; "
                "check the candle values (out-of-range volumes or prices)"
            )
        extras = top = None
        if rest:  # the bundle's other outputs (whale: anomaly_score, threat_level, feature_deviation)
            n = len(model.extra_names)
            if n:
                extras = {}
                for name, out in zip(model.extra_names, rest):
                    v = float(out[0, 0])
                    extras[name] = v if math.isfinite(v) else None
            if model.has_deviation:
                top = model.top_features(rest[n][0])
        latency = (time.perf_counter_ns() - t0) / 1e3
        return _new_prediction(
            request_id or new_request_id(),
            symbol or self.symbol,
            self.interval,
            int(open_time),
            model.name,
            model.version,
            arm,
            model.horizons_tuple,
            tuple(r),
            None if conf is None else tuple(conf),
            latency,
            model.signed,
            model.output_name,
            extras,
            top,
        )

    def _alert_score(
        self, champ: LoadedModel, x: np.ndarray, open_time: int, t0: int, request_id: str, symbol: str
    ) -> Prediction | None:
        """The champion's score of a candle the challenger answered (split), for the alert only: a failure
        here must not fail the request the challenger answered."""
        try:
            return self._score(champ, "champion", x, open_time, t0, request_id, symbol)
        except InputError:
            return None

    def _alert(self, p: Prediction) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the served prediction's `alert`, the alert event) when champion prediction `p` raises one."""
        level = p.extras.get(THREAT) if p.extras else None
        if level is None or level < self.alert_min_level - 0.5:
            return None
        with self._alert_lock:  # once per (symbol, candle), only forward in time
            if p.open_time <= self._last_alert.get(p.symbol, -1):
                return None
            self._last_alert[p.symbol] = p.open_time
        lvl = int(round(level))
        return {"level": lvl, "model": p.model, "version": p.version}, alert_event(p, lvl)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.alert_sink is not None:
            try:
                self.alert_sink(event)
            except Exception:  # a sink must never fail a prediction
                logging.getLogger("kairos.serving").exception("alert sink failed")

    def _log(self, p: Prediction, served: bool, routing_key: str) -> None:
        if self.observer is not None:
            self.observer(p, served)
        if self.log is not None:  # the dict is built on the writer thread (see predlog)
            self.log.append(partial(_record, p, served, self.routing.mode, routing_key, time.time()))


def iso_candle(open_time_ms: int) -> str:
    """Epoch ms → ISO-8601 UTC with a `Z`, e.g. 2023-08-01T00:15:00Z (milliseconds only when not 0)."""
    dt = datetime.fromtimestamp(open_time_ms / 1000, UTC)
    spec = "milliseconds" if open_time_ms % 1000 else "seconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")


def alert_event(p: Prediction, level: int) -> dict[str, Any]:
    """The alert of champion prediction `p` at threat `level`, as sent to subscribers and the webhook."""
    extras = p.extras or {}
    return {
        "symbol": p.symbol,
        "interval": p.interval,
        "open_time": iso_candle(p.open_time),
        "probability": p.values[0],  # the task's output (whale: P(whale event in the next 15 candles))
        "anomaly_score": extras.get(ANOMALY),
        "level": level,
        "model": p.model,
        "version": p.version,
        "request_id": p.request_id,
        "top_features": [{"name": n, "deviation": d} for n, d in p.top_features or ()],
    }


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
        # optional fields (absent for bundles without such outputs; see serving/predlog.py)
        **({"extras": dict(p.extras)} if p.extras is not None else {}),
        **(
            {"top_features": [{"name": n, "deviation": d} for n, d in p.top_features]}
            if p.top_features is not None
            else {}
        ),
        **({"alert": dict(p.alert)} if p.alert is not None else {}),
    }


__all__ = [
    "FeatureState",
    "InputError",
    "Prediction",
    "Predictor",
    "StreamError",
    "UnknownSymbol",
    "alert_event",
    "iso_candle",
]
