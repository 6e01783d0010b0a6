"""The promotion gates end to end, with `require_beats_baselines: true` (the shipped default), as Prefect
flows under `prefect_test_harness` on real components (DuckDB store, LightGBM, onnxruntime, MLflow on
SQLite, the serving predictor writing the prediction log):

- the daily loop twice on the demo's planted signal (`kairos demo`): a first version that learns it, then
  a challenger trained after the market changed (a real edge) that the gates promote; (the demo's third
  run, a challenger different by noise only and refused, is tests/flows/test_cli.py's; the refusal of
  noise at scale is tests/unit/test_gates.py's);
- the A/B review: a challenger better than the champion but no better than a naive rule is refused by the
  baseline gate; one that beats both is promoted; both decisions are recorded, and `kairos history` lists
  the refused one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from tests.fixtures.flow_helpers import write_small_configs

MODEL = "returns-SYNTHUSDT-1m"


@pytest.fixture(scope="module")
def harness():
    from flows.runtime import quiet_third_parties

    quiet_third_parties()
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def small(kairos_home, tmp_path, monkeypatch):
    from pipelines.contracts.settings import get_settings

    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(write_small_configs(tmp_path / "configs")))
    monkeypatch.setenv("COLUMNS", "250")
    get_settings.cache_clear()
    return kairos_home


def test_daily_loop_promotes_a_challenger_with_a_real_edge(small, harness):
    """The demo's market (`kairos demo --days 5` with these configs): a first version learns the order-flow
    signal; the market changes the next day, and the challenger trained after it passes every gate."""
    from flows.retrain import daily_retrain
    from flows.runtime import Runtime
    from pipelines.sources.synthetic import DEMO_SIGNAL
    from registry.decisions import decisions
    from registry.promotion import current_aliases

    assert Runtime.from_env().policy("returns").require_beats_baselines  # the shipped default
    opts = {"params": {**DEMO_SIGNAL, "change_from": "2024-01-06"}}
    out1 = daily_retrain("SYNTHUSDT", "1m", "synthetic", {"days": 5, **opts}, "lightgbm")
    first = out1["promote"]["first_version"]  # made champion at registration: recorded with its numbers
    assert first.promote and first.baseline_test.diff > 0 and first.failed_gates == ()
    out2 = daily_retrain("SYNTHUSDT", "1m", "synthetic", {"days": 3, **opts}, "lightgbm")
    d, cmp = out2["promote"]["decision"], out2["promote"]["comparison"]
    assert d.promote, d.reason
    assert cmp.test.p_value < 0.05 and cmp.test.ci_low > 0 and d.lift >= 0.005  # gate (a)
    assert cmp.baseline_test.diff > 0 and "beats best baseline" in d.reason  # gate (b)
    assert f"p={d.p_value:.2g}" in d.reason
    client = Runtime.from_env().mlflow
    assert current_aliases(client, MODEL) == {"champion": "2"}
    recs = decisions(client, MODEL)
    assert [(r.version, r.champion_version, r.source, r.decision) for r in recs] == [
        ("1", None, "first-version", "promote"),
        ("2", "1", "daily", "promote"),
    ]
    assert recs[1].metrics["test.p_value"] == d.p_value and recs[1].metrics["rows"] == cmp.rows
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["promotion.decision"] == "promote" and tags["promotion.record"] == recs[1].record_id


def _bundle(directory, weight: float, bias: float):
    """A real ONNX bundle predicting `weight * taker_buy_ratio + bias` at every horizon (core27 input)."""
    from onnx import TensorProto, helper, numpy_helper

    from pipelines.contracts.bundle import write_bundle
    from tests.fixtures.bundles import HORIZONS, feature_spec, make_manifest

    fs = feature_spec("core27")
    W = np.zeros((len(fs.names), len(HORIZONS)), dtype=np.float32)
    W[list(fs.names).index("taker_buy_ratio"), :] = weight
    b = np.full(len(HORIZONS), bias, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["returns"]),
        ],
        "flow_rule",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(fs.names)])],
        [helper.make_tensor_value_info("returns", TensorProto.FLOAT, [None, len(HORIZONS)])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="kairos-test")
    model.ir_version = 8
    return write_bundle(directory, model.SerializeToString(), make_manifest(fs, "SYNTHUSDT", "1m", "linear"))


def _serve(client, candles, champion: str, challenger: str, predlog_dir, tmp_path) -> int:
    """Shadow-serve every candle with the registry's champion and challenger; both logged per request."""
    from registry.bundles import download_bundle
    from serving.config import RoutingConfig, RuntimeConfig
    from serving.predictor import Predictor
    from serving.predlog import PredictionLog
    from serving.runtime import load_model
    from tests.fixtures.bundles import candle_records

    rtc = RuntimeConfig(warmup_runs=1)
    arms = [
        load_model(
            download_bundle(client, MODEL, version=v, dst=tmp_path / f"dl-{v}-{challenger}"), rtc, version=v
        )
        for v in (champion, challenger)
    ]
    log = PredictionLog(predlog_dir, flush_every=512).start()
    pred = Predictor(*arms, RoutingConfig(mode="shadow"), log=log)
    served = sum(pred.update(r) is not None for r in candle_records(candles))
    log.close()
    return served


def test_review_requires_beating_the_best_naive_baseline(kairos_home, harness, tmp_path, monkeypatch):
    from flows.cli import app
    from flows.review import ab_review
    from flows.runtime import Runtime
    from pipelines.sources.synthetic import DEMO_SIGNAL, SynthParams, generate
    from registry.decisions import decisions
    from registry.promotion import current_aliases, set_alias
    from tests.e2e.test_review_e2e import register_version

    monkeypatch.setenv("COLUMNS", "250")
    rt = Runtime.from_env()
    assert rt.policy("returns").require_beats_baselines
    candles = generate(n=2400, params=SynthParams(flow_kappa=DEMO_SIGNAL["flow_kappa"]))
    rt.store().upsert(candles)
    client = rt.mlflow
    client.create_registered_model(MODEL)
    # v1 trades against the order flow (~43 %), v2 always calls up (~50 %: exactly the always-up rule),
    # v3 trades with the order flow (~57 %)
    v1 = register_version(client, _bundle(tmp_path / "anti", -1.0, 0.5), MODEL)
    v2 = register_version(client, _bundle(tmp_path / "up", 0.0, 1e-3), MODEL)
    v3 = register_version(client, _bundle(tmp_path / "flow", 1.0, -0.5), MODEL)
    set_alias(client, MODEL, "champion", v1, reason="first version", actor="test")
    set_alias(client, MODEL, "challenger", v2, reason="new version", actor="test")
    predlog = kairos_home / "predictions"
    assert _serve(client, candles, v1, v2, predlog, tmp_path) > 1500

    out = ab_review(MODEL, str(predlog), actor="test-review")
    d = out["decision"]
    assert d.verdict == "challenger better" and d.lift > 0.03  # better than the champion, significantly ...
    assert not d.promote and d.failed_gates == ("beats_baselines",)  # ... but no better than a free rule
    assert d.baseline_test.diff <= 0 and "does not beat the best naive baseline" in d.reason
    assert current_aliases(client, MODEL) == {"champion": v1, "challenger": v2}

    set_alias(client, MODEL, "challenger", v3, reason="flow rule", actor="test")
    _serve(client, candles, v1, v3, predlog, tmp_path)
    out = ab_review(MODEL, str(predlog), actor="test-review")
    d = out["decision"]
    assert d.promote, d.reason
    assert (
        d.baseline_test.diff > 0.03 and d.baseline_test.p_value < 0.05 and "beats best baseline" in d.reason
    )
    assert current_aliases(client, MODEL) == {"champion": v3}

    recs = decisions(client, MODEL)
    assert [(r.version, r.champion_version, r.source, r.decision) for r in recs] == [
        (v2, v1, "review", "keep"),
        (v3, v1, "review", "promote"),
    ]
    assert recs[0].failed_gates == "beats_baselines" and recs[0].params["review_run"] != "none"
    assert recs[1].metrics["test.p_value"] < 0.05 and recs[1].metrics["baseline_test.p_value"] < 0.05

    # `kairos history` lists every decision, the refused one too (it moved no alias)
    res = CliRunner().invoke(app, ["history", "--model", MODEL])
    assert res.exit_code == 0, res.output
    assert "promotion decisions" in res.output
    refused = [line for line in res.output.splitlines() if re.search(rf"│ v{v2}\s+│ v{v1}\s+│ review", line)]
    assert len(refused) == 1 and "keep" in refused[0] and "beats_baselines" in refused[0], res.output
