"""`kairos serve`: run the serving app with uvicorn.

    kairos serve --model returns-FILUSDT-1m [--tracking-uri http://127.0.0.1:5000] [--host] [--port] [--config]
    kairos serve --bundle DIR [--challenger-bundle DIR]          # no registry: serve local bundles

`flows/cli/serve.py` mounts it as `kairos serve`; also runnable as `python -m serving.server ...`.
This module imports neither mlflow, torch nor great_expectations.

API keys: `KAIROS_API_KEYS` / `api.auth` of the config (`serving/auth.py`). SIGTERM or Ctrl-C stops
gracefully: uvicorn closes the listening socket, lets the requests in flight finish (at most
`api.shutdown_timeout_s`), then the lifespan shutdown writes and fsyncs every queued prediction record;
the process then exits with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.contracts.errors import KairosError
from serving.config import ServingConfig, load_serving_config

log = logging.getLogger("kairos.serving")


def build_state(
    cfg: ServingConfig,
    models: list[str],
    bundles: list[Path],
    challenger_bundle: Path | None = None,
    tracking_uri: str | None = None,
):
    """A ServingState with local bundles installed and one watcher per registered model name."""
    from pipelines.contracts.settings import get_settings
    from serving.state import ServingState

    if not models and not bundles:
        raise KairosError("nothing to serve: pass --model NAME (registry) or --bundle DIR (local bundle)")
    settings = get_settings()
    state = ServingState(cfg)
    for b in bundles:
        state.add_bundle(b, "champion")
    if challenger_bundle is not None:
        state.add_bundle(challenger_bundle, "challenger")
    uri = tracking_uri or cfg.watcher.tracking_uri or settings.mlflow_tracking_uri
    if models:  # the registry client (httpx, ~5 MB resident) only when following the registry
        from serving.watcher import Watcher
    for name in models:
        if not uri or not uri.startswith(("http://", "https://")):
            raise KairosError(
                f"--model {name} needs an MLflow tracking server URL (got {uri!r}): pass --tracking-uri "
                "http://HOST:PORT or set MLFLOW_TRACKING_URI; or serve a local bundle with --bundle DIR"
            )
        w = Watcher(state, name, uri, settings.home_abs / "serving_cache", cfg.watcher, cfg.runtime)
        w.poll_once()  # load the champion before the first request when the server is up
        state.watchers.append(w)
    return state


def serve(
    model: Annotated[
        list[str] | None, typer.Option("--model", help="registered model name to follow (repeatable)")
    ] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    config: Annotated[Path | None, typer.Option(help="serving YAML (default configs/serving.yaml)")] = None,
    bundle: Annotated[
        list[Path] | None, typer.Option("--bundle", help="serve a local bundle directory")
    ] = None,
    challenger_bundle: Annotated[Path | None, typer.Option(help="local challenger bundle")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow server URL (default MLFLOW_TRACKING_URI)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn/kairos log level")] = "info",
) -> None:
    """Serve predictions over HTTP/WebSocket, following the registry's champion/challenger aliases."""
    import uvicorn

    from serving.app import create_app
    from serving.auth import load_keyring, redact_secrets_in_logs

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_serving_config(config)
        keys = load_keyring(cfg.api.auth, os.environ)  # before loading models: a bad key fails fast
        state = build_state(cfg, model or [], bundle or [], challenger_bundle, tracking_uri)
    except KairosError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    config_ = uvicorn.Config(
        create_app(state, keys),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=cfg.api.shutdown_timeout_s,
        **uvicorn_impl(),
    )
    redact_secrets_in_logs()  # after uvicorn.Config: it installs its log handlers
    run_until_signal(uvicorn.Server(config_))


def run_until_signal(server: Any) -> None:
    """Run a `uvicorn.Server` until SIGTERM/SIGINT, then return (exit status 0) after its graceful shutdown.

    uvicorn handles the signal (stop accepting, finish in-flight requests, lifespan shutdown: the
    prediction log is written and fsynced), then raises it again with the handler that was installed
    before it ran, so that the default action still happens: for SIGTERM that kills the process (status
    -15, or 143 from a shell) after a clean stop, for SIGINT a KeyboardInterrupt. The handler installed
    here turns that second delivery into a plain return; a signal that arrives before uvicorn took over
    still stops the process (status 128 + signal number).
    """

    def after_uvicorn(sig: int, frame: Any) -> None:
        if not server.should_exit:  # uvicorn is not running yet: nothing to drain
            raise SystemExit(128 + sig)

    previous = {sig: signal.signal(sig, after_uvicorn) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:  # start-up failed (port in use, lifespan error): uvicorn logged why
        sys.exit(3)


def uvicorn_impl() -> dict[str, str]:
    """The fastest event loop and HTTP parser installed: uvloop + httptools (C; ~2x less per-request
    overhead than asyncio + h11, the pure-Python parser), else the pure-Python fallbacks."""
    import importlib.util

    have = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    return {
        "loop": "uvloop" if have("uvloop") else "asyncio",
        "http": "httptools" if have("httptools") else "h11",
        "ws": "websockets-sansio",
    }


if __name__ == "__main__":
    typer.run(serve)
