"""Crash safety across the daily loop (S9): the retrain killed with SIGKILL at each of its five fault points
(`pipelines.contracts.faults.POINTS`) leaves store and registry consistent, and the next run completes
without duplicates.

One KAIROS_HOME (DuckDB store, MLflow on SQLite) lives through a chain of runs. A real retrain process is
killed at each of the first four points in turn (each kill leaves its debris for the runs after it) and the
state is checked after every kill; then a rerun (a fresh process, as the next day's schedule would start)
completes and the state is checked again. The fifth point needs a champion to beat, so it comes after that
rerun, with its own rerun: seven retrain processes, forked from one driver process
(tests/fixtures/retrain_forks.py) so that each does not pay the training stack's imports again.

Consistent means:
- store: every ingested candle once, no gaps (a killed ingest leaves whole batches only);
- registry: every aliased version's bundle downloads and passes `read_bundle` (no half version serving);
  a version exists only for a run whose bundle was stored whole; the alias history is one unbroken chain
  per alias (each record starts where the previous ended), and after a rerun it ends at the live aliases
  with every move attributed to Kairos (an interrupted move recorded with its own reason, not as a move
  "outside Kairos");
- rerun: exactly one new version, holding an alias.

The series carries a planted learnable signal (the next return loads on this candle's order flow); the
first champion is deliberately blind to it (technical-analysis features only, no order flow), so the next
model, which sees the flow, beats it clearly and the run killed "during promote" does promote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from tests.fixtures.flow_helpers import write_small_configs
from tests.fixtures.retrain_forks import RetrainDriver

NAME = "returns-SYNTHUSDT-1m"
SIGNAL = {"flow_kappa": 1.0}  # the planted signal: the next return loads on this candle's order flow
SIZES = {
    "walk_forward": {
        "train_size": 1000,
        "test_size": 300,
        "step": 300,
        "purge": 5,
        "max_folds": 2,
        "window": 3000,
    },
    "export": {"parity_rows": 300},
}
POLICY = {"min_samples": 10, "require_beats_baselines": False}


def _configs(dst, training: dict):
    """Small configs; `training` replaces the returns task's training block (its features and LightGBM)."""
    d = write_small_configs(dst, **SIZES)
    path = d / "promotion.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **POLICY}))
    path = d / "tasks" / "returns.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "training": training}))
    return d


@pytest.fixture(scope="module")
def harness():
    from prefect.settings import PREFECT_API_URL

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture()
def driver(harness, tmp_path, template_db):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(template_db, home / "mlflow.db")  # migrated once per module (~5 s saved per fresh database)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(
        KAIROS_HOME=str(home),
        PREFECT_API_URL=harness,
        PREFECT_LOGGING_TO_API_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        OMP_NUM_THREADS="1",
    )
    d = RetrainDriver(env, tmp_path / "driver.log")
    d.home = home
    try:
        yield d
    finally:
        d.close()


def _state(home):
    from pipelines.store import CandleStore
    from registry.client import make_client

    return CandleStore(home / "candles.duckdb"), make_client(
        f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts"
    )


def _versions(client) -> dict[str, object]:
    return {str(mv.version): mv for mv in client.search_model_versions(f"name = '{NAME}'")}


def _check(home, tmp_path, days: int, *, after_rerun: bool) -> dict[str, str]:
    """Assert the consistency rules of the module docstring; returns the live aliases."""
    from pipelines.contracts.bundle import read_bundle
    from registry.bundles import download_bundle
    from registry.history import PENDING_TAG, history
    from registry.promotion import current_aliases, require_complete_bundle

    store, client = _state(home)
    st = store.status()
    assert len(st) == 1 and (st["candles"].iloc[0], st["expected"].iloc[0]) == (days * 1440, days * 1440), st
    assert (st["gaps"].iloc[0], st["missing"].iloc[0]) == (0, 0)
    loaded = store.load("SYNTHUSDT", "1m")
    assert len(loaded) == days * 1440 and not loaded["open_time"].duplicated().any()
    if not _versions(client):
        return {}

    aliases = current_aliases(client, NAME)
    for alias, version in aliases.items():  # every aliased version serves a whole, valid bundle
        dst = Path(tempfile.mkdtemp(dir=tmp_path)) / f"{alias}-{version}"
        read_bundle(download_bundle(client, NAME, version=version, dst=dst))
    for mv in _versions(client).values():  # a version exists only for a bundle stored whole
        require_complete_bundle(client, mv)
        assert client.get_run(mv.run_id).info.status == "FINISHED"

    moves = history(client, NAME)
    for alias in {m.alias for m in moves}:
        chain = [m for m in moves if m.alias == alias]
        assert chain[0].from_version is None and all(m.from_version != m.to_version for m in chain)
        assert all(b.from_version == a.to_version for a, b in zip(chain, chain[1:])), chain
    last = {m.alias: m.to_version for m in moves}
    pending = {k for k in client.get_registered_model(NAME).tags if k.startswith(PENDING_TAG)}
    if after_rerun:
        assert {a: v for a, v in last.items() if v is not None} == aliases and not pending
        assert all(m.actor.startswith("kairos-") for m in moves), [(m.actor, m.reason) for m in moves]
    return aliases


def test_retrain_killed_at_each_step_stays_consistent_and_reruns(driver, tmp_path):
    from pipelines.contracts.faults import POINTS
    from registry.client import RegistryError
    from registry.history import history
    from registry.promotion import set_alias

    lgbm = {"n_estimators": 20, "num_leaves": 7, "min_child_samples": 200, "linear_base": True}
    weak = _configs(tmp_path / "weak", {"features": {"feature_set": "ta"}, "lightgbm": lgbm})  # blind to flow
    strong = _configs(tmp_path / "strong", {"features": {"feature_set": "core18"}, "lightgbm": lgbm})
    home, days = driver.home, 0
    # (fault point, days the killed run ingests, configs of the run and its rerun, rerun after it?)
    plan = [
        ("after-ingest", 2, weak, False),
        ("after-training", 1, weak, False),
        ("during-export", 1, weak, False),
        ("after-register", 1, weak, True),  # its rerun registers the weak first champion
        ("during-promote", 1, strong, True),  # the new model beats it: killed while moving the alias
    ]
    assert [p for p, *_ in plan] == list(POINTS)
    _, client = _state(home)
    for point, ingest_days, configs, rerun_after in plan:
        before = _versions(client) if days else {}
        killed = driver.run(configs, {"days": ingest_days, "params": SIGNAL}, kill_at=point)
        assert killed["signal"] == 9, (point, killed)  # the process died at the point, by SIGKILL
        days += ingest_days  # the ingest committed before any later point
        aliases = _check(home, tmp_path, days, after_rerun=False)
        after = _versions(client)
        new = sorted(set(after) - set(before), key=int)
        if point == "after-register":  # the version exists, whole, but nothing points at it
            assert len(new) == 1 and new[0] not in aliases.values()
        elif point == "during-promote":  # the champion moved to the new version; its record is pending
            assert len(new) == 1 and aliases["champion"] == new[0]
        else:
            assert new == []
        if point == "during-export":  # the half bundle of the killed run cannot be aliased by anyone
            exp = client.get_experiment_by_name("kairos-training").experiment_id
            (run,) = client.search_runs([exp], filter_string="attributes.status = 'RUNNING'")
            files = {f.path for f in client.list_artifacts(run.info.run_id, "bundle")}
            assert files == {"bundle/model.onnx"}, files
            if not client.search_registered_models(f"name = '{NAME}'"):
                client.create_registered_model(NAME)
            mv = client.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
            with pytest.raises(RegistryError, match="lacks manifest.json"):
                set_alias(client, NAME, "challenger", mv.version, reason="by hand", actor="operator")
            client.delete_model_version(NAME, mv.version)
        if not rerun_after:
            continue
        after = _versions(client)
        rerun = driver.run(configs, {"days": 1, "params": SIGNAL})
        assert (rerun["signal"], rerun["exit"]) == (None, 0), (point, rerun)
        days += 1
        aliases = _check(home, tmp_path, days, after_rerun=True)
        newest = rerun["summary"]["version"]
        assert sorted(set(_versions(client)) - set(after), key=int) == [newest]  # one new version per run
        assert newest in aliases.values()

    # The promote step run again on the same aliases (a retry) decides the same and moves nothing. (It
    # failed before: the champion's bundle was downloaded to a fixed folder that the first run had left.)
    moves = len(history(client, NAME))
    again = driver.run(strong, {}, flow="promote")
    assert (again["signal"], again["exit"]) == (None, 0), again
    if rerun["summary"]["promote"]:  # promoted: no challenger left to compare
        assert again["summary"]["promote"] is None, again
    else:
        assert (
            again["summary"]["promote"] is False and again["summary"]["reason"] == rerun["summary"]["reason"]
        )
    assert len(history(client, NAME)) == moves and _check(home, tmp_path, days, after_rerun=True) == aliases
