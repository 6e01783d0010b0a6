"""Shared fixtures: real data from ../shared/data, an isolated KAIROS_HOME per test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.postgres"]  # `mlflow_server`, `postgres_server`

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIL_FILES = sorted(SHARED_DATA.glob("FILUSDT-1m-2023-*.zip"))


def fil_core27_windows(path: Path, rows: int, length: int = 60):
    """Real FILUSDT windows for model tests: core27 windows (M, length, 27) and their labels (M, 5)."""
    from pipelines.features import feature_matrix
    from pipelines.sources.binance_files import read_klines
    from pipelines.tasks.returns import make_labels
    from pipelines.training.windows import window_dataset

    candles = read_klines(path, "FILUSDT", "1m").iloc[:rows].reset_index(drop=True)
    X = feature_matrix(candles, "core27")
    Y = make_labels(candles["close"].to_numpy(float), [1, 2, 3, 4, 5])
    W, Yw, _ = window_dataset(X, Y, length)
    return W, Yw


KINDS = ("unit", "flows", "e2e", "realdata")


def pytest_collection_modifyitems(config, items):
    """Mark each test with its kind (its folder): `pytest -m unit`, `-m "not e2e"`, ..."""
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder {SHARED_DATA} is missing (it sits beside the repository)")
    return SHARED_DATA


@pytest.fixture()
def kairos_home(tmp_path, monkeypatch) -> Path:
    """A fresh KAIROS_HOME (and MLflow on SQLite inside it) for one test."""
    from pipelines.contracts.settings import get_settings

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
