"""The entry-point context: settings, configs and clients built once per process and passed in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from prefect.cache_policies import NO_CACHE

from pipelines.config import PromotionPolicy, TrainingConfig, load_promotion_policy, load_training_config
from pipelines.contracts.errors import KairosError
from pipelines.contracts.settings import Settings, get_settings


def quiet_third_parties() -> None:
    """Defaults that keep a normal CLI run free of telemetry noise and tracebacks (user env wins)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
    os.environ.setdefault("PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@dataclass
class Runtime:
    settings: Settings

    @classmethod
    def from_env(cls) -> Runtime:
        settings = get_settings()
        settings.ensure_dirs()
        return cls(settings)

    def training_config(self, overrides: dict | None = None, task: str | None = None) -> TrainingConfig:
        return load_training_config(self.settings.configs_dir, overrides, task)

    def task(self, name: str, horizons=None):
        """The task `name` as configured, at `horizons` (default: its training config's)."""
        from pipelines.tasks import load_task

        if horizons is None:
            horizons = self.training_config(task=name).labels.horizons
        return load_task(self.settings.configs_dir, name, tuple(horizons))

    def policy(self, task: str | None = None) -> PromotionPolicy:
        """configs/promotion.yaml with the task's `promotion:` overrides."""
        return load_promotion_policy(self.settings.configs_dir, task)

    @cached_property
    def promotion_policy(self) -> PromotionPolicy:
        return load_promotion_policy(self.settings.configs_dir)

    def store(self):
        """The configured candle store: DuckDB by default, PostgreSQL when KAIROS_STORE_URL is set."""
        from pipelines.store import open_store

        return open_store(self.settings.store_location)

    @cached_property
    def mlflow(self):
        from registry.client import make_client

        return make_client(self.settings.tracking_uri, self.settings.artifacts_dir)


# Progress reporting: the CLI installs a callback (rich progress bars); flows stay parameter-clean
# (Prefect parameters must be JSON), so the callback travels as process state, not as an argument.
_PROGRESS = None


def set_reporter(callback) -> None:
    global _PROGRESS
    _PROGRESS = callback


def reporter():
    return _PROGRESS


# Task options: retries only on I/O tasks, and only for transient errors (`is_transient`).
IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
PURE = dict(cache_policy=NO_CACHE)


def is_transient(exc: BaseException) -> bool:
    """Network blips, timeouts and a busy database file are worth retrying; bad input is not."""
    if isinstance(exc, KairosError):
        return bool(getattr(exc, "transient", False))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names & {"NetworkError", "RequestTimeout", "TransportError", "IOException", "MlflowException"}
    )


def _retry_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(exc)
    return False


IO = dict(**IO_RETRIES, retry_condition_fn=_retry_transient)
