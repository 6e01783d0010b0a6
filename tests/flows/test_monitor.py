"""The monitor end to end on real components (DuckDB store, GX, onnxruntime, MLflow on SQLite, Prefect test
server, a loopback HTTP webhook): a champion trained on synthetic candles, a later day served and logged;
without a shift `kairos monitor` exits 0, with a planted shift (volatility x3) it exits 3 with ALERT
lines, and the monitor flow alerts the webhook, starts the retrain flow, the promotion gates decide and
the decision shows in `kairos history`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from tests.conftest import REPO
from tests.fixtures.flow_helpers import write_small_configs
from tests.fixtures.webhook import webhook_receiver

SYMBOL, NAME = "SYNTHUSDT", "returns-SYNTHUSDT-1m"
START = pd.Timestamp("2024-01-01", tz="UTC")
TRAIN_DAYS = 5
KNOBS = {"flow_kappa": 0.2}  # a learnable signal, so the first version beats the naive rules and serves


def _synth(start: pd.Timestamp, n: int) -> pd.DataFrame:
    from pipelines.sources.synthetic import SynthParams, generate

    return generate(SYMBOL, "1m", start, n, seed=7, params=SynthParams(**KNOBS))


def _volatility_x3(day: pd.DataFrame) -> pd.DataFrame:
    """The same candles with every log move from the day's first open tripled (OHLC order kept)."""
    out = day.copy()
    p0 = float(day["open"].iloc[0])
    for c in ("open", "high", "low", "close"):
        out[c] = p0 * np.exp(3.0 * np.log(day[c].to_numpy(float) / p0))
    return out


def _log_predictions(rt, onnx_bytes, manifest, day: pd.DataFrame) -> int:
    """The champion's predictions for every candle of `day`, written by serving's prediction-log writer
    as serving writes them (made one second after the candle closed, 80 µs each)."""
    from pipelines.contracts.predlog import default_log_dir
    from pipelines.training.predict import history_rows, predict_bundle
    from serving.predlog import PredictionLog

    directory = default_log_dir(rt.settings.configs_dir, rt.settings.home_abs)
    shutil.rmtree(directory, ignore_errors=True)
    history = (
        rt.store().load(SYMBOL, "1m", end=day["open_time"].max()).tail(len(day) + history_rows(manifest))
    )
    pred = predict_bundle(onnx_bytes, manifest, history)
    pred = pred[pd.to_datetime(pred["open_time"], utc=True) >= day["open_time"].min()]
    log = PredictionLog(directory).start()
    for i, r in enumerate(pred.itertuples(index=False)):
        t = pd.Timestamp(r.open_time) + pd.Timedelta(minutes=1, seconds=1)
        log.append(
            {
                "v": 1,
                "request_id": f"req-{i}",
                "time": t.isoformat(timespec="microseconds"),
                "symbol": SYMBOL,
                "interval": "1m",
                "open_time": int(pd.Timestamp(r.open_time).value // 1_000_000),
                "arm": "champion",
                "served": True,
                "mode": "champion_only",
                "routing_key": SYMBOL,
                "model": NAME,
                "version": "1",
                "horizons": manifest.horizons,
                "predictions": [float(getattr(r, f"h{h}")) for h in manifest.horizons],
                "confidence": None,
                "latency_us": 80.0,
            }
        )
    log.close()
    return len(pred)


@pytest.fixture(scope="module")
def world(tmp_path_factory, template_db):
    """A champion (v1) trained on 5 synthetic days, the next day stored and served by it (logged)."""
    from pipelines.contracts.settings import get_settings

    tmp = tmp_path_factory.mktemp("monitor")
    with pytest.MonkeyPatch.context() as mp:
        home = tmp / "home"
        home.mkdir()
        shutil.copy(template_db, home / "mlflow.db")  # skips ~5 s of MLflow migrations
        mp.setenv("KAIROS_HOME", str(home))
        configs = write_small_configs(tmp / "configs")
        mon = yaml.safe_load((configs / "monitoring.yaml").read_text())
        mon["retrain"]["options"] = {"days": 0.01}  # the retrain ingests 14 candles, then trains on the store
        (configs / "monitoring.yaml").write_text(yaml.safe_dump(mon))
        mp.setenv("KAIROS_CONFIGS_DIR", str(configs))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("KAIROS_ALERT_WEBHOOK", raising=False)
        mp.setenv("PREFECT_HOME", str(tmp / "prefect"))  # `prepare()` would set these for good
        mp.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        mp.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
        get_settings.cache_clear()
        from flows.runtime import Runtime
        from pipelines.contracts.bundle import read_bundle
        from pipelines.sources.synthetic import is_synthetic_symbol
        from pipelines.training.walk_forward import train_walk_forward
        from registry.bundles import download_bundle
        from registry.promotion import assign_new_version, current_aliases
        from registry.runs import log_training

        rt = Runtime.from_env()
        store = rt.store()
        store.upsert(_synth(START, TRAIN_DAYS * 1440))
        cfg = rt.training_config(task="returns")
        result = train_walk_forward(
            store.load(SYMBOL, "1m"),
            symbol=SYMBOL,
            interval="1m",
            cfg=cfg,
            task=rt.task("returns", cfg.labels.horizons),
            model_type="lightgbm",
            synthetic=is_synthetic_symbol(SYMBOL),
        )
        assert result.manifest.profile() is not None and result.manifest.profile().alarm.get("thresholds")
        assign_new_version(rt.mlflow, log_training(rt.mlflow, result), actor="test")
        assert current_aliases(rt.mlflow, NAME) == {"champion": "1"}, "v1 must beat the naive rules to serve"
        onnx_bytes, manifest = read_bundle(download_bundle(rt.mlflow, NAME, version="1", dst=tmp / "v1"))
        day = _synth(START + pd.Timedelta(days=TRAIN_DAYS), 1440)
        store.upsert(day)
        logged = _log_predictions(rt, onnx_bytes, manifest, day)
        now = (day["open_time"].max() + pd.Timedelta(minutes=2)).isoformat()  # the next candle closed
        with prefect_test_harness(server_startup_timeout=120):
            yield {
                "rt": rt,
                "day": day,
                "now": now,
                "bundle": (onnx_bytes, manifest),
                "logged": logged,
                "mp": mp,
            }
        get_settings.cache_clear()


def kairos(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def _alerts(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ALERT")]


def test_kairos_monitor_exits_0_when_nothing_drifts(world):
    res = kairos("monitor", "--model", NAME, "--no-retrain", "--now", world["now"])
    assert res.exit_code == 0, res.output
    assert _alerts(res.output) == []
    assert "monitor — returns-SYNTHUSDT-1m v1 (serving)" in res.output
    for check in ("drift", "live_below_backtest", "live_below_baseline", "latency_budget", "data_validation"):
        assert check in res.output, check
    assert "prediction_staleness" in res.output and "data_staleness" in res.output
    assert "experiment kairos-monitoring" in res.output


def test_kairos_monitor_errors_name_the_problem(world):
    res = kairos("monitor", "--model", "returns-NOPEUSDT-1m", "--no-retrain")
    assert res.exit_code == 1
    assert (
        res.output.startswith("error:")
        and "returns-NOPEUSDT-1m" in res.output
        and "does not exist" in res.output
    )
    res = kairos("monitor", "--model", NAME, "--window", "soon")
    assert res.exit_code == 1 and "duration 'soon'" in res.output


def test_planted_shift_alerts_the_webhook_retrains_and_the_gates_decide(world):
    """`kairos monitor` runs the monitor flow: exit 3 and ALERT lines, the Slack-style body on a loopback
    webhook, the retrain flow started, its challenger judged by the promotion gates, the decision in history."""
    from flows.runtime import Runtime
    from registry.monitoring import MONITOR_EXPERIMENT, last_retrain_ms

    rt = world["rt"]
    shifted = _volatility_x3(world["day"])
    rt.store().upsert(shifted)  # same keys: the stored day is replaced by its shifted version
    _log_predictions(rt, *world["bundle"], shifted)
    with webhook_receiver() as hook:
        world["mp"].setenv("KAIROS_ALERT_WEBHOOK", hook.url)
        try:
            res = kairos("monitor", "--model", NAME, "--now", world["now"])
        finally:
            world["mp"].delenv("KAIROS_ALERT_WEBHOOK")
    assert res.exit_code == 3, res.output

    # one ALERT line per drifted column, naming the check, the column and the numbers
    lines = _alerts(res.output)
    drifted = [line for line in lines if line.startswith(f"ALERT drift critical {NAME} v1 ")]
    assert any(" feature volatility_" in line for line in drifted), res.output
    # ALERT drift critical <model> v1 <kind> <column>: <statistic> <value> > <threshold> (<rows> rows)
    for line in drifted:
        head, numbers = line.split(": ", 1)
        stat, value, op, threshold = numbers.split(" (")[0].split()
        assert head.split()[5] in ("feature", "output") and stat in ("psi", "ks") and op == ">"
        assert float(value) > float(threshold) > 0

    # the webhook on loopback got the Slack-compatible alert
    [body] = hook.bodies
    assert body["text"].startswith(f"kairos monitor: {len(lines)} alert(s) on {NAME} v1 (worst: critical)")
    assert all(line in body["text"] for line in drifted[:3])
    assert [b["type"] for b in body["blocks"]][:2] == ["header", "section"]
    assert "webhook: delivered (HTTP 200)" in res.output

    # drift on valid data started daily_retrain; its challenger v2 went through the gates (flows/promote.py)
    assert "data_validation" in res.output and "retrain: started — retrained v2; gates: " in res.output, (
        res.output
    )
    client = Runtime.from_env().mlflow
    mv = client.get_model_version(NAME, "2")
    verdict = mv.tags["promotion.decision"]  # written by the gates, promoted or not
    assert verdict in ("promote", "keep")
    assert ("gates: PROMOTED" if verdict == "promote" else "gates: KEPT champion") in res.output
    exp = client.get_experiment_by_name(MONITOR_EXPERIMENT)
    [run] = client.search_runs([exp.experiment_id], "tags.`monitor.retrain_started` = 'true'")
    assert run.data.tags["monitor.retrain_started"] == "true" and run.data.tags["monitor.alerts"] == str(
        len(lines)
    )
    assert run.data.tags["monitor.retrain"].startswith("retrained v2; gates:")
    assert last_retrain_ms(client, NAME) == int(
        pd.Timestamp(world["now"]).value // 1_000_000
    )  # the cooldown's clock
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "monitor")}
    assert {"monitor/report.html", "monitor/drift.png", "monitor/live_performance.png"} <= arts

    # the decision, promoted or not, shows in `kairos history` with its numbers
    res = kairos("history", "--model", NAME)
    assert res.exit_code == 0, res.output
    assert "promotion decisions" in res.output
    [row] = [line for line in res.output.splitlines() if "│ v2 " in line and "│ v1 " in line]
    assert f" {verdict} " in row, row
    assert mv.tags["promotion.reason"][:25] in " ".join(res.output.split())


def test_prefect_yaml_schedules_the_monitor_hourly():
    import inspect

    from flows.monitor import monitor

    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    d = deployments["monitor"]
    assert d["entrypoint"] == "flows/monitor.py:monitor"
    [s] = d["schedules"]
    assert s["cron"].endswith("* * * *") and s["cron"].split()[1] == "*" and s["active"]  # every hour
    assert set(d["parameters"]) <= set(inspect.signature(monitor.fn).parameters)
    json.dumps(d["parameters"])  # Prefect parameters are JSON
