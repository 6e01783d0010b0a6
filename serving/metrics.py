"""Prometheus metrics of one serving process, on its own registry (no global state across apps/tests).

| metric                                   | type      | labels                    |
|------------------------------------------|-----------|---------------------------|
| kairos_prediction_latency_seconds        | histogram | model, version, arm       |
| kairos_predictions_total                 | counter   | model, version, arm, served |
| kairos_request_errors_total              | counter   | endpoint, status          |
| kairos_model_reloads_total               | counter   | model, alias, result (ok/failed) |
| kairos_model_loaded_version              | gauge     | model, alias (value = version number) |
| kairos_model_load_failed                 | gauge     | model, alias (1 = newest registry version refused) |
| kairos_prediction_log_written_total / _dropped_total | gauge | -             |
| kairos_alerts_total                      | counter   | model, level              |
| kairos_alerts_dropped_total              | counter   | sink (websocket/webhook)  |
| kairos_alert_webhook_delivered_total     | counter   | -                         |
| kairos_alert_webhook_failures_total      | counter   | - (alerts undelivered after every retry) |
| kairos_alert_subscribers                 | gauge     | - (open /v1/alerts connections) |
| kairos_requests_rejected_total           | counter   | reason: overload (429), unauthenticated (401), forbidden (403) |
| kairos_requests_in_flight                | gauge     | - (HTTP requests admitted, not yet answered; probes excluded) |
| kairos_latency_budget_violations_total   | counter   | model (served predictions slower than monitoring.latency_budget_us) |
| kairos_drift_*, kairos_live_*, kairos_last_prediction_timestamp_seconds | gauge | model, version, ... (serving/live.py) |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from serving.live import ModelWatch
    from serving.predictor import Prediction
    from serving.predlog import PredictionLog

# seconds: in-process predictions take tens of µs, HTTP requests hundreds
LATENCY_BUCKETS = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0)


class ServingMetrics:
    """`latency_budget_us`: served predictions slower than this count as budget violations (None: none)."""

    def __init__(self, latency_budget_us: float | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.latency_budget_us = float("inf") if latency_budget_us is None else float(latency_budget_us)
        self.budget_violations = Counter(
            "kairos_latency_budget_violations",
            "Served predictions slower than monitoring.latency_budget_us (features + model)",
            ["model"],
            registry=r,
        )
        self.latency = Histogram(
            "kairos_prediction_latency_seconds",
            "Features + model time per prediction",
            ["model", "version", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "kairos_predictions", "Predictions made", ["model", "version", "arm", "served"], registry=r
        )
        self.errors = Counter(
            "kairos_request_errors", "Requests refused or failed", ["endpoint", "status"], registry=r
        )
        self.reloads = Counter(
            "kairos_model_reloads", "Model (re)loads", ["model", "alias", "result"], registry=r
        )
        self.version = Gauge(
            "kairos_model_loaded_version", "Loaded model version", ["model", "alias"], registry=r
        )
        self.failed = Gauge(
            "kairos_model_load_failed",
            "1 when the registry's version could not be loaded",
            ["model", "alias"],
            registry=r,
        )
        self._log_written = Gauge("kairos_prediction_log_written", "Prediction records fsynced", registry=r)
        self._log_dropped = Gauge(
            "kairos_prediction_log_dropped", "Prediction records dropped (queue full)", registry=r
        )
        # (model, version, arm, served) → (latency, counter, budget violations) children
        self._children: dict[tuple, tuple] = {}
        self.alerts = Counter("kairos_alerts", "Alerts raised", ["model", "level"], registry=r)
        self.alerts_dropped = Counter(
            "kairos_alerts_dropped",
            "Alerts dropped: a /v1/alerts client's buffer or the webhook queue was full",
            ["sink"],
            registry=r,
        )
        self.webhook_delivered = Counter(
            "kairos_alert_webhook_delivered", "Alerts the webhook accepted", registry=r
        )
        self.webhook_failures = Counter(
            "kairos_alert_webhook_failures", "Alerts the webhook did not take after every retry", registry=r
        )
        self.alert_subscribers = Gauge(
            "kairos_alert_subscribers", "Open /v1/alerts WebSocket connections", registry=r
        )
        for sink in ("websocket", "webhook"):  # exported at 0 from the start
            self.alerts_dropped.labels(sink)
        self.rejected = Counter(
            "kairos_requests_rejected",
            "Requests refused before any handler: overload (429), unauthenticated (401), forbidden (403)",
            ["reason"],
            registry=r,
        )
        # children resolved once: a refusal must stay cheaper than the work it saves
        self._rejected = {k: self.rejected.labels(k) for k in ("overload", "unauthenticated", "forbidden")}
        self._in_flight = Gauge(
            "kairos_requests_in_flight", "HTTP requests admitted and not yet answered", registry=r
        )

    def watch_log(self, log: PredictionLog) -> None:
        self._log_written.set_function(lambda: log.written)
        self._log_dropped.set_function(lambda: log.dropped)

    def observe(self, p: Prediction, served: bool = True) -> None:
        key = (p.model, p.version, p.arm, served)
        children = self._children.get(key)
        if children is None:  # labels() validates and hashes its arguments: ~5 µs a call, so once per key
            children = self._children[key] = (
                self.latency.labels(p.model, p.version, p.arm),
                self.predictions.labels(p.model, p.version, p.arm, "true" if served else "false"),
                self.budget_violations.labels(p.model),
            )
        children[0].observe(p.latency_us / 1e6)
        children[1].inc()
        if served and p.latency_us > self.latency_budget_us:
            children[2].inc()

    def reject(self, reason: str) -> None:
        self._rejected[reason].inc()

    def watch_in_flight(self, count: Callable[[], float]) -> None:
        self._in_flight.set_function(count)

    def alert(self, model: str, level: int) -> None:
        self.alerts.labels(model, str(level)).inc()

    def watch_models(self, watches: Callable[[], Iterable[ModelWatch]]) -> None:
        """Export the loaded versions' drift, live accuracy and last prediction (read at scrape time)."""
        from serving.live import MonitoringCollector

        self.registry.register(MonitoringCollector(watches))

    def loaded(self, model: str, alias: str, version: str, ok: bool) -> None:
        self.reloads.labels(model, alias, "ok" if ok else "failed").inc()
        if ok:
            self.version.labels(model, alias).set(float(version) if version.isdigit() else 0.0)
            self.budget_violations.labels(model)  # exported at 0 from the load
        self.failed.labels(model, alias).set(0.0 if ok else 1.0)

    def unloaded(self, model: str, alias: str) -> None:
        self.version.labels(model, alias).set(0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
