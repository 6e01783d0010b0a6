"""Process settings from the environment (pydantic-settings), behind a cached getter.

`KAIROS_HOME` is the state directory (store, quarantine, data docs, MLflow, Optuna). MLflow's own
`MLFLOW_TRACKING_URI` is honoured; by default it is a SQLite file inside `KAIROS_HOME`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIROS_", extra="ignore")

    home: Path = Field(default=Path(".kairos"), description="State directory (KAIROS_HOME).")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow tracking URI; default sqlite:///$KAIROS_HOME/mlflow.db.",
    )
    configs_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "configs",
        description="Directory of YAML configs (KAIROS_CONFIGS_DIR).",
    )

    @property
    def home_abs(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def store_path(self) -> Path:
        return self.home_abs / "candles.duckdb"

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
    return Settings()
