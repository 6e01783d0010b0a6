"""Process settings from the environment, behind a cached getter.

`KAIROS_HOME` is the state directory (store, quarantine, data docs, MLflow, Optuna). MLflow's own
`MLFLOW_TRACKING_URI` is honoured; by default it is a SQLite file inside `KAIROS_HOME`. `KAIROS_CONFIGS_DIR`
is the directory of YAML configs. `KAIROS_STORE_URL` (postgresql://...) puts the candle store on PostgreSQL
(default: DuckDB file in `KAIROS_HOME`). Variable names are matched case-insensitively.

A pydantic model read from `os.environ` by `Settings.from_env` (what pydantic-settings did for these three
variables): the serving process reads its settings too, and pydantic-settings' import (its sources for
CLI, dotenv, cloud secret stores, ...) costs it ~1.3 MB resident (benchmarks/bench_serving.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# field → environment variable (lower case; matched case-insensitively)
ENV = {
    "home": "kairos_home",
    "mlflow_tracking_uri": "mlflow_tracking_uri",
    "configs_dir": "kairos_configs_dir",
    "store_url": "kairos_store_url",
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    home: Path = Field(default=Path(".kairos"), description="State directory (KAIROS_HOME).")
    # MLFLOW_TRACKING_URI (MLflow's own variable, no KAIROS_ prefix)
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default sqlite:///$KAIROS_HOME/mlflow.db.",
    )
    configs_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "configs",
        description="Directory of YAML configs (KAIROS_CONFIGS_DIR).",
    )
    store_url: str | None = Field(
        default=None,
        description="Candle store (KAIROS_STORE_URL): postgresql://user@host:port/db for many writers; "
        "default the DuckDB file $KAIROS_HOME/candles.duckdb.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings given by `env` (default `os.environ`); unset variables keep the defaults."""
        lower = {k.lower(): v for k, v in (os.environ if env is None else env).items()}
        return cls(**{f: lower[v] for f, v in ENV.items() if v in lower})

    @property
    def home_abs(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def store_path(self) -> Path:
        return self.home_abs / "candles.duckdb"

    @property
    def store_location(self) -> str | Path:
        """What `pipelines.store.open_store` opens: KAIROS_STORE_URL when set, else the DuckDB file."""
        return self.store_url or self.store_path

    @property
    def quarantine_dir(self) -> Path:
        return self.home_abs / "quarantine"

    @property
    def data_docs_dir(self) -> Path:
        return self.home_abs / "data_docs"

    @property
    def artifacts_dir(self) -> Path:
        return self.home_abs / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home_abs / 'mlflow.db'}"

    def ensure_dirs(self) -> None:
        for d in (self.home_abs, self.quarantine_dir, self.data_docs_dir, self.artifacts_dir):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests call `get_settings.cache_clear()` after monkeypatching env."""
    return Settings.from_env()
