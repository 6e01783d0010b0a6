"""Download a registered version's serving bundle (model.onnx + manifest.json) to a directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.contracts.bundle import read_bundle
from registry.client import CHAMPION, RegistryError, is_not_found


def resolve_version(client: MlflowClient, name: str, *, version: str | None = None, alias: str | None = None):
    """The `ModelVersion` named by `version` or `alias` (default: the `champion` alias)."""
    if version is not None and alias is not None:
        raise RegistryError(
            f"give a version or an alias of {name}, not both (got version={version}, alias={alias})"
        )
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, alias or CHAMPION)
    except MlflowException as e:
        if is_not_found(e):
            what = f"version {version}" if version is not None else f"alias {alias or CHAMPION!r}"
            raise RegistryError(f"{name} has no {what}; see `kairos history` for what exists") from None
        raise


def _fetch(client: MlflowClient, mv, into: Path) -> Path:
    """Download the version's source directory into `into`; returns the directory holding the files."""
    source = client.get_model_version_download_uri(mv.name, mv.version)
    if mv.run_id:
        run_root = client.get_run(mv.run_id).info.artifact_uri.rstrip("/")
        if source.startswith(run_root + "/"):
            # Through the run: works the same for local, mlflow-artifacts:/ and object-store roots.
            return Path(client.download_artifacts(mv.run_id, source[len(run_root) + 1 :], str(into)))
    tracking_uri = getattr(client, "kairos_tracking_uri", None) or client._tracking_client.tracking_uri
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(into), tracking_uri=tracking_uri
    )
    return Path(path)


def download_bundle(
    client: MlflowClient, name: str, *, version: str | None = None, alias: str | None = None, dst: Path
) -> Path:
    """Download the bundle of `name` at `version` or `alias` (default `champion`) into `dst`.

    The files are fetched into a temporary sibling, checked with `pipelines.contracts.bundle.read_bundle`
    (exactly model.onnx + manifest.json, valid manifest) and only then renamed to `dst`, so a
    reader never sees a half-written bundle.

    Args:
        dst: target directory; must not exist or be empty.

    Returns:
        `dst`, a directory that `read_bundle` accepts.
    """
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise RegistryError(f"download target {dst} exists and is not an empty directory; pass a fresh path")
    mv = resolve_version(client, name, version=version, alias=alias)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kairos-dl-", dir=dst.parent) as tmp:
        fetched = _fetch(client, mv, Path(tmp))
        read_bundle(fetched)  # raises BundleError naming a missing/extra file or a bad manifest
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.replace(fetched, dst)
    return dst
