"""Retention of training runs (registry.retention) against a real MLflow on SQLite, and `kairos data prune`.

Runs are created with back-dated start times; each versioned run stores a real bundle
(tests/fixtures/bundles.linear_bundle) as `bundle/`, as `registry.runs.log_training` does.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from registry.client import ensure_experiment
from registry.promotion import current_aliases, set_alias
from registry.retention import prune_training_runs
from tests.fixtures.bundles import linear_bundle
from tests.fixtures.flow_helpers import write_small_configs

NAME = "returns-FILUSDT-1m"
DAY_MS = 86_400_000


def _setup(client, tmp_path) -> dict[str, str]:
    """Versions 1..5 from runs 40, 35, 32, 31, 1 days old (champion v2, challenger v5), and two runs
    without a version (killed mid-export: RUNNING), 60 and 1 days old. Returns label -> run id."""
    now = int(time.time() * 1000)
    exp = ensure_experiment(client, "kairos-training")
    client.create_registered_model(NAME)
    runs = {}
    for v, age in enumerate([40, 35, 32, 31, 1], start=1):
        run = client.create_run(exp, start_time=now - age * DAY_MS, tags={"kairos.kind": "training"})
        client.log_artifacts(run.info.run_id, str(linear_bundle(tmp_path / f"b{v}", bias=v)), "bundle")
        client.set_terminated(run.info.run_id, "FINISHED")
        client.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
        runs[f"v{v}"] = run.info.run_id
    set_alias(client, NAME, "champion", "2", reason="test", actor="test")
    set_alias(client, NAME, "challenger", "5", reason="test", actor="test")
    for age in (60, 1):
        runs[f"orphan{age}"] = client.create_run(exp, start_time=now - age * DAY_MS).info.run_id
    return runs


def test_old_runs_go_aliased_and_newest_versions_stay(client, tmp_path):
    runs = _setup(client, tmp_path)
    history_runs = len(
        client.search_runs([client.get_experiment_by_name("kairos-alias-history").experiment_id])
    )
    listed = prune_training_runs(client, max_age_days=30, keep_last=2, dry_run=True)
    assert [r.run_id for r in listed] == [runs["orphan60"], runs["v1"], runs["v3"]]  # oldest first
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 5  # a dry run deletes nothing

    pruned = prune_training_runs(client, max_age_days=30, keep_last=2)
    assert [(r.model, r.version) for r in pruned] == [(None, None), (NAME, "1"), (NAME, "3")]
    assert "no version" in pruned[0].describe() and "RUNNING" in pruned[0].describe()
    assert sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{NAME}'")) == [
        "2",
        "4",
        "5",
    ]
    assert current_aliases(client, NAME) == {"champion": "2", "challenger": "5"}
    exp = client.get_experiment_by_name("kairos-training").experiment_id
    left = {r.info.run_id for r in client.search_runs([exp])}
    assert left == {runs[k] for k in ("v2", "v4", "v5", "orphan1")}
    history = client.search_runs([client.get_experiment_by_name("kairos-alias-history").experiment_id])
    assert len(history) == history_runs  # the audit trail is never pruned
    assert prune_training_runs(client, max_age_days=30, keep_last=2) == []  # idempotent


def test_kairos_data_prune_deletes_by_the_config_and_frees_artifacts(client, tmp_path, monkeypatch):
    from flows.cli import app
    from pipelines.contracts.settings import get_settings

    runs = _setup(client, tmp_path)
    configs = write_small_configs(tmp_path / "configs")
    policy = {"prediction_logs": {"max_age_days": 7}, "training_runs": {"max_age_days": 33, "keep_last": 1}}
    (configs / "retention.yaml").write_text(yaml.safe_dump(policy))
    old_log = tmp_path / "home" / "predictions" / NAME / "2020-01-01.jsonl"
    old_log.parent.mkdir(parents=True)
    old_log.write_text("{}\n")
    artifacts = {k: client.get_run(runs[k]).info.artifact_uri.removeprefix("file://") for k in ("v1", "v2")}
    monkeypatch.setenv("KAIROS_HOME", str(tmp_path / "home"))  # where the `client` fixture keeps MLflow
    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(configs))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    try:
        dry = CliRunner().invoke(app, ["data", "prune", "--dry-run"], env={"COLUMNS": "200"})
        assert dry.exit_code == 0, dry.output
        assert "would delete 1 prediction-log file(s), 2 training run(s)" in dry.output and old_log.exists()
        res = CliRunner().invoke(app, ["data", "prune"], env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    # older than 33 days: the 60-day orphan, v1 and v2; v2 holds `champion`: kept
    assert "deleted 1 prediction-log file(s), 2 training run(s)" in res.output, res.output
    assert f"{NAME} v1" in res.output and "freed" in res.output and not old_log.exists()
    assert sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{NAME}'")) == [
        "2",
        "3",
        "4",
        "5",
    ]
    assert (
        not Path(artifacts["v1"]).exists() and Path(artifacts["v2"]).exists()
    )  # gc freed the pruned run's files
