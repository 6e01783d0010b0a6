"""Building the MLflow client (at the entry point, never at import) and naming registered models.

The embedded default is MLflow on SQLite with local artifacts under `$KAIROS_HOME/mlartifacts`
(docs/architecture.md, "Embedded default, and scale"). MLflow's SQLite store would otherwise put artifacts in
`./mlruns` relative to whatever directory the process started in, so the client remembers
`artifacts_dir` and every Kairos experiment is created with an artifact location under it. For an
http(s) tracking server the server's `--artifacts-destination` / default root decides.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.contracts.aliases import CHALLENGER, CHAMPION
from pipelines.contracts.errors import KairosError

__all__ = [  # CHAMPION/CHALLENGER: re-exported for the registry modules, defined in the contracts
    "CHALLENGER",
    "CHAMPION",
    "KairosMlflowClient",
    "RegisteredVersion",
    "RegistryError",
    "ensure_experiment",
    "is_not_found",
    "make_client",
    "model_name",
]

_SERVER_SCHEMES = ("http://", "https://", "databricks")
# Loggers that print one INFO line per store on every fresh process ("Creating initial MLflow
# database tables..."); Kairos keeps stdout/stderr for its own messages.
_NOISY_LOGGERS = (
    "mlflow.store.db.utils",
    "alembic.runtime.migration",
    "mlflow.store.model_registry.abstract_store",
)


class RegistryError(KairosError):
    """The MLflow registry refused an operation or lacks what was asked for (version, alias, history)."""


class KairosMlflowClient(MlflowClient):
    """An `MlflowClient` that also knows where local artifacts belong.

    Attributes:
        artifacts_dir: root for experiment artifact locations when the tracking store is a local
            database/file store; None when a tracking server decides.
    """

    def __init__(self, tracking_uri: str, artifacts_dir: Path | None) -> None:
        super().__init__(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.artifacts_dir = artifacts_dir
        self.kairos_tracking_uri = tracking_uri


def _is_server_uri(uri: str) -> bool:
    return uri.startswith(_SERVER_SCHEMES)


def make_client(tracking_uri: str, artifacts_dir: Path) -> MlflowClient:
    """Build the MLflow client for Kairos; call once at the entry point and pass it down.

    Args:
        tracking_uri: e.g. `Settings.tracking_uri` (`sqlite:///$KAIROS_HOME/mlflow.db` by default)
            or `http://mlflow:5000`. Used as the registry URI too.
        artifacts_dir: local artifact root (`Settings.artifacts_dir`); ignored for http(s) URIs.

    Returns:
        A `KairosMlflowClient` (an `MlflowClient`).
    """
    if not tracking_uri:
        raise RegistryError("empty MLflow tracking URI; set MLFLOW_TRACKING_URI or leave it unset for SQLite")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Artifact downloads draw tqdm bars on stderr, and with a tracking server every finished run
    # prints "View run ... at: <url>" on stdout; respect an explicit user setting of either.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    local_root: Path | None = None
    if not _is_server_uri(tracking_uri):
        local_root = Path(artifacts_dir).expanduser().resolve()
        local_root.mkdir(parents=True, exist_ok=True)
        if tracking_uri.startswith("sqlite:///"):
            # SQLite creates the file but not its directory.
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return KairosMlflowClient(tracking_uri, local_root)
    except MlflowException as e:
        raise RegistryError(f"cannot open MLflow tracking store {tracking_uri!r}: {e.message}") from None


def model_name(symbol: str, interval: str, task: str = "returns") -> str:
    """The registered model name for (task, symbol, interval), e.g. `returns-FILUSDT-1m`."""
    name = f"{task}-{symbol}-{interval}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise RegistryError(
            f"model name {name!r} has characters outside [A-Za-z0-9_.-]; check task/symbol/interval"
        )
    return name


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Return the id of experiment `name`, creating it (under `artifacts_dir`) or restoring it if deleted."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    root = getattr(client, "artifacts_dir", None)
    if root is not None:
        location = (Path(root) / re.sub(r"[^A-Za-z0-9._-]", "_", name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as e:
        if e.error_code == "RESOURCE_ALREADY_EXISTS":  # created concurrently by another process
            return client.get_experiment_by_name(name).experiment_id
        raise


def is_not_found(err: MlflowException) -> bool:
    """True when MLflow says the model/version/alias does not exist (codes differ by entity)."""
    codes = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
    return err.error_code in codes and "not found" in str(err)


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by `runs.log_training`."""

    name: str  # registered model, e.g. "returns-FILUSDT-1m"
    version: str  # "1", "2", ...
    run_id: str  # the training run whose `bundle/` artifacts are the version's artifacts
