"""Retraining a universe of symbols: one run of the `daily-retrain` deployment per symbol, fanned out to
the work pool's workers, waited for, and summarised from the registry.

Why deployment runs and not a task runner (Dask, Ray) inside one flow run: each symbol then runs in its
own process on whichever worker is free, on one machine or many, with nothing to install beyond the
Prefect worker that already runs the daily job. A symbol's bad data, exception, crash or OOM fails its
own flow run only: the others complete. The deployment's `concurrency_limit` (prefect.yaml) caps how
many symbols train at once across all workers; the server queues the rest (`AwaitingConcurrencySlot`).
Each run is an ordinary `daily_retrain` run: its own logs, retries and state in the Prefect UI.

The summary is read from MLflow, not from the child runs' return values: results stay where they were
made (a worker's local disk), while the registry is shared and is the truth about what was registered
and promoted.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task

from flows.runtime import IO, Runtime
from pipelines.contracts.errors import KairosError

DEPLOYMENT = "daily_retrain/daily-retrain"
PER_SYMBOL_KEYS = {"source", "options"}  # what a symbol may override (e.g. its files)


def _check_universe(symbols: list[str], per_symbol: dict[str, dict]) -> None:
    if not symbols:
        raise KairosError("no symbols given; pass a list such as ['FILUSDT', 'NEARUSDT']")
    dupes = sorted({s for s in symbols if symbols.count(s) > 1})
    if dupes:
        raise KairosError(f"symbols listed twice: {dupes}; each symbol gets one flow run")
    unknown = sorted(set(per_symbol) - set(symbols))
    if unknown:
        raise KairosError(f"per_symbol names symbols not in the universe: {unknown}")
    for sym, over in per_symbol.items():
        bad = sorted(set(over) - PER_SYMBOL_KEYS)
        if bad:
            raise KairosError(
                f"per_symbol[{sym!r}] has unknown keys {bad}; allowed: {sorted(PER_SYMBOL_KEYS)}"
            )


@task(name="latest-versions", **IO)
def latest_versions(names: list[str]) -> dict[str, int]:
    """The newest version number of each registered model (0 when it has none yet)."""
    client = Runtime.from_env().mlflow
    out = {}
    for name in names:
        versions = client.search_model_versions(f"name = '{name}'")
        out[name] = max((int(v.version) for v in versions), default=0)
    return out


def _deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise KairosError(
            f"deployment {name!r} not found on the Prefect server; run `prefect deploy --name daily-retrain` "
            "from the repository and start workers on its pool (docs/scale-out.md)"
        ) from None


def _wait(ids: dict[str, Any], timeout_s: float, poll_s: float) -> dict[str, Any]:
    """Poll the runs until each is final or `timeout_s` passed; returns symbol → FlowRun."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    by_id = {v: k for k, v in ids.items()}
    runs: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(by_id))), limit=len(by_id)
            )
            runs = {by_id[r.id]: r for r in found}
            final = [r for r in runs.values() if r.state is not None and r.state.is_final()]
            if len(final) == len(ids) or time.monotonic() > deadline:
                return runs
            time.sleep(poll_s)


@task(name="summarise-universe", **IO)
def summarise(runs: dict[str, dict], before: dict[str, int], interval: str, task_name: str) -> list[dict]:
    """Per symbol: the run's state, the version it registered, whether that version is champion and why."""
    from registry.client import model_name
    from registry.history import history
    from registry.promotion import current_aliases
    from registry.runs import version_below_baselines, version_gates

    rt = Runtime.from_env()
    client, policy = rt.mlflow, rt.policy(task_name)
    rows = []
    for sym, run in runs.items():
        name = model_name(sym, interval, task_name)
        newest = latest_versions.fn([name])[name]
        row = {"symbol": sym, "model": name, **run, "version": None, "promoted": False, "aliases": {}}
        if newest:
            row["aliases"] = current_aliases(client, name)
        if newest > before.get(name, 0):
            row["version"] = str(newest)
        if run["state"] != "COMPLETED":
            row["why"] = f"flow run {run['state_name']}: {run['message']}"
        elif row["version"] is None:
            row["why"] = "completed without registering a version"
        else:
            v = row["version"]
            tags = client.get_model_version(name, v).tags
            row["promoted"] = row["aliases"].get("champion") == v
            moves = [m for m in history(client, name) if m.to_version == v]
            if "promotion.reason" in tags:
                verb = "promoted" if row["promoted"] else "kept as challenger"
                row["why"] = f"{verb}: {tags['promotion.reason']}"
            elif not row["promoted"]:
                failed = sorted(g for g, ok in version_gates(client, name, v).items() if not ok)
                below = version_below_baselines(client, name, v) or {}
                if failed:
                    row["why"] = f"challenger: gates failed ({', '.join(failed)})"
                elif policy.require_beats_baselines and policy.horizon in below:
                    row["why"] = f"challenger: does not beat the best naive rule ({below[policy.horizon]})"
                else:
                    row["why"] = moves[-1].reason if moves else "no alias move recorded"
            else:
                row["why"] = moves[-1].reason if moves else "champion"
        rows.append(row)
    return rows


@flow(name="retrain-universe")
def retrain_universe(
    symbols: list[str],
    interval: str = "1m",
    source: str = "synthetic",
    options: dict[str, Any] | None = None,
    model_type: str = "lightgbm",
    task: str = "returns",
    per_symbol: dict[str, dict[str, Any]] | None = None,
    deployment: str = DEPLOYMENT,
    timeout_s: float = 6 * 3600,
    poll_s: float = 5.0,
) -> dict[str, Any]:
    """Start one `daily-retrain` run per symbol on the work pool, wait for all, report per symbol.

    Args:
        symbols: the universe, e.g. ["FILUSDT", "NEARUSDT"].
        source, options: as for `daily_retrain`; `per_symbol[sym]` may replace `source` and `options`
            (e.g. each symbol's kline files).
        deployment: "<flow>/<deployment>" to run per symbol.
        timeout_s: stop waiting after this long; runs still going are reported with their state.

    Returns:
        {"symbols": [row per symbol], "failed": [symbols whose run did not complete], "promoted": [...]}.
        A failed symbol does not fail this flow: its own run is Failed, the others are unaffected.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.deployments import run_deployment

    from registry.client import model_name

    per_symbol = per_symbol or {}
    _check_universe(symbols, per_symbol)
    names = [model_name(s, interval, task) for s in symbols]
    before = latest_versions(names)
    with get_client(sync_client=True) as client:
        dep = _deployment(client, deployment)
        pool = dep.work_pool_name
        if pool and not any(w.status == "ONLINE" for w in client.read_workers_for_work_pool(pool)):
            get_run_logger().warning("no worker online on pool %r: the runs wait until one starts", pool)
    ctx = FlowRunContext.get()
    parent = str(ctx.flow_run.id) if ctx and ctx.flow_run else str(time.time_ns())
    started = {}
    for sym in symbols:
        params = {
            "symbol": sym,
            "interval": interval,
            "source": source,
            "options": options or {},
            "model_type": model_type,
            "task": task,
            **per_symbol.get(sym, {}),
        }
        fr = run_deployment(
            deployment,
            parameters=params,
            timeout=0,
            flow_run_name=f"retrain-{sym}-{interval}",
            tags=[f"symbol:{sym}"],
            idempotency_key=f"{parent}:{sym}",  # a retried parent does not start a symbol twice
        )
        started[sym] = fr.id
    finals = _wait(started, timeout_s, poll_s)
    runs = {}
    for sym in symbols:
        fr = finals.get(sym)
        state = fr.state if fr is not None else None
        runs[sym] = {
            "flow_run": str(started[sym]),
            "state": state.type.name if state else "UNKNOWN",
            "state_name": state.name if state else "unknown",
            "message": (state.message or "").strip().splitlines()[0] if state and state.message else "",
            "start_time": fr.start_time.isoformat() if fr is not None and fr.start_time else None,
            "end_time": fr.end_time.isoformat() if fr is not None and fr.end_time else None,
        }
    rows = summarise(runs, before, interval, task)
    log = get_run_logger()
    for r in rows:
        log.info("%s: %s, version %s, %s", r["symbol"], r["state_name"], r["version"] or "-", r["why"])
    return {
        "symbols": rows,
        "failed": [r["symbol"] for r in rows if r["state"] != "COMPLETED"],
        "promoted": [r["symbol"] for r in rows if r["promoted"]],
    }
