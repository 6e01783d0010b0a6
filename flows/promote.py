"""Promote flow: score champion and challenger on the same fresh rows with the task's promotion metric,
then apply configs/promotion.yaml (+ the task's overrides)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.runtime import IO, Runtime


@task(name="champion-vs-challenger", **IO)
def compare(symbol: str, interval: str, task_name: str = "returns"):
    """Score champion and challenger on the challenger's newest window, out-of-sample for both."""
    from pipelines.contracts.bundle import read_bundle
    from pipelines.review.newest_window import champion_candle_range, compare_on_newest_window, training_end
    from pipelines.training.predict import predict_bundle
    from registry.bundles import download_bundle
    from registry.client import model_name
    from registry.promotion import current_aliases
    from registry.runs import load_newest_window

    rt = Runtime.from_env()
    client, name = rt.mlflow, model_name(symbol, interval, task_name)
    aliases = current_aliases(client, name)
    if "challenger" not in aliases or aliases.get("challenger") == aliases.get("champion"):
        return None, aliases
    policy = rt.policy(task_name)
    newest = load_newest_window(client, name, aliases["challenger"])
    tmp = rt.settings.home_abs / "tmp"
    onnx_bytes, manifest = read_bundle(
        download_bundle(client, name, alias="champion", dst=tmp / f"{name}-champion-{aliases['champion']}")
    )
    start, end = champion_candle_range(newest, manifest, interval)
    champ_pred = predict_bundle(onnx_bytes, manifest, rt.store().load(symbol, interval, start=start, end=end))
    _, challenger = read_bundle(
        download_bundle(
            client, name, alias="challenger", dst=tmp / f"{name}-challenger-{aliases['challenger']}"
        )
    )
    cmp = compare_on_newest_window(
        newest,
        challenger.horizons,
        policy.horizon,
        champ_pred,
        training_end(manifest),
        task=rt.task(task_name, challenger.horizons),
        interval=interval,
        cfg=rt.training_config(task=task_name).evaluation,
    )
    return cmp, aliases


@task(name="apply-policy", **IO)
def apply_policy(symbol: str, interval: str, cmp, aliases: dict[str, str], task_name: str = "returns"):
    from pipelines.review.decision import decide
    from registry.client import RegisteredVersion, model_name
    from registry.promotion import apply_decision
    from registry.runs import version_below_baselines, version_gates

    rt = Runtime.from_env()
    name = model_name(symbol, interval, task_name)
    decision = decide(
        rt.policy(task_name),
        challenger_score=cmp.challenger_score,
        champion_score=cmp.champion_score,
        n_rows=cmp.rows,
        gates=version_gates(rt.mlflow, name, aliases["challenger"]),
        baseline_score=cmp.baseline_score,
        metric=cmp.metric,
        higher_is_better=cmp.higher_is_better,
        below_baselines=version_below_baselines(rt.mlflow, name, aliases["challenger"]),
    )
    mv = rt.mlflow.get_model_version(name, aliases["challenger"])
    apply_decision(
        rt.mlflow, RegisteredVersion(name, mv.version, mv.run_id), decision, actor="kairos-promote"
    )
    return decision


@flow(name="promote")
def promote(symbol: str, interval: str = "1m", task: str = "returns") -> dict[str, Any]:
    """Apply the promotion policy to the current challenger of `<task>-<symbol>-<interval>`."""
    cmp, aliases = compare(symbol, interval, task)
    if cmp is None:
        return {"decision": None, "reason": "no challenger to evaluate", "aliases": aliases}
    decision = apply_policy(symbol, interval, cmp, aliases, task)
    return {"decision": decision, "comparison": cmp, "aliases": aliases}
