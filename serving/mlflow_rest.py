"""A small MLflow tracking-server REST client on the standard library (the serving process never imports mlflow).

`urllib.request` rather than httpx: importing httpx brings httpcore, h11 and, through its command-line
module, rich, click and pygments, and a client loads certifi's CA bundle even for http:// URLs: ~6.7 MB
resident in the serving process for a few GETs every `poll_interval_s` (benchmarks/bench_serving.py).

Resolves `registered model alias → model version → artifact URI` and downloads the two bundle files
through the server's artifact proxy (`mlflow server` serves artifacts by default):

    GET /api/2.0/mlflow/registered-models/alias?name=..&alias=..     → model_version {version, source}
    GET /api/2.0/mlflow/model-versions/get-download-uri?name=..&version=..  → artifact_uri
    runs:/<run_id>/<path>   → GET /api/2.0/mlflow/runs/get → run.info.artifact_uri + path
    models:/m-<id>          → GET /api/2.0/mlflow/logged-models/<id> → model.info.artifact_uri
    mlflow-artifacts:/<p>   → GET /api/2.0/mlflow-artifacts/artifacts?path=<p> (list),
                              GET /api/2.0/mlflow-artifacts/artifacts/<p>/<file> (download)
    file:///<dir> or a path → copied from disk (tracking on a local SQLite file, no server)
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlparse

from pipelines.contracts.bundle import MANIFEST_FILE, MODEL_FILE
from pipelines.contracts.errors import KairosError

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
MAX_FILE_BYTES = 512 * 1024 * 1024


class RegistryUnavailable(KairosError):
    """The MLflow tracking server could not be reached or answered an error; the watcher retries."""


@dataclass
class _Response:
    status_code: int
    content: bytes
    content_type: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class RegistryRest:
    """REST access to one `mlflow server` (http/https tracking URI)."""

    def __init__(self, tracking_uri: str, timeout_s: float = 10.0):
        if not tracking_uri.startswith(("http://", "https://")):
            raise KairosError(
                f"tracking URI {tracking_uri!r} is not an http(s) MLflow server; the serving watcher talks REST: "
                "start `mlflow server` and pass its URL (or serve a bundle directory with --bundle)"
            )
        self.base = tracking_uri.rstrip("/")
        self.timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None  # built on the first https request only

    def close(self) -> None:
        pass  # no pooled connections: one per request (a few GETs every poll interval)

    def _open(self, path: str, params: dict | None = None) -> Any:
        """The response of GET `path` (status >= 400 included: urllib raises those, they are returned);
        RegistryUnavailable when the server cannot be reached."""
        url = f"{self.base}{path}" + (f"?{urlencode(params)}" if params else "")
        if url.startswith("https://") and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            return urllib.request.urlopen(url, timeout=self.timeout_s, context=self._tls)
        except urllib.error.HTTPError as e:
            return e  # a file-like response with .status and .headers
        except (OSError, ValueError) as e:  # URLError, timeouts, refused/reset connections, bad URLs
            raise RegistryUnavailable(
                f"MLflow server {self.base} unreachable ({type(e).__name__}: {e})"
            ) from None

    def _get(self, path: str, params: dict | None = None) -> _Response:
        r = self._open(path, params)
        try:
            with r:
                body = r.read()
        except OSError as e:
            raise RegistryUnavailable(f"GET {path} failed while reading ({type(e).__name__}: {e})") from None
        return _Response(r.status, body, r.headers.get("content-type", ""))

    def _json(self, path: str, params: dict | None = None) -> dict:
        r = self._get(path, params)
        if r.status_code != 200:
            raise RegistryUnavailable(f"GET {path} → HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def alias_version(self, name: str, alias: str) -> dict | None:
        """The model version dict holding `alias`, or None when the alias (or model) does not exist."""
        r = self._get(f"{API}/registered-models/alias", {"name": name, "alias": alias})
        if r.status_code in (400, 404):
            body = r.json() if r.content_type.startswith("application/json") else {}
            if body.get("error_code") in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
                return None
        if r.status_code != 200:
            raise RegistryUnavailable(f"alias lookup {name}@{alias} → HTTP {r.status_code}: {r.text[:200]}")
        return r.json()["model_version"]

    def artifact_uri(self, name: str, version: str) -> str:
        """Where version `version` of `name` keeps its files, resolved to a storage URI."""
        uri = self._json(f"{API}/model-versions/get-download-uri", {"name": name, "version": version})[
            "artifact_uri"
        ]
        if uri.startswith("runs:/"):
            run_id, _, sub = uri[len("runs:/") :].partition("/")
            base = self._json(f"{API}/runs/get", {"run_id": run_id})["run"]["info"]["artifact_uri"]
            uri = f"{base}/{sub}".rstrip("/")
        elif uri.startswith("models:/"):
            model_id = uri[len("models:/") :].strip("/")
            uri = self._json(f"{API}/logged-models/{model_id}")["model"]["info"]["artifact_uri"]
        return uri

    def download_bundle(self, uri: str, dest: Path) -> Path:
        """Copy `model.onnx` + `manifest.json` found at `uri` (or its one sub-folder holding them) to `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            src = Path(unquote(parsed.path))
            if not (src / MANIFEST_FILE).exists():
                subs = [p.parent for p in src.rglob(MANIFEST_FILE)]
                src = subs[0] if len(subs) == 1 else src
            for f in (MODEL_FILE, MANIFEST_FILE):
                if not (src / f).is_file():
                    raise KairosError(
                        f"artifact folder {src} has no {f}; the registered version is not a serving bundle"
                    )
                shutil.copyfile(src / f, dest / f)
            return dest
        if parsed.scheme != "mlflow-artifacts":
            raise KairosError(
                f"artifact URI {uri!r} is not served by the tracking server; run `mlflow server` with artifact "
                "serving (the default) so serving can download bundles over HTTP"
            )
        path = parsed.path.lstrip("/")
        files = self._list(path)
        if MANIFEST_FILE not in files:
            subdirs = [p for p, is_dir in files.items() if is_dir]
            for sub in subdirs:  # e.g. a logged model keeping the bundle one folder down
                inner = self._list(f"{path}/{sub}")
                if MANIFEST_FILE in inner:
                    path, files = f"{path}/{sub}", inner
                    break
        for f in (MODEL_FILE, MANIFEST_FILE):
            if f not in files:
                raise KairosError(
                    f"artifacts at {uri} have no {f}; the registered version is not a serving bundle"
                )
            self._download(f"{path}/{f}", dest / f)
        return dest

    def _list(self, path: str) -> dict[str, bool]:
        body = self._json(ARTIFACTS, {"path": path})
        return {Path(f["path"]).name: bool(f.get("is_dir")) for f in body.get("files", [])}

    def _download(self, path: str, out: Path) -> None:
        r = self._open(f"{ARTIFACTS}/{quote(path)}")  # percent-encoded, as httpx did
        try:
            with r:
                if r.status != 200:
                    raise RegistryUnavailable(f"download {path} → HTTP {r.status}")
                size = 0
                with open(out, "wb") as fh:
                    while chunk := r.read(1 << 20):
                        size += len(chunk)
                        if size > MAX_FILE_BYTES:
                            raise KairosError(
                                f"artifact {path} is larger than {MAX_FILE_BYTES} bytes; refusing it"
                            )
                        fh.write(chunk)
        except OSError as e:  # reset or timed out mid-download
            raise RegistryUnavailable(f"download {path} failed ({type(e).__name__}: {e})") from None
