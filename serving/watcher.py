"""Hot reload: a daemon thread polls the MLflow server's aliases and swaps new versions in.

Every `poll_interval_s`, for each alias (`champion`, `challenger`) of the watched model:
registry version ≠ loaded version → download the bundle into `<cache>/<name>/<version>/` → load →
warm up → `ServingState.install` (atomic swap). All of it runs on the watcher thread, never on a
request. A version that fails to download, load or warm up is recorded (`/v1/models` load_errors,
`kairos_model_load_failed`) and not retried until the alias moves; the old version keeps serving.
An unreachable server is logged and retried next poll, serving is unaffected. A removed
`challenger` alias unloads the challenger.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path

from pipelines.contracts.errors import KairosError
from serving.config import RuntimeConfig, WatcherConfig
from serving.mlflow_rest import RegistryRest, RegistryUnavailable
from serving.runtime import load_model
from serving.state import ServingState

log = logging.getLogger("kairos.serving")


class Watcher:
    """Follows the aliases of one registered model `name` on `tracking_uri`."""

    def __init__(
        self,
        state: ServingState,
        name: str,
        tracking_uri: str,
        cache_dir: Path,
        cfg: WatcherConfig,
        runtime: RuntimeConfig,
    ):
        self.state, self.name, self.cfg, self.runtime = state, name, cfg, runtime
        self.rest = RegistryRest(tracking_uri, cfg.timeout_s)
        self.cache_dir = Path(cache_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[str, str] = {}  # alias → version that failed (not retried until the alias moves)
        self.polls = 0
        state.slot(name)  # /readyz is false until a champion arrives

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"kairos-watch-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.cfg.timeout_s + 1)
        self._thread = None
        self.rest.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.cfg.poll_interval_s)

    def poll_once(self) -> None:
        """One pass over the aliases; never raises (errors are logged and recorded)."""
        self.polls += 1
        slot = self.state.slot(self.name)
        # champion first: a challenger cannot be installed before one
        for alias in sorted(self.cfg.aliases, key=lambda a: a != "champion"):
            try:
                mv = self.rest.alias_version(self.name, alias)
            except RegistryUnavailable as e:
                log.warning("watcher %s: %s", self.name, e)
                return
            version = None if mv is None else str(mv["version"])
            slot.registry[alias] = version
            if version is None:
                self.state.remove(self.name, alias)
                continue
            loaded = slot.predictor.arms.get(alias) if slot.predictor is not None else None
            if loaded is not None and loaded.version == version:
                continue
            if self._failed.get(alias) == version:
                continue
            if alias != "champion" and slot.predictor is None:
                continue  # wait for a champion
            self._load(alias, version)

    def _load(self, alias: str, version: str) -> None:
        dest = self.cache_dir / self.name / version
        try:
            if not (dest / "manifest.json").exists():
                tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self._ensure_cache()))
                try:
                    uri = self.rest.artifact_uri(self.name, version)
                    self.rest.download_bundle(uri, tmp)
                    tmp.rename(dest)  # complete bundles only in the cache
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            else:
                uri = str(dest)
            model = load_model(dest, self.runtime, version=version, source=f"models:/{self.name}/{version}")
            self.state.install(self.name, alias, model)
            self._failed.pop(alias, None)
        except RegistryUnavailable as e:
            log.warning("watcher %s: %s (retrying next poll)", self.name, e)
        except (KairosError, ValueError, OSError) as e:
            self._failed[alias] = version
            shutil.rmtree(dest, ignore_errors=True)
            self.state.fail(self.name, alias, version, str(e))

    def _ensure_cache(self) -> Path:
        d = self.cache_dir / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d
