"""Typed serving config, parsed once from `configs/serving.yaml` at the entry point (`kairos serve`).

Each part is handed only to the component that needs it: `RuntimeConfig` to the onnxruntime session
factory, `RoutingConfig` to the router, `WatcherConfig` to the MLflow watcher, `PredLogConfig` to the
prediction-log writer, `ApiConfig` to the FastAPI app (its `auth` part to `serving.auth`), `AlertsConfig`
to the alert hub, `universes` to the predictors of universe models, `MonitoringConfig` to the predictors
(drift, live accuracy) and the metrics (latency budget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.contracts.aliases import ALIASES
from pipelines.contracts.yamlio import parse_config, read_yaml

Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuntimeConfig(_Frozen):
    """onnxruntime session options; defaults chosen by `benchmarks/bench_serving.py` (single-row latency)."""

    providers: tuple[Provider, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    intra_op_threads: int = Field(1, ge=0)  # 1: a single row has no parallelism worth a thread hand-off
    inter_op_threads: int = Field(1, ge=0)
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    allow_spinning: bool = False  # spinning burns a core between requests on a shared 2-core box
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    optimized_model_cache: bool = False  # write the optimised graph next to the bundle (load time only)
    warmup_runs: int = Field(20, ge=1)  # session runs before a model is swapped in
    # TensorRT (only where the onnxruntime build has it): FP16 kernels allowed, and the built engines and
    # kernel timings cached on disk, so a restart or a second model with the same graph skips the build
    # (minutes for a large graph). A build happens while the model loads and warms up, before the swap.
    tensorrt_fp16: bool = True
    tensorrt_cache_dir: str = "~/.cache/kairos/tensorrt"
    cpu_mem_arena: bool = False  # single-row inputs: the arena only holds memory (~1 MB per session)
    # Serve only the horizons at which the model beat the task's best naive rule in walk-forward
    # (manifest extra.below_baselines, written at training): a horizon that loses to a one-line rule
    # is not served. false = serve every horizon of the bundle.
    withhold_below_baselines: bool = True


class RoutingConfig(_Frozen):
    """Champion/challenger traffic: `split` sends `challenger_percent` of routing keys to the challenger;
    `shadow` scores every request with both and returns the champion's answer."""

    mode: Literal["split", "shadow", "champion_only"] = "split"
    challenger_percent: float = Field(10.0, ge=0, le=100)
    key_header: str = "x-client-id"  # routing key = this header, else the symbol
    salt: str = "kairos"  # change to reshuffle which keys land on which arm


class WatcherConfig(_Frozen):
    tracking_uri: str | None = None  # http(s)://host:port of `mlflow server`; None = MLFLOW_TRACKING_URI
    poll_interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    aliases: tuple[str, ...] = ALIASES


class PredLogConfig(_Frozen):
    enabled: bool = True
    directory: Path | None = None  # None = $KAIROS_HOME/predictions
    flush_every: int = Field(256, ge=1)  # records per fsync: the most a kill -9 can lose
    flush_interval_ms: float = Field(50.0, gt=0)  # ...or this long after the first unflushed record
    queue_size: int = Field(100_000, ge=1)  # when full, records are dropped and counted, never blocking


class AuthConfig(_Frozen):
    """Bearer API keys with scopes (`serving/auth.py`). Auth is on as soon as one key is configured, in
    the environment variable `keys_env` (`name:key:scope,scope` entries, raw keys hashed at start-up)
    or in `keys_file` (YAML of names, sha256 digests and scopes: no raw key on disk); off otherwise."""

    keys_env: str = Field("KAIROS_API_KEYS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    keys_file: Path | None = None  # YAML: keys: [{name, sha256, scopes: [...]}]
    required: bool = False  # true: refuse to start without a key (fail closed instead of serving openly)
    # served without a key even when auth is on (exact paths; the probes and the Prometheus scrape)
    open_paths: tuple[str, ...] = ("/healthz", "/readyz", "/metrics")

    @field_validator("open_paths")
    @classmethod
    def _absolute(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"open_paths must be absolute URL paths such as /healthz, got {bad}")
        return v


class ApiConfig(_Frozen):
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_window: int = Field(5000, ge=1)  # candles per /v1/predict request
    max_batch: int = Field(1000, ge=1)  # candles per /v1/candles request
    ws_queue: int = Field(64, ge=1)  # WebSocket: pending candles per connection before back-pressure
    history_candles: int = Field(2000, ge=1)  # raw candles kept per symbol to build a new feature state
    # HTTP requests admitted at once (queued on the event loop or running); beyond: 429 + Retry-After at
    # once, never a queue. null = no bound. The probes and /metrics are not counted.
    max_in_flight: int | None = Field(64, ge=1)
    retry_after_s: int = Field(1, ge=1)  # Retry-After of an overload 429 (whole seconds, RFC 9110)
    # SIGTERM: stop accepting, wait this long at most for in-flight requests and open connections, then
    # the lifespan shutdown writes and fsyncs the prediction log; exit status 0
    shutdown_timeout_s: float = Field(30.0, gt=0)
    auth: AuthConfig = AuthConfig()


Symbol = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._:/-]+$")]
Level = Annotated[int, Field(ge=1, le=5)]


class UniverseConfig(_Frozen):
    """A universe model (manifest `extra.universe`) serves its training symbols plus these: the model is
    pooled over symbols, so one it never saw is served without retraining (each symbol its own stream)."""

    add_symbols: tuple[Symbol, ...] = ()


class AlertsConfig(_Frozen):
    """Alerts of models with a `threat_level` output (whale): raised from the champion's predictions
    at `threat_level >= min_level`, pushed to `WS /v1/alerts` subscribers and, when `webhook_url` is
    set, POSTed as JSON by a background thread (bounded queue; never on the request path)."""

    min_level: Level = 2  # a champion prediction at this threat level or above raises an alert
    webhook_url: str | None = None  # http(s) URL; None = no webhook
    webhook_min_level: Level | None = None  # only these levels go to the webhook; None = min_level
    timeout_s: float = Field(2.0, gt=0)  # per POST attempt
    retries: int = Field(3, ge=0)  # attempts after the first, on connection errors, timeouts, 429 and 5xx
    backoff_s: float = Field(0.5, ge=0)  # wait before retry i (0-based): backoff_s * 2**i
    queue_size: int = Field(1000, ge=1)  # alerts waiting for the webhook; full → dropped and counted
    ws_queue: int = Field(256, ge=1)  # alerts buffered per /v1/alerts client; full → oldest dropped, counted

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must be an http(s):// URL, got {v!r}")
        return v


class MonitoringConfig(_Frozen):
    """What serving watches of each loaded version (serving/drift.py, serving/live.py; /metrics, /healthz)."""

    # a served prediction slower than this (features + model, µs) counts in
    # kairos_latency_budget_violations_total{model}; sequence models take ~3 ms a candle
    latency_budget_us: float = Field(1000.0, ge=0)
    drift: bool = True  # online drift against the bundle's reference profile (bundles without one: none)
    live_accuracy: bool = True  # rolling 24 h direction accuracy of signed (returns-like) predictions


class ServingConfig(_Frozen):
    runtime: RuntimeConfig = RuntimeConfig()
    routing: RoutingConfig = RoutingConfig()
    watcher: WatcherConfig = WatcherConfig()
    prediction_log: PredLogConfig = PredLogConfig()
    api: ApiConfig = ApiConfig()
    alerts: AlertsConfig = AlertsConfig()
    universes: dict[str, UniverseConfig] = Field(default_factory=dict)  # universe name → additions
    monitoring: MonitoringConfig = MonitoringConfig()

    @model_validator(mode="after")
    def _cpu_last(self) -> ServingConfig:
        if "CPUExecutionProvider" not in self.runtime.providers:
            raise ValueError("runtime.providers must include CPUExecutionProvider as the last fallback")
        return self


def load_serving_config(path: Path | None = None, configs_dir: Path | None = None) -> ServingConfig:
    """Parse `path` (default `<configs_dir>/serving.yaml`); a missing default file means all defaults."""
    if path is None:
        if configs_dir is None:
            from pipelines.contracts.settings import get_settings

            configs_dir = get_settings().configs_dir
        path = configs_dir / "serving.yaml"
        if not path.exists():
            return ServingConfig()
    return parse_config(ServingConfig, read_yaml(path), path)
