"""Shared fixtures: real data from ../shared/data, an isolated KAIROS_HOME per test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIL_FILES = sorted(SHARED_DATA.glob("FILUSDT-1m-2023-*.zip"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder {SHARED_DATA} is missing (it sits beside the repository)")
    return SHARED_DATA


@pytest.fixture()
def kairos_home(tmp_path, monkeypatch) -> Path:
    """A fresh KAIROS_HOME (and MLflow on SQLite inside it) for one test."""
    from pipelines.settings import get_settings

    home = tmp_path / "kairos_home"
    monkeypatch.setenv("KAIROS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """An MLflow SQLite database with its schema created once: a fresh one costs ~5 s of migrations."""
    from registry.client import make_client

    d = tmp_path_factory.mktemp("mlflow_template")
    make_client(f"sqlite:///{d / 'mlflow.db'}", d / "mlartifacts").search_experiments()
    return d / "mlflow.db"


@pytest.fixture()
def client(tmp_path, template_db):
    """A real MLflow client on a private copy of the template SQLite database."""
    import shutil

    from registry.client import make_client

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(template_db, home / "mlflow.db")
    return make_client(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")
