"""Train flow: load candles → walk-forward train + evaluate vs baselines → export (parity-gated) → register."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, task

from flows.runtime import IO, PURE, Runtime, reporter
from pipelines.contracts.errors import KairosError
from pipelines.contracts.faults import checkpoint


@task(name="load-candles", **IO)
def load_candles(symbol: str, interval: str) -> pd.DataFrame:
    df = Runtime.from_env().store().load(symbol, interval)
    if df.empty:
        raise KairosError(
            f"no candles stored for {symbol} {interval}; ingest some first (kairos ingest ... --symbol {symbol})"
        )
    return df


@task(name="train-walk-forward", **PURE)
def fit(
    candles: pd.DataFrame,
    symbol: str,
    interval: str,
    model_type: str,
    preset: str | None = None,
    task: str = "returns",
    features: str | None = None,
):
    """Walk-forward training of `task` with the tuned parameters of `kairos tune`, when a study wrote some.

    `features` ("core27,ta" or "core27+ta") replaces the configured feature set for this run."""
    from pipelines.sources.synthetic import is_synthetic_symbol
    from pipelines.training.walk_forward import train_walk_forward
    from pipelines.tuning.objective import load_best_params, provenance_tags, tuned_params

    rt = Runtime.from_env()
    overrides, provenance = load_best_params(rt.settings.home_abs, model_type, symbol, interval, task) or (
        {},
        {},
    )
    cfg = rt.training_config(None, task)
    if features:
        from pipelines.config import FeatureConfig
        from pipelines.features import get_feature_set

        cfg = cfg.model_copy(update={"features": FeatureConfig(feature_set=features)})
        get_feature_set(cfg.features.feature_set)  # an unknown name fails here, before any work
    result = train_walk_forward(
        candles,
        symbol=symbol,
        interval=interval,
        cfg=cfg,
        task=rt.task(task, cfg.labels.horizons),
        model_type=model_type,
        preset=preset,
        model_overrides=tuned_params(overrides),
        synthetic=is_synthetic_symbol(symbol),
        progress=reporter(),
    )
    result.run_tags.update(provenance_tags(provenance))
    if preset:
        result.run_tags["kairos.preset"] = preset
    return result


@task(name="register-model", **IO)
def register(result):
    """Log the run + bundle, create the model version; first version → champion, later → challenger."""
    from pipelines.training.figures import training_figures
    from registry.promotion import assign_new_version
    from registry.runs import log_training

    rt = Runtime.from_env()
    figures = {}
    if result.pooled is not None:
        title = f"{result.task}-{result.symbol}-{result.interval} ({result.model_type})"
        figures = training_figures(
            result.pooled, rt.task(result.task, result.horizons), result.horizons, title
        )
    client = rt.mlflow
    registered = log_training(client, result, tags=result.run_tags, figures=figures)
    checkpoint("after-register")  # a version without alias is inert: nothing serves or compares it
    # A first version becomes champion only if its gates passed and, when the policy requires it, it
    # beats the task's best naive rule at the policy horizon in walk-forward (else it waits as challenger;
    # its other losing horizons are withheld by serving).
    policy = rt.policy(result.task)
    beats = not (policy.require_beats_baselines and policy.horizon in result.below_baselines)
    assign_new_version(
        client, registered, actor="kairos-train", gates_passed=all(result.gates.values()) and beats
    )
    return registered


@flow(name="train")
def train(
    symbol: str,
    interval: str = "1m",
    model_type: str = "lightgbm",
    preset: str | None = None,
    task: str = "returns",
    features: str | None = None,
) -> dict[str, Any]:
    """Walk-forward train + evaluate `task` vs its baselines, export ONNX (parity-gated), register in MLflow."""
    candles = load_candles(symbol, interval)
    result = fit(candles, symbol, interval, model_type, preset, task, features)
    checkpoint("after-training")  # crash tests only (pipelines.contracts.faults); a no-op otherwise
    registered = register(result)
    return {"result": result, "registered": registered}


def read_events(path: str | None) -> dict[str, list[pd.Timestamp]]:
    """Announced event times per symbol from a CSV with columns `symbol` and `pump_time_utc` (or `time`),
    e.g. ../shared/data/pumps/events.csv; {} when no file is given."""
    if not path:
        return {}
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise KairosError(f"events file not found: {p}")
    df = pd.read_csv(p)
    col = next((c for c in ("pump_time_utc", "time", "event_time") if c in df.columns), None)
    if "symbol" not in df.columns or col is None:
        raise KairosError(
            f"{p}: expected columns `symbol` and `pump_time_utc` (or `time`), got {list(df.columns)}"
        )
    out: dict[str, list[pd.Timestamp]] = {}
    for sym, t in zip(df["symbol"].astype(str), pd.to_datetime(df[col], utc=True)):
        out.setdefault(sym, []).append(t)
    return out


@task(name="load-segments", **IO)
def load_segments(
    symbols: list[str], interval: str, events: dict[str, list[pd.Timestamp]], task_name: str = "whale"
):
    """Each symbol's stored candles joined with its trade minutes (where stored), cut into segments at
    gaps (one event window each) and into pieces of at most the task's `options.max_segment` (default 4 days)."""
    from pipelines.training.pooled import split_segments

    store = Runtime.from_env().store()
    segments = []
    for sym in symbols:
        candles = store.load(sym, interval)
        if candles.empty:
            raise KairosError(
                f"no candles stored for {sym} {interval}; ingest some first (kairos ingest trades ... --symbol {sym})"
            )
        minutes = store.load_trade_minutes(sym, interval)
        if not minutes.empty:
            candles = candles.merge(minutes, on="open_time", how="left", validate="one_to_one")
        max_len = Runtime.from_env().task(task_name).options.get("max_segment", "4D")
        segments += split_segments(candles, sym, events.get(sym, ()), max_len=max_len)
    return segments


@task(name="train-pooled", **PURE)
def fit_pooled(
    segments,
    universe: str,
    interval: str,
    task: str,
    features: str | None,
    test_segments: int,
    model_type: str = "lightgbm",
    preset: str | None = None,
):
    from pipelines.training.pooled import train_pooled

    rt = Runtime.from_env()
    cfg = rt.training_config(None, task)
    if features:
        from pipelines.config import FeatureConfig

        cfg = cfg.model_copy(update={"features": FeatureConfig(feature_set=features)})
    return train_pooled(
        segments,
        universe=universe,
        interval=interval,
        cfg=cfg,
        task=rt.task(task, cfg.labels.horizons),
        test_segments=test_segments,
        model_type=model_type,
        preset=preset,
        progress=reporter(),
    )


@flow(name="train-pooled")
def train_universe(
    symbols: list[str],
    universe: str,
    interval: str = "1m",
    task: str = "whale",
    events_file: str | None = None,
    test_segments: int = 10,
    features: str | None = None,
    model_type: str = "lightgbm",
    preset: str | None = None,
) -> dict[str, Any]:
    """One model pooled over a universe of symbols (their event windows): evaluated on the latest
    `test_segments` windows after training on the earlier ones, refitted on all, registered as
    `<task>-<universe>-<interval>`."""
    import re

    if not re.fullmatch(r"[A-Z0-9_]+", universe or ""):
        raise KairosError(f"universe name {universe!r}: use upper-case letters, digits and _ (e.g. PUMPS)")
    events = read_events(events_file)
    segments = load_segments(symbols, interval, events, task)
    result = fit_pooled(segments, universe, interval, task, features, test_segments, model_type, preset)
    registered = register(result)
    return {"result": result, "registered": registered}
