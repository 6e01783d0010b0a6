"""The scale-out stack end to end: PostgreSQL + S3 endpoint (moto) + MLflow server (PostgreSQL, proxied
S3 artifacts) + Prefect server (PostgreSQL, flow-run retention on) + 2 process workers.

`retrain_universe` fans the daily retraining out to the `daily-retrain` deployment of prefect.yaml for
4 symbols (FILUSDT and NEARUSDT from ../shared/data, two synthetic) and one with bad data. Then a
serving process follows one model's aliases through that MLflow while a second daily run moves one.
Data is tiny (4 days per symbol, small walk-forward) so the module fits CI's budget.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.fixtures.flow_helpers import write_small_configs
from tests.fixtures.serving_process import ServingProcess
from tests.fixtures.stack import (
    create_pool,
    deploy,
    prefect_settings,
    s3_keys,
    scale_out_stack_fixture,  # noqa: F401 - registers `scale_out_stack`
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


DAYS = 4
GOOD = ["FILUSDT", "NEARUSDT", "SYNTHAUSDT", "SYNTHBUSDT"]
BAD = "BADUSDT"
SERVED = "SYNTHAUSDT"


def _kline_days(src: Path, dst: Path, days: int, corrupt_row: int | None = None) -> Path:
    """The first `days` days of a Binance monthly dump as a CSV (header kept); `corrupt_row` gets a
    non-numeric close price, which validation must reject."""
    with zipfile.ZipFile(src) as zf:
        lines = io.TextIOWrapper(zf.open(zf.namelist()[0]), "utf-8").read().splitlines()
    rows = lines[: 1 + days * 1440]
    if corrupt_row is not None:
        fields = rows[corrupt_row].split(",")
        fields[4] = "oops"
        rows[corrupt_row] = ",".join(fields)
    dst.write_text("\n".join(rows) + "\n")
    return dst


@pytest.fixture(scope="module")
def site(scale_out_stack, tmp_path_factory):
    """KAIROS_HOME + small configs shared by the workers and this process; the pool, the deployment
    from prefect.yaml and 2 process workers."""
    from pipelines.contracts.settings import get_settings

    tmp = tmp_path_factory.mktemp("site")
    home, configs = tmp / "home", write_small_configs(tmp / "configs")
    # every worker writes candles to one PostgreSQL store, as workers on several machines would
    env = scale_out_stack.kairos_env(home, configs, store_url=scale_out_stack.new_database("candles"))
    create_pool(scale_out_stack.prefect_api)
    with pytest.MonkeyPatch.context() as mp, prefect_settings(scale_out_stack.prefect_api):
        for key in ("KAIROS_HOME", "KAIROS_CONFIGS_DIR", "KAIROS_STORE_URL", "MLFLOW_TRACKING_URI"):
            mp.setenv(key, env[key])
        get_settings.cache_clear()
        with scale_out_stack.workers(2, {**env, "PREFECT_LOGGING_LEVEL": "INFO"}) as workers:
            t0 = time.perf_counter()
            deploy(env)  # while the workers start
            print(f"\nprefect deploy --name daily-retrain: {time.perf_counter() - t0:.1f} s")
            yield {"home": home, "env": env, "workers": workers, "tmp": tmp}
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # this process's flow logs reach the server before it stops
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def universe(site, shared_data):
    """One fan-out over the 4 good symbols and the bad one."""
    from flows.fanout import retrain_universe

    files = site["tmp"] / "files"
    files.mkdir()
    per_symbol = {
        sym: {
            "source": "binance-files",
            "options": {
                "paths": [str(_kline_days(shared_data / f"{sym}-1m-2023-08.zip", files / f"{sym}.csv", DAYS))]
            },
        }
        for sym in ("FILUSDT", "NEARUSDT")
    }
    per_symbol["SYNTHAUSDT"] = {"options": {"days": DAYS}}  # the default seed, as `kairos retrain` uses
    per_symbol["SYNTHBUSDT"] = {"options": {"days": DAYS, "seed": 12}}
    bad = _kline_days(shared_data / "FILUSDT-1m-2023-08.zip", files / "BAD.csv", DAYS, corrupt_row=100)
    per_symbol[BAD] = {"source": "binance-files", "options": {"paths": [str(bad)]}}
    t0 = time.perf_counter()
    # the bad symbol first: it fails fast and frees its slot early (runs start in the order they were made)
    out = retrain_universe([BAD, *GOOD], source="synthetic", per_symbol=per_symbol, poll_s=1.0)
    print(f"\nfan-out of {len(GOOD) + 1} symbols on 2 workers: {time.perf_counter() - t0:.1f} s")
    for row in out["symbols"]:
        span = f"{row['start_time']} → {row['end_time']}"
        print(f"  {row['symbol']}: {row['state_name']} {span}, v{row['version']}, {row['why'][:120]}")
    return out


def _rows(out) -> dict[str, dict]:
    return {r["symbol"]: r for r in out["symbols"]}


def test_every_good_symbol_registered_and_aliased_per_policy(site, universe):
    from flows.runtime import Runtime
    from registry.promotion import current_aliases
    from registry.runs import version_below_baselines, version_gates

    rt = Runtime.from_env()
    policy = rt.policy("returns")
    rows = _rows(universe)
    assert universe["failed"] == [BAD]
    for sym in GOOD:
        row = rows[sym]
        assert row["state"] == "COMPLETED", row
        assert row["version"] == "1", row
        name = f"returns-{sym}-1m"
        # the policy for a first version: champion only when its gates passed and it beats the best
        # naive rule at the policy horizon; otherwise it waits as challenger
        gates_ok = all(version_gates(rt.mlflow, name, "1").values())
        below = version_below_baselines(rt.mlflow, name, "1") or {}
        champion = gates_ok and not (policy.require_beats_baselines and policy.horizon in below)
        assert current_aliases(rt.mlflow, name) == ({"champion": "1"} if champion else {"challenger": "1"})
        assert row["promoted"] is champion
        assert row["why"], row
    # the candles went to the PostgreSQL store, none to a DuckDB file
    store = rt.store()
    assert type(store).__name__ == "PostgresCandleStore"
    assert store.count("FILUSDT", "1m") == store.count("SYNTHBUSDT", "1m") == DAYS * 1440
    assert not (site["home"] / "candles.duckdb").exists()


def test_bad_symbol_fails_alone(site, universe):
    from flows.runtime import Runtime

    row = _rows(universe)[BAD]
    assert row["state"] == "FAILED" and row["version"] is None, row
    assert "BAD" in row["why"] or "valid" in row["why"].lower(), row["why"]
    quarantined = list((site["home"] / "quarantine").rglob(f"*{BAD}*"))
    assert quarantined, "the bad batch must be quarantined"
    assert Runtime.from_env().mlflow.search_registered_models(f"name = 'returns-{BAD}-1m'") == []


def test_deployment_concurrency_limit_holds(site, universe):
    """At most 2 symbols trained at once (prefect.yaml's concurrency_limit), whatever the workers took."""
    from datetime import datetime

    spans = [
        (datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]))
        for r in universe["symbols"]
        if r["start_time"] and r["end_time"]
    ]
    assert len(spans) == len(GOOD) + 1
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 2, spans
    # a flow run's output lands in the log of the worker that ran it: each symbol ran exactly once
    ran = {
        w.log.stem: [s for s in [*GOOD, BAD] if f"run 'retrain-{s}-1m'" in w.text()] for w in site["workers"]
    }
    print(f"\npeak concurrent runs {peak}; symbols per worker {ran}")
    assert sorted(sum(ran.values(), [])) == sorted([*GOOD, BAD]), ran


def test_artifacts_live_in_s3_behind_the_mlflow_proxy(scale_out_stack, site, universe):
    from flows.runtime import Runtime

    assert not any(k.startswith("AWS_") for k in site["env"]), "clients must not need S3 credentials"
    keys = s3_keys(scale_out_stack, "mlflow/")
    client = Runtime.from_env().mlflow
    for sym in GOOD:
        mv = client.get_model_version(f"returns-{sym}-1m", "1")
        assert mv.source.startswith("mlflow-artifacts:/"), mv.source
        run_prefix = f"mlflow/{mv.source.removeprefix('mlflow-artifacts:/').split('/')[0]}/"
        bundle = {k.rsplit("/", 1)[-1] for k in keys if k.startswith(run_prefix) and mv.run_id in k}
        assert {"model.onnx", "manifest.json"} <= bundle, (sym, bundle)


@pytest.fixture(scope="module")
def served(scale_out_stack, site, universe):
    """A serving process following SYNTHAUSDT's aliases; then, as a person would in the MLflow UI, the
    version is registered again from its run and `champion` moved to it."""
    from mlflow import MlflowClient

    name = f"returns-{SERVED}-1m"
    client = MlflowClient(scale_out_stack.mlflow_url)
    had_champion = "champion" in client.get_registered_model(name).aliases
    if not had_champion:
        client.set_registered_model_alias(name, "champion", "1")  # a person promotes v1 in the MLflow UI
    serving = ServingProcess(
        site["tmp"] / "serving",
        ["--model", name, "--tracking-uri", scale_out_stack.mlflow_url],
        # tiny synthetic training rarely beats the naive rules; serve it anyway, this is about the aliases
        config="watcher:\n  poll_interval_s: 0.5\nruntime:\n  withhold_below_baselines: false\n",
    )
    try:
        serving.wait()
        before = httpx.get(f"{serving.url}/v1/models").json()["models"][0]["loaded"]
        v1 = client.get_model_version(name, "1")
        v2 = client.create_model_version(
            name, v1.source, run_id=v1.run_id, description="registered in the UI"
        )
        client.set_registered_model_alias(name, "champion", v2.version)
        yield {
            "serving": serving,
            "before": before,
            "name": name,
            "version": str(v2.version),
            "had": had_champion,
        }
    finally:
        serving.stop()


def test_serving_follows_an_alias_moved_through_mlflow(served, tmp_path):
    from flows.runtime import Runtime
    from pipelines.contracts.bundle import read_bundle
    from registry.bundles import download_bundle
    from registry.history import sync_external_moves

    assert served["before"]["champion"]["version"] == "1"
    assert served["version"] == "2"
    deadline, loaded = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        loaded = httpx.get(f"{served['serving'].url}/v1/models").json()["models"][0]["loaded"]
        if loaded["champion"]["version"] == "2":
            break
        time.sleep(0.5)
    assert loaded["champion"]["version"] == "2", loaded
    # the registry side works against the same server unchanged: the UI move enters the alias history,
    # and the bundle downloads through the proxy from S3
    client = Runtime.from_env().mlflow
    [move] = [m for m in sync_external_moves(client, served["name"]) if m.alias == "champion"]
    # (from v1 when training made it champion; the earlier UI move to v1 was not seen by Kairos yet)
    assert (move.from_version, move.to_version) == ("1" if served["had"] else None, "2"), move
    assert move.actor == "mlflow-ui"
    _, manifest = read_bundle(download_bundle(client, served["name"], alias="champion", dst=tmp_path / "b"))
    assert manifest.symbol == SERVED


@pytest.fixture(scope="module")
def unknown_deployment(site):
    """A fan-out naming a deployment that does not exist: its flow run fails at once, naming it."""
    from flows.fanout import retrain_universe

    return retrain_universe(["SYNTHAUSDT"], deployment="daily_retrain/nope", return_state=True)


def test_unknown_deployment_is_named(unknown_deployment):
    from pipelines.contracts.errors import KairosError

    assert unknown_deployment.is_failed()
    with pytest.raises(KairosError, match=r"'daily_retrain/nope' not found.*prefect deploy"):
        unknown_deployment.result()


def test_prefect_prunes_flow_runs_past_retention(scale_out_stack, universe, unknown_deployment):
    """PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED=events,flow_runs on PostgreSQL: runs that ended
    before the retention period (aged here in the database) are deleted, newer ones stay."""
    import psycopg
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def existing(ids: list[str]) -> set[str]:
        with prefect_settings(scale_out_stack.prefect_api), get_client(sync_client=True) as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        return {str(r.id) for r in runs}

    old = [r["flow_run"] for r in universe["symbols"]]
    new = [str(unknown_deployment.state_details.flow_run_id)]
    with psycopg.connect(scale_out_stack.prefect_db) as con:
        # the fan-out's parent run too: its per-symbol runs are subflows, pruned on the pass after it
        parents = con.execute(
            "SELECT DISTINCT tr.flow_run_id::text FROM flow_run fr JOIN task_run tr ON fr.parent_task_run_id = tr.id "
            "WHERE fr.id = ANY(%s::uuid[])",
            (old,),
        ).fetchall()
        aged = old + [p for (p,) in parents]
        con.execute(
            "UPDATE flow_run SET end_time = now() - interval '3 hours' WHERE id = ANY(%s::uuid[])", (aged,)
        )
    assert len(aged) == len(old) + 1
    assert existing(old + new) == set(old + new)
    deadline = time.monotonic() + 90
    while existing(old) and time.monotonic() < deadline:
        time.sleep(1)
    assert existing(old) == set(), "runs past the retention period must be deleted"
    assert existing(new) == set(new), "recent runs must stay"
