"""docs/deploy/compose.yaml is documentation that must not rot: no Docker here, so everything in it that
points at this repository is checked against it (commands and options via their own --help, settings
names, mounted files, database names, the work pool, the Prometheus config with promtool)."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "deploy"
BIN = Path(sys.executable).parent
KAIROS_IMAGE = "kairos:local"
# command paths the compose file may use, and the root options of each program
SUBCOMMANDS = {
    "mlflow": [["server"]],
    "prefect": [["server", "start"], ["worker", "start"], ["work-pool", "create"], ["deploy"]],
    "kairos": [["serve"], ["retrain"]],
}
ROOT_OPTIONS = {"prefect": {"--no-prompt"}}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _kairos_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == KAIROS_IMAGE}


def _argvs(command: list[str]) -> list[list[str]]:
    """A service's command as argv lists (`/bin/sh -c "a && b"` → two)."""
    if command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


def _split(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(program, subcommand path, --options) of one argv, checked against SUBCOMMANDS."""
    program, rest = argv[0], argv[1:]
    root = [a for a in rest if a in ROOT_OPTIONS.get(program, ())]
    rest = [a for a in rest if a not in root]
    paths = [p for p in SUBCOMMANDS.get(program, []) if rest[: len(p)] == p]
    assert paths, f"{argv}: not a known command of this repository's tools"
    path = max(paths, key=len)
    options = [a.split("=", 1)[0] for a in rest[len(path) :] if a.startswith("--")]
    return program, path, root + options


@functools.lru_cache
def _options(program: str, path: tuple[str, ...]) -> str:
    """The options of `program path...`, read from the program itself (click/typer objects for mlflow and
    kairos; Prefect's cyclopts app prints its --help in-process: 4 subprocesses cost ~10 s on 2 cores)."""
    if program in ("mlflow", "kairos"):
        import typer

        if program == "mlflow":
            from mlflow.cli import cli as cmd
        else:
            from flows.cli import app

            cmd = typer.main.get_command(app)
        for part in path:
            cmd = cmd.commands[part]
        return " ".join(o for p in cmd.params for o in [*p.opts, *p.secondary_opts])
    from prefect.cli._app import _app  # the pinned Prefect's cyclopts app (prefect==3.8.8)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        _app([*path, "--help"])
    return buf.getvalue()


def test_every_command_and_option_exists(compose, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapped option names in Prefect's help
    argvs = [argv for s in _kairos_services(compose).values() for argv in _argvs(s["command"])]
    assert len(argvs) >= 6
    for argv in argvs:
        program, path, options = _split(argv)
        assert (BIN / program).exists(), f"{program} is not installed by this repository's environment"
        for opt in options:
            text = _options(program, () if opt in ROOT_OPTIONS.get(program, ()) else tuple(path))
            assert re.search(rf"(^|\s){re.escape(opt)}\b", text), f"{' '.join(argv)}: {opt} is not an option"


def test_environment_names_are_real_settings(compose):
    import mlflow.environment_variables as mlflow_env
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    from pipelines.contracts.settings import ENV

    prefect_names = set(_get_valid_setting_names(Settings))
    kairos_names = {v.upper() for v in ENV.values()} | {"KAIROS_API_KEYS"}
    assert "{{ $KAIROS_REPO }}" in (REPO / "prefect.yaml").read_text()  # what KAIROS_REPO is for
    kairos_names.add("KAIROS_REPO")
    for name, svc in _kairos_services(compose).items():
        for key in svc.get("environment", {}):
            if key.startswith("PREFECT_"):
                assert key in prefect_names, f"{name}: {key} is not a Prefect setting"
            elif key.startswith("MLFLOW_") and key != "MLFLOW_TRACKING_URI":
                assert hasattr(mlflow_env, key), f"{name}: {key} is not an MLflow environment variable"
            elif key.startswith("KAIROS_"):
                assert key in kairos_names, f"{name}: {key} is not read by Kairos"


def test_databases_pools_and_files_line_up(compose):
    import sqlalchemy as sa

    services = compose["services"]
    init_sql = (DEPLOY / "postgres-init.sql").read_text()
    databases = set(re.findall(r"CREATE DATABASE (\w+)", init_sql)) | {
        services["postgres"]["environment"]["POSTGRES_DB"]
    }
    urls = [a for s in services.values() for a in [*s.get("command", []), *s.get("environment", {}).values()]]
    urls = [u for u in map(str, urls) if u.startswith("postgresql")]
    assert len(urls) >= 3
    for url in urls:
        parsed = sa.engine.make_url(url)
        parsed.get_dialect()  # the driver (psycopg, asyncpg, psycopg2) is installed
        assert parsed.database in databases, f"{url}: database {parsed.database} is not created"
    # the pool the workers serve is the pool of every deployment in prefect.yaml
    worker = services["worker"]["command"]
    pool = worker[worker.index("--pool") + 1]
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {pool}
    assert f"work-pool create {pool} " in services["prefect-deploy"]["command"][2]
    # every mounted host path exists
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            host = vol.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / host).exists(), f"{name}: {host} does not exist"
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    # Prometheus scrapes the serving service on the port it listens on
    serve = services["serve"]["command"]
    assert f'"serve:{serve[serve.index("--port") + 1]}"' in (DEPLOY / "prometheus.yml").read_text()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (.ci/run installs it)")
def test_prometheus_config_with_the_shipped_rules_passes_promtool(compose, tmp_path):
    cfg = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "prometheus.yml", cfg)
    for vol in compose["services"]["prometheus"]["volumes"]:
        host, container = vol.split(":")[:2]
        if container.startswith("/etc/prometheus/rules/"):
            (tmp_path / "rules").mkdir(exist_ok=True)
            shutil.copy(DEPLOY / host, tmp_path / "rules" / Path(container).name)
    proc = subprocess.run(
        ["promtool", "check", "config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
