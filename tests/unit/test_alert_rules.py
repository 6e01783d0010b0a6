"""The shipped alerting: Prometheus rules pass promtool (check + unit tests), every metric the rules and the
Grafana dashboard read is one serving exports, and configs/monitoring.yaml parses into its typed config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

RULES = REPO / "configs" / "prometheus" / "kairos-alerts.yml"
RULE_TESTS = REPO / "configs" / "prometheus" / "kairos-alerts.test.yml"
DASHBOARD = REPO / "configs" / "grafana" / "kairos-serving.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian/Ubuntu: apt-get install prometheus; CI installs it)",
)
# series names in PromQL: every kairos_* identifier (functions and labels never start with kairos_)
_METRIC = re.compile(r"\b(kairos_[a-z0-9_]+)\b")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_checks_the_shipped_rules():
    proc = _promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len([r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]])
    assert f"SUCCESS: {n} rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass_and_can_fail(tmp_path):
    proc = _promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the same tests with one expectation wrong must fail: the unit tests do look at the alerts
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text().replace("for 12m 0s", "for 11m 0s"))
    bad = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "KairosPredictionsStale" in bad.stdout + bad.stderr


def _exported_names() -> set[str]:
    """Every series name a serving process exports (its own registry, drift/live collector included)."""
    from serving.metrics import ServingMetrics

    m = ServingMetrics(1000.0)
    m.watch_models(lambda: [])
    names = set()
    for fam in m.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(fam.type, ("",))
        names |= {fam.name + s for s in suffixes}
    return names


def test_rules_and_dashboard_read_only_metrics_serving_exports():
    exported = _exported_names()
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = {name: r["alert"] for r in rules for name in _METRIC.findall(r["expr"])}
    dash = json.loads(DASHBOARD.read_text())
    used |= {
        name: p["title"] for p in dash["panels"] for t in p["targets"] for name in _METRIC.findall(t["expr"])
    }
    unknown = {n: where for n, where in used.items() if n not in exported}
    assert not unknown, f"not exported by serving: {unknown}"
    # the drift and live gauges of issue 14 are among what the rules watch
    assert {"kairos_drift_alarm", "kairos_last_prediction_timestamp_seconds"} <= set(used)
    assert "kairos_latency_budget_violations_total" in used


def test_every_rule_has_a_known_severity_and_a_summary():
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("info", "warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_dashboard_is_valid_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "kairos-serving" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "model"}


def test_monitoring_yaml_parses_with_every_rule():
    from pipelines.config import DEFAULT_LATENCY_BUDGET_US, load_monitoring_config

    cfg = load_monitoring_config(REPO / "configs")
    raw = yaml.safe_load((REPO / "configs" / "monitoring.yaml").read_text())
    assert set(raw["rules"]) == set(type(cfg.rules).model_fields)  # every rule named in the shipped file
    assert cfg.live_window == 24 * 3600
    assert cfg.rules.prediction_staleness.threshold == 600
    assert cfg.rules.latency_budget.for_ == 3600
    assert cfg.rules.drift.severity == "critical"
    assert cfg.sinks.webhook.url_env == "KAIROS_ALERT_WEBHOOK"
    serving = yaml.safe_load((REPO / "configs" / "serving.yaml").read_text()).get("monitoring") or {}
    budget = serving.get("latency_budget_us", DEFAULT_LATENCY_BUDGET_US)
    assert (
        cfg.rules.latency_budget.budget_us == budget
    )  # one budget: serving's, unless monitoring.yaml sets one


def test_monitoring_config_errors_name_the_field(tmp_path):
    from pipelines.config import duration_seconds, load_monitoring_config
    from pipelines.contracts.errors import ConfigError

    (tmp_path / "monitoring.yaml").write_text("rules: {data_staleness: {threshold: soon}}\n")
    with pytest.raises(ConfigError, match=r"rules\.data_staleness\.threshold.*soon.*24h"):
        load_monitoring_config(tmp_path)
    (tmp_path / "monitoring.yaml").write_text("rules: {drift: {severity: loud}}\n")
    with pytest.raises(ConfigError, match=r"rules\.drift\.severity"):
        load_monitoring_config(tmp_path)
    assert load_monitoring_config(tmp_path / "none").live_window == 86400  # no file: the defaults
    (tmp_path / "serving.yaml").write_text("monitoring: {latency_budget_us: 3000}\n")
    (tmp_path / "monitoring.yaml").write_text("rules: {latency_budget: {threshold: 5}}\n")
    assert load_monitoring_config(tmp_path).rules.latency_budget.budget_us == 3000  # serving's budget
    (tmp_path / "monitoring.yaml").write_text("rules: {latency_budget: {budget_us: 250, for: 2h}}\n")
    rule = load_monitoring_config(tmp_path).rules.latency_budget
    assert (rule.budget_us, rule.for_, rule.threshold) == (250, 7200, 60)
    assert [duration_seconds(x) for x in ("90s", "10m", "24h", "2d", 30)] == [90, 600, 86400, 172800, 30]
    with pytest.raises(ValueError, match="positive"):
        duration_seconds("0m")
