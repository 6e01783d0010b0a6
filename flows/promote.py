"""Promote flow: score champion and challenger on the same fresh rows, apply configs/promotion.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task

from flows.runtime import IO, PURE, Runtime, reporter
from pipelines.contracts.errors import KairosError

from flows.ingest import _delta

@task(name="champion-vs-challenger", **IO)
def compare(symbol: str, interval: str):
    """Score champion and challenger on the challenger's newest window, out-of-sample for both."""
    from pipelines.contracts.bundle import read_bundle
    from pipelines.review.newest_window import compare_on_newest_window
    from pipelines.training.predict import predict_bundle
    from registry.bundles import download_bundle
    from registry.client import model_name
    from registry.promotion import current_aliases
    from registry.runs import load_newest_window

    rt = Runtime.from_env()
    client, name = rt.mlflow, model_name(symbol, interval)
    aliases = current_aliases(client, name)
    if "challenger" not in aliases or aliases.get("challenger") == aliases.get("champion"):
        return None, aliases
    policy = rt.promotion_policy
    newest = load_newest_window(client, name, aliases["challenger"])
    tmp = rt.settings.home_abs / "tmp" / f"{name}-champion-{aliases['champion']}"
    onnx_bytes, manifest = read_bundle(download_bundle(client, name, alias="champion", dst=tmp))
    times = pd.to_datetime(newest.open_times, unit="ms", utc=True)
    history = pd.Timedelta(_delta(interval)) * (manifest.feature_set.warmup + (manifest.sequence_length or 1) + 5)
    candles = rt.store().load(symbol, interval, start=times.min() - history, end=times.max())
    champ_pred = predict_bundle(onnx_bytes, manifest, candles)
    train_end = pd.Timestamp(manifest.training["end"])
    train_end = train_end.tz_localize("UTC") if train_end.tzinfo is None else train_end
    _, challenger_manifest = read_bundle(
        download_bundle(client, name, alias="challenger", dst=rt.settings.home_abs / "tmp" / f"{name}-challenger-{aliases['challenger']}")
    )
    cmp = compare_on_newest_window(newest, challenger_manifest.horizons, policy.horizon, champ_pred, train_end)
    return cmp, aliases


@task(name="apply-policy", **IO)
def apply_policy(symbol: str, interval: str, cmp, aliases: dict[str, str]):
    from registry.client import model_name
    from registry.client import RegisteredVersion
    from registry.promotion import apply_decision, decide
    from registry.runs import version_gates

    rt = Runtime.from_env()
    name = model_name(symbol, interval)
    decision = decide(
        rt.promotion_policy,
        challenger_acc=cmp.challenger_accuracy,
        champion_acc=cmp.champion_accuracy,
        n_rows=cmp.rows,
        gates=version_gates(rt.mlflow, name, aliases["challenger"]),
    )
    mv = rt.mlflow.get_model_version(name, aliases["challenger"])
    apply_decision(rt.mlflow, RegisteredVersion(name, mv.version, mv.run_id), decision, actor="kairos-promote")
    return decision


@flow(name="promote")
def promote(symbol: str, interval: str = "1m") -> dict[str, Any]:
    """Apply configs/promotion.yaml to the current challenger; move `champion` if it earns it."""
    cmp, aliases = compare(symbol, interval)
    if cmp is None:
        return {"decision": None, "reason": "no challenger to evaluate", "aliases": aliases}
    decision = apply_policy(symbol, interval, cmp, aliases)
    return {"decision": decision, "comparison": cmp, "aliases": aliases}


