"""Acceptance (issue 7): shadow serving on replayed real FILUSDT candles with two registered versions →
`kairos review` (the Prefect `ab_review` flow) → report + figures in MLflow → the policy's decision
applied to `champion` and recorded → `kairos rollback` restores the previous champion.

The two versions are real ONNX bundles in the registry: v1 "persistence" predicts the last 1-minute
log return, v2 "reversal" its negative. On real minute candles bid-ask bounce makes the reversal
rule clearly better (about 45% vs 36% direction accuracy here, zero calls count as misses), so the
default policy (min_samples 500, alpha 0.05, min lift 0.5 pp) must promote v2 from ~3,000 shadow
requests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from tests.conftest import FIL_FILES

NAME = "returns-FILUSDT-1m"
N_CANDLES = 3600  # 554 warm-up + ~3,000 predictions: a few seconds of replay


def one_feature_bundle(directory: Path, feature: str, weight: float) -> Path:
    """Bundle whose every horizon predicts `weight * <feature>` (a real ONNX graph, core27 input)."""
    from onnx import TensorProto, helper, numpy_helper

    from pipelines.contracts.bundle import write_bundle
    from tests.fixtures.bundles import HORIZONS, feature_spec, make_manifest

    fs = feature_spec("core27")
    W = np.zeros((len(fs.names), len(HORIZONS)), dtype=np.float32)
    W[list(fs.names).index(feature), :] = weight
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["returns"])],
        "one_feature",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(fs.names)])],
        [helper.make_tensor_value_info("returns", TensorProto.FLOAT, [None, len(HORIZONS)])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="kairos-test")
    model.ir_version = 8
    return write_bundle(directory, model.SerializeToString(), make_manifest(fs, "FILUSDT", "1m", "linear"))


def register_version(client, bundle_dir: Path, name: str = NAME) -> str:
    from registry.client import ensure_experiment

    run = client.create_run(ensure_experiment(client, "kairos-training"))
    client.log_artifacts(run.info.run_id, str(bundle_dir), "bundle")
    client.set_terminated(run.info.run_id)
    return str(
        client.create_model_version(name, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id).version
    )


@pytest.fixture(scope="module")
def harness():
    from flows.runtime import quiet_third_parties

    quiet_third_parties()  # no telemetry calls from the temporary server (no network here)
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def candles(shared_data):
    from pipelines.sources.binance_files import read_klines

    return read_klines(FIL_FILES[0], "FILUSDT").iloc[:N_CANDLES].reset_index(drop=True)


def test_shadow_review_promotes_then_rollback_restores(kairos_home, harness, candles, tmp_path, monkeypatch):

    from flows.cli import app
    from flows.review import served_history
    from flows.runtime import Runtime

    # This test is about the review's mechanics. v2 (-log_return_1m, zero calls on flat candles count as
    # misses) is far better than v1 but 10 pp below the naive reversal rule (which carries the last
    # non-zero move), so the shipped policy (require_beats_baselines: true) rightly refuses it: off here.
    from pipelines.contracts.settings import get_settings
    from registry.bundles import download_bundle
    from registry.history import history
    from registry.promotion import current_aliases, set_alias
    from registry.reviews import REVIEW_EXPERIMENT
    from serving.config import RoutingConfig, RuntimeConfig
    from serving.predictor import Predictor
    from serving.predlog import PredictionLog
    from serving.runtime import load_model
    from tests.fixtures.bundles import candle_records
    from tests.fixtures.flow_helpers import write_small_configs

    configs = write_small_configs(tmp_path / "configs")
    policy = configs / "promotion.yaml"
    policy.write_text(
        policy.read_text().replace("require_beats_baselines: true", "require_beats_baselines: false")
    )
    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(configs))
    get_settings.cache_clear()
    rt = Runtime.from_env()
    client = rt.mlflow
    assert rt.store().upsert(candles) == N_CANDLES
    client.create_registered_model(NAME)
    v1 = register_version(client, one_feature_bundle(tmp_path / "persistence", "log_return_1m", 1.0))
    v2 = register_version(client, one_feature_bundle(tmp_path / "reversal", "log_return_1m", -1.0))
    set_alias(client, NAME, "champion", v1, reason="first version", actor="test")
    set_alias(client, NAME, "challenger", v2, reason="new version", actor="test")

    # serving: both arms from the registry, shadow mode, every request logged for both arms
    rtc = RuntimeConfig(warmup_runs=2)
    champ = load_model(download_bundle(client, NAME, alias="champion", dst=tmp_path / "dl1"), rtc, version=v1)
    chall = load_model(
        download_bundle(client, NAME, alias="challenger", dst=tmp_path / "dl2"), rtc, version=v2
    )
    predlog_dir = kairos_home / "predictions"  # serving's default directory
    log = PredictionLog(predlog_dir, flush_every=512).start()
    pred = Predictor(champ, chall, RoutingConfig(mode="shadow"), log=log)
    served = [p for r in candle_records(candles) if (p := pred.update(r)) is not None]
    log.close()
    assert len(served) > 2900 and {p.arm for p in served} == {"champion"} and log.written == 2 * len(served)

    runner = CliRunner()
    res = runner.invoke(app, ["review", "--model", NAME])
    assert res.exit_code == 0, res.output
    assert "PROMOTE" in res.output and "report:" in res.output, res.output

    # the policy's decision was applied to the alias and recorded
    assert current_aliases(client, NAME) == {"champion": v2}  # challenger cleared: no self-vs-self split
    moves = history(client, NAME)
    promo = [m for m in moves if m.alias == "champion" and m.to_version == v2]
    assert len(promo) == 1 and promo[0].from_version == v1 and promo[0].actor.startswith("cli:")
    assert "A/B review" in promo[0].reason and "challenger better at h1" in promo[0].reason

    # the review run: report + figures + metrics in MLflow, experiment kairos-reviews
    exp = client.get_experiment_by_name(REVIEW_EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    files = {f.path for f in client.list_artifacts(run.info.run_id, "review")}
    assert {
        "review/report.html",
        "review/cumulative_loss_difference.png",
        "review/accuracy_over_time.png",
        "review/pnl_curves.png",
    } <= files
    m = run.data.metrics
    assert m["h1.seq.p_value"] < 0.05 and m["h1.accuracy_lift_pp"] > 5 and m["decision.promote"] == 1.0
    assert (
        m["outcomes.resolved"] > 5 * 2900 * 2 * 0.99 and m["outcomes.pending"] > 0
    )  # last candles: not yet known
    assert m["h1.champion.n"] == m["h1.challenger.n"] > 2900  # paired on request id
    assert run.data.tags["review.alias_moves"] != "none"
    report = Path(run.info.artifact_uri.removeprefix("file://")) / "review" / "report.html"
    assert report.exists() and "challenger better" in report.read_text()
    local = sorted((kairos_home / "reviews" / NAME).glob("*/report.html"))
    assert len(local) == 1

    # rollback in one command puts v1 back, recorded
    res = runner.invoke(app, ["rollback", "--model", NAME, "--reason", "test rollback"])
    assert res.exit_code == 0, res.output
    assert current_aliases(client, NAME)["champion"] == v1
    last = history(client, NAME, "champion")[-1]
    assert (last.from_version, last.to_version, last.reason) == (v2, v1, "test rollback")

    # nothing left to review: no challenger
    res = runner.invoke(app, ["review", "--model", NAME])
    assert res.exit_code == 0 and "nothing to review" in " ".join(res.output.split())

    # which version served when, with its live metrics
    hist = served_history(client, NAME, predlog_dir, rt.store())
    assert list(hist["version"]) == [v1, v2, v1]
    first = hist.iloc[0]
    assert first["requests"] == len(served) and hist["requests"].iloc[1:].eq(0).all()
    assert first["accuracy"] == pytest.approx(m["h1.champion.accuracy"], abs=1e-12)
    assert first["accuracy_ci_low"] < first["accuracy"] < first["accuracy_ci_high"]
