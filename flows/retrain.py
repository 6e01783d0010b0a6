"""The daily retraining loop as Prefect flows: ingest → validate → train → register → promote.

Flows only wire steps. Retries are declared on I/O tasks (sources, store, MLflow) and only for
transient errors (`is_transient`); validation, training and policy decisions never retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.runtime import Runtime, reporter
from pipelines.errors import KairosError

IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
PURE = dict(cache_policy=NO_CACHE)


def is_transient(exc: BaseException) -> bool:
    """Network blips, timeouts and a busy database file are worth retrying; bad input is not."""
    if isinstance(exc, KairosError):
        return bool(getattr(exc, "transient", False))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"NetworkError", "RequestTimeout", "TransportError", "IOException", "MlflowException"})


def _retry_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(exc)
    return False


IO = dict(**IO_RETRIES, retry_condition_fn=_retry_transient)


# ---------------------------------------------------------------- ingest
@task(name="fetch-candles", **IO)
def fetch_candles(source: str, symbol: str, interval: str, options: dict[str, Any], last_open_time) -> pd.DataFrame:
    if source == "synthetic":
        from pipelines.sources import synthetic

        n = int(round(float(options.get("days", 30)) * pd.Timedelta(days=1) / _delta(interval)))
        start = (last_open_time + _delta(interval)) if last_open_time is not None else options.get("start", "2024-01-01")
        return synthetic.generate(symbol, interval=interval, start=start, n=n, seed=int(options.get("seed", 7)))
    if source == "binance-files":
        from pipelines.sources import binance_files

        return binance_files.read_many([Path(p) for p in options["paths"]], symbol, interval)
    if source == "ccxt":
        from pipelines.sources import ccxt_source

        since = options.get("since")
        since = pd.Timestamp(since, tz="UTC") if since else (
            last_open_time + _delta(interval) if last_open_time is not None else None
        )
        if since is None:
            raise KairosError("ccxt backfill needs --since (no candles stored yet for this symbol)")
        return ccxt_source.fetch_ohlcv_range(
            options["exchange"], options.get("market") or symbol, interval, since=since,
            until=pd.Timestamp(options["until"], tz="UTC") if options.get("until") else None,
            exchange_config=options.get("exchange_config"), store_symbol=symbol,
        )
    raise KairosError(f"unknown source {source!r}; expected synthetic, binance-files or ccxt")


def _delta(interval: str) -> pd.Timedelta:
    from pipelines.schema import interval_delta

    return interval_delta(interval)


@task(name="last-open-time", **IO)
def last_open_time(symbol: str, interval: str):
    return Runtime.from_env().store().last_open_time(symbol, interval)


@task(name="validate-candles", **PURE)
def validate(df: pd.DataFrame, batch_name: str):
    from validation.candles import check_or_quarantine

    s = Runtime.from_env().settings
    return check_or_quarantine(df, data_docs_dir=s.data_docs_dir, quarantine_dir=s.quarantine_dir, batch_name=batch_name)


@task(name="upsert-candles", **IO)
def upsert(df: pd.DataFrame) -> int:
    return Runtime.from_env().store().upsert(df)


@flow(name="ingest")
def ingest(source: str, symbol: str, interval: str = "1m", options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fetch candles from a source, validate them (bad batch → quarantine, flow fails), upsert the store."""
    options = options or {}
    last = last_open_time(symbol, interval)
    df = fetch_candles(source, symbol, interval, options, last)
    if df.empty:
        return {"symbol": symbol, "interval": interval, "rows": 0, "added": 0, "gaps": 0}
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
    report = validate(df, f"{source}-{symbol}-{interval}-{stamp}")
    added = upsert(df)
    return {
        "symbol": symbol,
        "interval": interval,
        "rows": len(df),
        "added": added,
        "gaps": report.total_gaps,
        "expectations": report.evaluated_expectations,
        "first": str(df["open_time"].min()),
        "last": str(df["open_time"].max()),
    }


# ---------------------------------------------------------------- train
@task(name="load-candles", **IO)
def load_candles(symbol: str, interval: str) -> pd.DataFrame:
    df = Runtime.from_env().store().load(symbol, interval)
    if df.empty:
        raise KairosError(
            f"no candles stored for {symbol} {interval}; ingest some first (kairos ingest ... --symbol {symbol})"
        )
    return df


@task(name="train-walk-forward", **PURE)
def fit(candles: pd.DataFrame, symbol: str, interval: str, model_type: str, preset: str | None = None):
    """Walk-forward training with the tuned parameters of `kairos tune`, when a study wrote some."""
    from pipelines.sources.synthetic import is_synthetic_symbol
    from pipelines.train import train_walk_forward
    from pipelines.tune import load_best_params, provenance_tags

    rt = Runtime.from_env()
    overrides, provenance = load_best_params(rt.settings.home_abs, model_type, symbol, interval) or ({}, {})
    cfg = rt.training_config({"lightgbm": overrides["lightgbm"]} if "lightgbm" in overrides else None)
    if model_type != "lightgbm":
        from pipelines.models import MODEL_FACTORIES, register_model
        from pipelines.models.sequence import sequence_factory

        if model_type in MODEL_FACTORIES:  # unknown types fall through to make_model's error
            register_model(model_type, sequence_factory(model_type, preset, overrides.get("preset"),
                                                        rt.settings.configs_dir))
    result = train_walk_forward(
        candles, symbol=symbol, interval=interval, cfg=cfg, model_type=model_type,
        synthetic=is_synthetic_symbol(symbol), progress=reporter(),
    )
    result.run_tags.update(provenance_tags(provenance))
    if preset:
        result.run_tags["kairos.preset"] = preset
    return result


@task(name="register-model", **IO)
def register(result):
    """Log the run + bundle, create the model version; first version → champion, later → challenger."""
    from registry.promotion import assign_new_version
    from registry.runs import log_training

    client = Runtime.from_env().mlflow
    registered = log_training(client, result, tags=result.run_tags)
    assign_new_version(client, registered, actor="kairos-train", gates_passed=all(result.gates.values()))
    return registered


@flow(name="train")
def train(symbol: str, interval: str = "1m", model_type: str = "lightgbm", preset: str | None = None) -> dict[str, Any]:
    """Walk-forward train + evaluate vs baselines, export ONNX (parity-gated), register in MLflow."""
    candles = load_candles(symbol, interval)
    result = fit(candles, symbol, interval, model_type, preset)
    registered = register(result)
    return {"result": result, "registered": registered}


# ---------------------------------------------------------------- promote
@task(name="champion-vs-challenger", **IO)
def compare(symbol: str, interval: str):
    """Score champion and challenger on the challenger's newest window, out-of-sample for both."""
    from pipelines.bundle import read_bundle
    from pipelines.compare import compare_on_newest_window
    from pipelines.predict import predict_bundle
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


# ---------------------------------------------------------------- daily
@flow(name="daily_retrain")
def daily_retrain(
    symbol: str = "SYNTHUSDT",
    interval: str = "1m",
    source: str = "synthetic",
    options: dict[str, Any] | None = None,
    model_type: str = "lightgbm",
) -> dict[str, Any]:
    """ingest → validate → train → register → promote, for one symbol (the 03:00 UTC deployment)."""
    ingested = ingest(source, symbol, interval, options or {"days": 1})
    trained = train(symbol, interval, model_type)
    promoted = promote(symbol, interval)
    return {"ingest": ingested, **trained, "promote": promoted}
