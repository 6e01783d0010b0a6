"""The monitor as a Prefect flow: checks → HTML report → MLflow → alerts → retrain when drift fires.

`monitor(model)` checks the version that is actually serving (the `champion` alias, after syncing moves
made in the MLflow UI) against configs/monitoring.yaml (its hourly deployment is in prefect.yaml):
- drift of every feature and output over the store's newest candles against the reference profile in
  that version's bundle, with the alarm calibrated at training time (`pipelines.monitoring.drift`);
- the GX candle suite on those candles (drift on invalid data is a data problem, not a new market);
- live performance from the prediction log joined with outcomes exactly as the A/B review joins them
  (`flows.review.log_outcomes`; `pipelines.monitoring.live`): the task's metric over the live window
  beside the walk-forward interval and the best naive rule, latency-budget violations per hour;
- staleness of the predictions and of the store.
Fired checks go to the log (one `ALERT ...` line each) and the webhook (Slack-compatible JSON). When
drift fires on valid data the flow starts `flows.retrain.daily_retrain` for the model's symbol and task
as a subflow; its challenger replaces the champion only through the promotion gates.
Flows only wire steps; retries are on I/O tasks only, for transient errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task

from flows.review import default_predlog_dir, read_log
from flows.runtime import IO, PURE, Runtime
from pipelines.contracts.aliases import CHALLENGER, CHAMPION
from pipelines.contracts.errors import KairosError


@task(name="serving-versions", **IO)
def serving_versions(name: str) -> dict[str, str]:
    """The model's live aliases (moves made in the MLflow UI recorded first); unknown model → RegistryError."""
    from registry.history import sync_external_moves
    from registry.promotion import current_aliases

    client = Runtime.from_env().mlflow
    aliases = current_aliases(client, name)  # raises a clear RegistryError for an unknown model
    sync_external_moves(client, name)
    return aliases


@task(name="load-bundle", **IO)
def load_bundle(name: str, version: str):
    """(onnx bytes, manifest) of one registered version, cached under $KAIROS_HOME/tmp/monitor."""
    from pipelines.contracts.bundle import MANIFEST_FILE, read_bundle
    from registry.bundles import download_bundle

    rt = Runtime.from_env()
    dst = rt.settings.home_abs / "tmp" / "monitor" / f"{name}-v{version}"
    if not (dst / MANIFEST_FILE).is_file():
        download_bundle(rt.mlflow, name, version=version, dst=dst)
    return read_bundle(dst)


@task(name="load-monitored-candles", **IO)
def load_candles(symbol: str, interval: str, start: pd.Timestamp, end: pd.Timestamp):
    """Stored candles opened in [start, end] (with trade minutes where stored) and the newest open_time
    among them (`end`: the newest candle closed by the monitor's clock; a replay's clock lies in the past)."""
    from flows.review import candles_with_minutes

    store = Runtime.from_env().store()
    last = store.last_open_time(symbol, interval)
    if last is None:
        return pd.DataFrame(), None
    candles, _ = candles_with_minutes(store, [symbol], interval, start, min(last, end))
    if len(candles):
        last = pd.Timestamp(pd.to_datetime(candles["open_time"], utc=True).max())
    return candles, min(last, end)


@task(name="validate-monitored-candles", **PURE)
def validate(candles: pd.DataFrame, batch_name: str) -> tuple[int | None, str]:
    """(failed expectations, message) of the GX candle suite on the candles the drift statistics read
    (stored already: no quarantine); None when there are no candles."""
    from pipelines.contracts.schema import CANDLE_COLUMNS
    from validation.candles import failure_message, validate_candles

    if candles.empty:
        return None, "no candles stored"
    cols = [c for c in CANDLE_COLUMNS if c in candles.columns]  # the trade minutes joined are not candles
    report = validate_candles(
        candles[cols], data_docs_dir=Runtime.from_env().settings.data_docs_dir, batch_name=batch_name
    )
    if report.success:
        return 0, f"{report.evaluated_expectations} expectations passed on {len(candles):,} candles"
    return max(len(report.failed), 1), failure_message(report)


@task(name="drift-statistics", **PURE)
def drift(onnx_bytes: bytes, manifest, candles: pd.DataFrame):
    """(checks, the live rows they read, why skipped): the profile's calibrated alarm on the candles."""
    from pipelines.monitoring.drift import DriftError, evaluate_drift, live_frame

    profile = manifest.profile()
    if profile is None:
        return None, None, "the bundle has no reference profile (trained before profiles existed): retrain it"
    if candles.empty:
        return None, None, "no candles stored"
    try:
        live = live_frame(onnx_bytes, manifest, candles)
        checks = evaluate_drift(profile, live)
    except DriftError as e:
        return None, None, str(e)
    return checks, live.iloc[-int(profile.alarm["window"]) :], ""


@task(name="live-outcomes", **IO)
def live_outcomes(log: pd.DataFrame, task_name: str, horizons: list[int], now: pd.Timestamp):
    """The log's records joined with realised outcomes from the store (the review's join)."""
    from flows.review import log_outcomes

    rt = Runtime.from_env()
    return log_outcomes(log, rt.store(), rt.task(task_name, horizons), now)


@task(name="live-performance", **PURE)
def performance(resolved, candles, task_name, horizons, metrics_by_version, start, end, fee_bps):
    from pipelines.monitoring.live import baseline_state, live_performance

    task_ = Runtime.from_env().task(task_name, horizons)
    state = baseline_state(task_, candles, start) if len(candles) else None
    out = []
    for version, metrics in metrics_by_version.items():
        out += live_performance(
            resolved,
            candles,
            task=task_,
            version=version,
            manifest_metrics=metrics,
            start=start,
            end=end,
            fee_bps=fee_bps,
            baselines=state,
        )
    return out


@task(name="write-monitor-report", **PURE)
def report(
    out_dir: str,
    model: str,
    version: str,
    checks,
    drift_out,
    profile,
    perf,
    resolved,
    task_name,
    horizons,
    hours,
    budget_us,
    notes,
    clock,
):
    from pipelines.monitoring.report import write_monitor_report

    return write_monitor_report(
        Path(out_dir),
        model=model,
        version=version,
        checks=checks,
        drift=drift_out[0],
        profile=profile,
        live_rows=drift_out[1],
        perf=perf,
        resolved=resolved,
        task=Runtime.from_env().task(task_name, horizons),
        hours=hours,
        budget_us=budget_us,
        notes=notes,
        clock=clock,
    )


@task(name="log-monitor-run", **IO)
def log_to_mlflow(
    model: str, version: str, time_ms: int, report_dir: str, metrics: dict[str, float], params: dict[str, str]
) -> str:
    from registry.monitoring import log_monitor_run

    return log_monitor_run(
        Runtime.from_env().mlflow,
        name=model,
        version=version,
        time_ms=time_ms,
        report_dir=Path(report_dir),
        metrics=metrics,
        params=params,
        alerts=int(metrics["alerts"]),
    )


@task(name="send-alert-webhook", **IO)
def send_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> int:
    from pipelines.monitoring.alerts import post_webhook

    return post_webhook(url, payload, timeout_s)


@task(name="last-drift-retrain", **IO)
def last_retrain(model: str) -> int | None:
    from registry.monitoring import last_retrain_ms

    return last_retrain_ms(Runtime.from_env().mlflow, model)


@task(name="tag-retrain", **IO)
def tag_retrain(run_id: str, started: bool, what: str) -> None:
    from registry.monitoring import tag_retrain as tag

    tag(Runtime.from_env().mlflow, run_id, started, what)


def _clock(now: str | None) -> pd.Timestamp:
    t = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _retrain_summary(out: dict[str, Any]) -> str:
    d = (out.get("promote") or {}).get("decision")
    reg = out.get("registered")
    version = getattr(reg, "version", "?")
    if d is None:
        return f"retrained v{version}; {(out.get('promote') or {}).get('reason', 'no decision')}"
    return f"retrained v{version}; gates: {'PROMOTED' if d.promote else 'KEPT champion'} — {d.reason}"


@flow(name="monitor")
def monitor(
    model: str,
    window: str | None = None,
    retrain: bool = True,
    predlog_dir: str | None = None,
    now: str | None = None,
    webhook_url: str | None = None,
    retrain_source: str | None = None,
    retrain_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every check of configs/monitoring.yaml once on `model`'s serving version.

    Args:
        model: registered model name, e.g. "returns-FILUSDT-1m".
        window: live-performance window ("24h", "6h", ...; default `live_window` of the config).
        retrain: False = report and alert only, never start a retrain.
        predlog_dir: prediction-log directory (default: serving's).
        now: the monitor's clock (ISO-8601 UTC; default now): the live window ends here.
        webhook_url: overrides the config's webhook (and KAIROS_ALERT_WEBHOOK).
        retrain_source / retrain_options: override the config's `retrain.source` / `options`.

    Returns:
        {"model", "version", "checks" (list of `pipelines.monitoring.alerts.Check`), "alerts" (ALERT
         lines), "valid" (GX verdict or None), "drift_fired", "report", "run_id", "webhook"
         (what the sink did), "retrain" (None, or {"started", "reason", "result"})}.
    """
    import os

    from pipelines.config import duration_seconds, load_monitoring_config
    from pipelines.contracts.schema import interval_delta
    from pipelines.monitoring.alerts import (
        at_least,
        drift_checks,
        latency_check,
        live_checks,
        retrain_verdict,
        run_metrics,
        slack_payload,
        staleness_check,
        validation_check,
    )
    from pipelines.monitoring.live import BASELINE_FIT_CANDLES, data_age_s, latency_by_hour, prediction_age_s
    from pipelines.tasks import task_of_model
    from pipelines.training.predict import history_rows

    log_ = get_run_logger()
    rt = Runtime.from_env()
    cfg = load_monitoring_config(rt.settings.configs_dir)
    rules = cfg.rules
    clock = _clock(now)
    span = pd.Timedelta(seconds=duration_seconds(window) if window else cfg.live_window)
    start = clock - span
    task_name = task_of_model(model)

    aliases = serving_versions(model)
    version = aliases.get(CHAMPION)
    if version is None:
        raise KairosError(
            f"{model} has no champion (aliases {aliases or 'none'}): nothing serves, nothing to monitor"
        )
    onnx_bytes, manifest = load_bundle(model, version)
    symbol, interval, horizons = manifest.symbol, manifest.interval, manifest.horizons
    delta = interval_delta(interval)

    # candles: the drift windows (+ feature warm-up) ending at the newest stored candle, and the live
    # window (+ a day of history for baselines that learn) ending at the clock
    profile = manifest.profile()
    alarm = profile.alarm if profile is not None else {}
    drift_rows = int(alarm.get("window", 0)) + (int(alarm.get("consecutive", 1)) - 1) * int(
        alarm.get("step", 0)
    )
    lookback = drift_rows + history_rows(manifest)
    history = (BASELINE_FIT_CANDLES + rt.task(task_name, horizons).warmup) * delta
    closed = clock.floor(delta) - delta  # open_time of the newest candle closed by the clock
    candles, last = load_candles(symbol, interval, start - history, closed)
    if last is not None and len(candles):
        newest = pd.to_datetime(candles["open_time"], utc=True)
        first_drift = last - lookback * delta
        if newest.min() > first_drift:  # a stale store: reach back further for the drift windows
            candles, _ = load_candles(symbol, interval, first_drift, closed)
        drift_candles = candles[pd.to_datetime(candles["open_time"], utc=True) >= first_drift].reset_index(
            drop=True
        )
    else:
        drift_candles = candles
    stamp = clock.strftime("%Y%m%dT%H%M%SZ")
    failed, valid_msg = validate(drift_candles, f"monitor-{model}-{stamp}")
    valid = None if failed is None else failed == 0
    drift_out = drift(onnx_bytes, manifest, drift_candles)

    # live performance: the champion's records (and a challenger's, if it served) in the window
    log = read_log(str(predlog_dir or default_predlog_dir(rt)), model)
    recent = log[log["time"] >= start - max(horizons) * delta] if len(log) else log
    versions = {version: manifest.metrics}
    chall = aliases.get(CHALLENGER)
    if chall and chall != version and len(recent) and (recent["version"].astype(str) == chall).any():
        versions[chall] = load_bundle(model, chall)[1].metrics
    recent = recent[recent["version"].astype(str).isin(list(versions))] if len(recent) else recent
    perf, resolved = [], None
    if len(recent):
        oc = live_outcomes(recent, task_name, horizons, clock)
        resolved = oc.resolved
        perf = performance(
            resolved,
            candles,
            task_name,
            horizons,
            versions,
            start,
            clock,
            rt.training_config(task=task_name).evaluation.fee_bps,
        )
    lat = rules.latency_budget
    served = log[log["served"].astype(bool)] if len(log) else log  # as serving counts its budget violations
    hours = latency_by_hour(served, lat.budget_us, clock, max(1, int(round(lat.for_ / 3600))))
    newest_pred = "" if log.empty else f"{log['time'].max():%Y-%m-%d %H:%M:%S} UTC"
    newest_candle = "" if last is None else f"{last:%Y-%m-%d %H:%M} UTC open"

    checks = [
        *validation_check(failed, valid_msg, rules),
        *drift_checks(drift_out[0], rules, drift_out[2]),
        *live_checks(perf, rules),
        *latency_check(hours, rules),
        *staleness_check(
            "prediction_staleness", "predictions", prediction_age_s(log, clock), rules, newest_pred
        ),
        *staleness_check(
            "data_staleness",
            f"store {symbol} {interval}",
            data_age_s(last, interval, clock),
            rules,
            newest_candle,
        ),
    ]
    fired = [c for c in checks if c.fired]
    lines = [c.line(model, version) for c in fired]
    drift_fired = any(c.check == "drift" and c.fired for c in checks)

    out_dir = rt.settings.home_abs / "monitoring" / model / stamp
    notes = [
        f"serving: {model} v{version} ({manifest.model_type}, trained to {manifest.training.get('end', '?')})",
        f"live window: {start:%Y-%m-%d %H:%M} → {clock:%Y-%m-%d %H:%M} UTC; newest candle: {newest_candle or 'none'}",
        f"data validation: {valid_msg}",
    ]
    rep = report(
        str(out_dir),
        model,
        version,
        checks,
        drift_out,
        profile,
        perf,
        resolved,
        task_name,
        horizons,
        hours,
        lat.budget_us,
        notes,
        clock,
    )
    params = {"window": str(span), "now": clock.isoformat(), "retrain": str(retrain), "valid": str(valid)}
    metrics = run_metrics(checks, perf, version)
    run_id = log_to_mlflow(model, version, int(clock.value // 1_000_000), str(out_dir), metrics, params)

    # sinks: the log, then the webhook
    if cfg.sinks.log:
        for line in lines:
            log_.warning(line)
    url = webhook_url or cfg.sinks.webhook.url or os.environ.get(cfg.sinks.webhook.url_env)
    loud = [c for c in fired if at_least(c.severity, cfg.sinks.webhook.min_severity)]
    webhook = "no alert" if not fired else "no webhook configured"
    if loud and url:
        payload = slack_payload(loud, model=model, version=version, report=str(rep.html))
        try:
            webhook = f"delivered (HTTP {send_webhook(url, payload, cfg.sinks.webhook.timeout_s)})"
        except KairosError as e:  # after the retries: the alert stays in the log and the report
            webhook = f"failed: {e}"
            log_.error("alert webhook: %s", e)
    elif fired and url:
        webhook = f"nothing at or above {cfg.sinks.webhook.min_severity}"

    # drift on valid data: retrain (promoted only through the gates), at most once per cooldown
    retrain_out = None
    if drift_fired:
        wanted = retrain and cfg.retrain.enabled and bool(valid)
        last_ms = last_retrain(model) if wanted else None
        start_it, why = retrain_verdict(
            retrain=retrain and cfg.retrain.enabled,
            valid=valid,
            valid_message=valid_msg,
            last_retrain_ms=last_ms,
            now_ms=int(clock.value // 1_000_000),
            cooldown_s=cfg.retrain.cooldown,
        )
        result = None
        if start_it:
            from flows.retrain import daily_retrain

            try:
                result = daily_retrain(
                    symbol,
                    interval,
                    retrain_source or cfg.retrain.source,
                    retrain_options if retrain_options is not None else dict(cfg.retrain.options),
                    cfg.retrain.model_type or manifest.model_type,
                    task_name,
                )
                why = _retrain_summary(result)
            except Exception as e:  # noqa: BLE001 - the alerts went out; a failed retrain is reported, not fatal
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                why = f"retrain failed: {type(e).__name__}: {first}"
                log_.error(why)
        tag_retrain(run_id, start_it, why)
        retrain_out = {"started": start_it, "reason": why, "result": result}
    return {
        "model": model,
        "version": version,
        "checks": checks,
        "alerts": lines,
        "valid": valid,
        "drift_fired": drift_fired,
        "report": str(rep.html),
        "run_id": run_id,
        "webhook": webhook,
        "retrain": retrain_out,
    }
