"""Promote flow: score champion and challenger on the same fresh rows with the task's promotion metric,
then apply configs/promotion.yaml (+ the task's overrides)."""

from __future__ import annotations

import tempfile
from pathlib import Path
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
    if "champion" not in aliases:  # a first version whose gates failed waits as challenger: nothing to beat
        return None, aliases
    policy = rt.policy(task_name)
    newest = load_newest_window(client, name, aliases["challenger"])
    # A fresh folder per comparison: a fixed path (<name>-champion-<v>) made the next comparison with the
    # same champion fail ("download target exists"), e.g. every retrain after a kept challenger.
    (rt.settings.home_abs / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"compare-{name}-", dir=rt.settings.home_abs / "tmp") as tmp:
        champion_dir = download_bundle(client, name, version=aliases["champion"], dst=Path(tmp) / "champion")
        onnx_bytes, manifest = read_bundle(champion_dir)
        challenger_dir = download_bundle(
            client, name, version=aliases["challenger"], dst=Path(tmp) / "challenger"
        )
        _, challenger = read_bundle(challenger_dir)
    start, end = champion_candle_range(newest, manifest, interval)
    champ_pred = predict_bundle(onnx_bytes, manifest, rt.store().load(symbol, interval, start=start, end=end))
    cmp = compare_on_newest_window(
        newest,
        challenger.horizons,
        policy.horizon,
        champ_pred,
        training_end(manifest),
        task=rt.task(task_name, challenger.horizons),
        interval=interval,
        cfg=rt.training_config(task=task_name).evaluation,
        alpha=policy.alpha,
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
        test=cmp.test,
        baseline_test=cmp.baseline_test,
        baseline_name=cmp.baseline_name,
    )
    mv = rt.mlflow.get_model_version(name, aliases["challenger"])
    apply_decision(
        rt.mlflow, RegisteredVersion(name, mv.version, mv.run_id), decision, actor="kairos-promote"
    )
    return decision


@task(name="first-version-decision", **IO)
def first_version(symbol: str, interval: str, version: str, task_name: str = "returns"):
    """A first version (no champion before it) is judged by gates (b) and (c) alone. Registration already
    applied them (made it champion, or left it waiting as challenger); this records that decision once, with
    its newest-window numbers, and carries it out for a waiting challenger. None when already recorded, or
    when `version` is not a first version (e.g. a champion moved in the MLflow UI)."""
    from pipelines.contracts.bundle import read_bundle
    from pipelines.review.decision import decide
    from pipelines.review.newest_window import compare_on_newest_window
    from registry.bundles import download_bundle
    from registry.client import RegisteredVersion, model_name
    from registry.decisions import has_decision, record
    from registry.history import history
    from registry.promotion import apply_decision
    from registry.runs import load_newest_window, version_below_baselines, version_gates

    rt = Runtime.from_env()
    client, name = rt.mlflow, model_name(symbol, interval, task_name)
    champions = [m.to_version for m in history(client, name, "champion")]
    if has_decision(client, name, version) or champions not in ([], [str(version)]):
        return None
    policy = rt.policy(task_name)
    (rt.settings.home_abs / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"first-{name}-", dir=rt.settings.home_abs / "tmp") as tmp:
        _, manifest = read_bundle(download_bundle(client, name, version=version, dst=Path(tmp) / "v"))
    cmp = compare_on_newest_window(
        load_newest_window(client, name, version),
        manifest.horizons,
        policy.horizon,
        None,
        None,
        task=rt.task(task_name, manifest.horizons),
        interval=interval,
        cfg=rt.training_config(task=task_name).evaluation,
        alpha=policy.alpha,
    )
    decision = decide(
        policy,
        challenger_score=cmp.challenger_score,
        champion_score=None,
        n_rows=cmp.rows,
        gates=version_gates(client, name, version),
        baseline_score=cmp.baseline_score,
        metric=cmp.metric,
        higher_is_better=cmp.higher_is_better,
        below_baselines=version_below_baselines(client, name, version),
        baseline_test=cmp.baseline_test,
        baseline_name=cmp.baseline_name,
    )
    if champions:  # made champion at registration: record the decision, the alias is where it belongs
        record(
            client,
            name,
            version,
            decision.record(),
            source="first-version",
            champion_version=None,
            actor="kairos-train",
        )
    else:  # waiting as challenger: the decision is carried out (it stays there unless it now passes)
        mv = client.get_model_version(name, str(version))
        reg = RegisteredVersion(name, mv.version, mv.run_id)
        apply_decision(client, reg, decision, actor="kairos-promote", source="first-version")
    return decision


@flow(name="promote")
def promote(symbol: str, interval: str = "1m", task: str = "returns") -> dict[str, Any]:
    """Apply the promotion policy to the current challenger of `<task>-<symbol>-<interval>`."""
    cmp, aliases = compare(symbol, interval, task)
    if cmp is None:
        waiting = "challenger" in aliases and "champion" not in aliases
        reason = (
            "no champion to compare against (the first version's gates failed); the challenger waits"
            if waiting
            else "no challenger to evaluate"
        )
        out = {"decision": None, "reason": reason, "aliases": aliases}
        first = aliases.get("champion", aliases.get("challenger"))
        if first is not None:  # a first version: its decision (made at registration) is recorded once
            out["first_version"] = first_version(symbol, interval, first, task)
        return out
    decision = apply_policy(symbol, interval, cmp, aliases, task)
    return {"decision": decision, "comparison": cmp, "aliases": aliases}
