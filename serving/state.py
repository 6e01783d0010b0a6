"""What one serving process holds: per registered model a `ModelSlot` (its Predictor once a champion
is loaded, what the registry says, load errors), the prediction log, the metrics and the alert hub.

Loading happens off the request path (watcher thread or start-up); `ModelSlot.install` swaps a warmed
model in atomically and `ModelSlot.fail` records why a version was refused (shown by /v1/models and
/metrics) while the old version keeps serving.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.alerts import AlertHub
from serving.config import ServingConfig
from serving.metrics import ServingMetrics
from serving.predictor import Predictor
from serving.predlog import PredictionLog
from serving.runtime import LoadedModel, load_model, release_free_heap

log = logging.getLogger("kairos.serving")


@dataclass
class ModelSlot:
    """One registered model name served by this process."""

    name: str
    predictor: Predictor | None = None
    registry: dict[str, str | None] = field(default_factory=dict)  # alias → version the registry names
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # alias → {version, error, at}
    reloads: int = 0


class ServingState:
    """Everything the app and the watcher share. Build with `ServingState(cfg)`, then `add_bundle` or a
    `Watcher`, then `start()`; `close()` flushes the prediction log."""

    def __init__(self, cfg: ServingConfig, predlog_dir: Path | None = None):
        self.cfg = cfg
        self.slots: dict[str, ModelSlot] = {}
        self.metrics = ServingMetrics(cfg.monitoring.latency_budget_us)
        self.metrics.watch_models(lambda: (w for _, _, w in self.watches()))
        self.log: PredictionLog | None = None
        if cfg.prediction_log.enabled:
            d = predlog_dir or cfg.prediction_log.directory
            if d is None:
                from pipelines.contracts.predlog import DEFAULT_SUBDIR
                from pipelines.contracts.settings import get_settings

                d = get_settings().home_abs / DEFAULT_SUBDIR
            p = cfg.prediction_log
            self.log = PredictionLog(d, p.flush_every, p.flush_interval_ms, p.queue_size)
            self.metrics.watch_log(self.log)
        self.alerts = AlertHub(cfg.alerts, self.metrics)
        self._lock = threading.Lock()  # serialises installs (watcher vs start-up)
        self.watchers: list[Any] = []

    def start(self) -> ServingState:
        if self.log is not None and self.log._thread is None:
            self.log.start()
        self.alerts.start()
        for w in self.watchers:
            w.start()
        gc.collect()  # start-up garbage (imports, model loading), then hand the freed pages back
        release_free_heap()
        return self

    def close(self) -> None:
        """Stop the watchers and the alert hub, then write and fsync every queued prediction record (the
        lifespan shutdown: after uvicorn has let the requests in flight finish)."""
        for w in self.watchers:
            w.stop()
        self.alerts.close()
        if self.log is not None:
            self.log.close()
            log.info(
                "prediction log closed: %d records written, %d dropped (queue full), %d write errors",
                self.log.written,
                self.log.dropped,
                self.log.errors,
            )

    # ---- slots ---------------------------------------------------------------------------------
    def slot(self, name: str) -> ModelSlot:
        with self._lock:
            return self.slots.setdefault(name, ModelSlot(name))

    def by_symbol(self, symbol: str) -> Predictor | None:
        """The predictor of the model serving `symbol`, its own or in its universe (first loaded, if
        several)."""
        for s in self.slots.values():
            if s.predictor is not None and s.predictor.serves(symbol):
                return s.predictor
        return None

    def served_symbols(self) -> list[str]:
        return sorted({sym for s in self.slots.values() if s.predictor for sym in s.predictor.symbols})

    @property
    def ready(self) -> bool:
        return bool(self.slots) and all(s.predictor is not None for s in self.slots.values())

    def install(self, name: str, alias: str, model: LoadedModel) -> None:
        """Swap `model` in as `alias` of `name` (it is already loaded and warmed)."""
        slot = self.slot(name)
        if model.name != name:
            raise ValueError(f"bundle says model {model.name!r} but it was registered as {name!r}")
        with self._lock:
            if slot.predictor is None:
                if alias != "champion":
                    raise ValueError("a challenger cannot be served before a champion is loaded")
                slot.predictor = Predictor(
                    model,
                    routing=self.cfg.routing,
                    log=self.log,
                    history=self.cfg.api.history_candles,
                    observer=self.metrics.observe,
                    universes=self.cfg.universes,
                    alert_sink=self.alerts.emit,
                    alert_min_level=self.cfg.alerts.min_level,
                    monitoring=self.cfg.monitoring,
                )
            else:
                slot.predictor.set_model(alias, model)
            slot.errors.pop(alias, None)
            slot.reloads += 1
        self.metrics.loaded(name, alias, model.version, ok=True)
        log.info("serving %s v%s as %s (warm-up %.1f µs/run)", name, model.version, alias, model.warmup_us)

    def remove(self, name: str, alias: str) -> None:
        slot = self.slot(name)
        if alias == "challenger" and slot.predictor is not None and "challenger" in slot.predictor.arms:
            slot.predictor.set_model("challenger", None)
            self.metrics.unloaded(name, alias)
            log.info("challenger alias of %s removed; serving the champion only", name)

    def fail(self, name: str, alias: str, version: str, error: str) -> None:
        self.slot(name).errors[alias] = {"version": version, "error": error, "at": time.time()}
        self.metrics.loaded(name, alias, version, ok=False)
        log.error("not serving %s v%s as %s: %s", name, version, alias, error)

    def add_bundle(self, bundle_dir: Path, alias: str = "champion", version: str = "local") -> LoadedModel:
        """Load a bundle directory (demo, tests) and install it; raises ModelLoadError."""
        model = load_model(bundle_dir, self.cfg.runtime, version=version)
        self.install(model.name, alias, model)
        return model

    def watches(self) -> list[tuple[str, str, Any]]:
        """(model, arm, ModelWatch) of every loaded version (serving/live.py)."""
        return [
            (s.name, arm, w)
            for s in list(self.slots.values())
            if s.predictor is not None
            for arm, w in s.predictor.watches()
        ]

    def health(self) -> dict[str, dict[str, Any]]:
        """/healthz per model: per loaded arm its version, last prediction time (UTC ISO) and drift status."""
        out: dict[str, dict[str, Any]] = {s.name: {} for s in list(self.slots.values())}
        for name, arm, w in self.watches():
            out[name][arm] = w.health()
        return out

    def describe(self) -> list[dict[str, Any]]:
        """/v1/models: per model, the loaded arms, what the registry says, and load errors."""
        out = []
        for s in self.slots.values():
            arms = {}
            if s.predictor is not None:
                for arm, m in s.predictor.arms.items():
                    arms[arm] = {
                        "version": m.version,
                        "source": m.source,
                        "sha256": m.sha256,
                        "task": m.manifest.task,
                        "output": {"name": m.output_name, "meaning": m.manifest.outputs[0].meaning},
                        "extra_outputs": list(m.extra_names)
                        + (["feature_deviation"] if m.has_deviation else []),
                        "raises_alerts": m.raises_alerts,
                        "feature_set": m.manifest.feature_set.name,
                        "horizons": m.horizons,
                        "withheld_horizons": {
                            h: m.manifest.extra.get("below_baselines", {}).get(str(h), "") for h in m.withheld
                        },
                        "model_type": m.manifest.model_type,
                        "providers": m.providers,
                        "loaded_at": m.loaded_at,
                        "warmup_us": round(m.warmup_us, 1),
                    }
            out.append(
                {
                    "name": s.name,
                    "symbol": s.predictor.symbol if s.predictor else None,
                    "universe": s.predictor.universe_name if s.predictor else None,
                    "symbols": list(s.predictor.symbols) if s.predictor else [],
                    "interval": s.predictor.interval if s.predictor else None,
                    "loaded": arms,
                    "registry_aliases": s.registry,
                    "load_errors": s.errors,
                    "routing": self.cfg.routing.model_dump(),
                    "ready": s.predictor is not None,
                }
            )
        return out
