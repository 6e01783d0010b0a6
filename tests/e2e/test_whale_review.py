"""The A/B review of two whale versions (issue 13, item 8): a pooled detector over two real pump windows
served in shadow (one universe model, two symbols in one prediction log), outcomes realised from the
stored trade minutes symbol by symbol, compared by the task's loss (Brier), decided by the policy.

v1 (champion) is the real detector with its calibration replaced by a constant 0.3 probability (a badly
calibrated model: Brier ~0.09); v2 (challenger) is the detector itself (Brier ~0.01). The review must
promote v2 and record the move."""

from __future__ import annotations

import copy

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from tests.conftest import REPO

pytestmark = pytest.mark.slow
NAME = "whale-PUMPS-1m"
TRAIN = [
    "ARN_2020-04-07_18.00.zip", "BNT_2020-04-24_15.59.zip", "GRS_2020-04-02_16.00.zip",
    "GVT_2020-04-15_15.57.zip", "RDN_2020-02-01_13.00.zip", "PPT_2020-06-08_16.06.zip",
]  # fmt: skip
SERVED = ["BRD_2021-02-24_17.00.zip", "SNM_2021-11-20_17.01.zip"]


@pytest.fixture(scope="module")
def harness():
    from flows.runtime import quiet_third_parties

    quiet_third_parties()
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_two_whale_versions_are_reviewed_by_brier(kairos_home, harness, shared_data, tmp_path, monkeypatch):
    import numpy as np

    from flows.cli import app
    from flows.runtime import Runtime
    from pipelines.config import load_training_config
    from pipelines.contracts.bundle import write_bundle
    from pipelines.contracts.schema import CANDLE_COLUMNS

    # The review's mechanics across a universe log. On these two served pump windows the detector's Brier
    # is 0.0105 above the naive return-spike rule's (measured), so the shipped policy
    # (require_beats_baselines: true) rightly keeps the champion: off here.
    from pipelines.contracts.settings import get_settings
    from pipelines.sources.trades import MINUTE_COLUMNS
    from pipelines.tasks import load_task
    from pipelines.training.pooled import segments_from_trade_files, train_pooled
    from registry.bundles import download_bundle
    from registry.history import history
    from registry.promotion import current_aliases, set_alias
    from serving.config import RoutingConfig, RuntimeConfig
    from serving.predictor import Predictor
    from serving.predlog import PredictionLog
    from serving.runtime import load_model
    from tests.e2e.test_review_e2e import register_version
    from tests.fixtures.bundles import candle_records
    from tests.fixtures.flow_helpers import write_small_configs

    configs = write_small_configs(tmp_path / "configs")
    policy = configs / "promotion.yaml"
    policy.write_text(
        policy.read_text().replace("require_beats_baselines: true", "require_beats_baselines: false")
    )
    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(configs))
    get_settings.cache_clear()

    pumps = shared_data / "pumps"
    cfg = load_training_config(REPO / "configs", None, "whale")
    task = load_task(REPO / "configs", "whale", cfg.labels.horizons)
    segs = segments_from_trade_files([pumps / f for f in TRAIN], pumps / "events.csv")
    good = train_pooled(segs, universe="PUMPS", interval="1m", cfg=cfg, task=task, test_segments=2)
    served = segments_from_trade_files([pumps / f for f in SERVED], pumps / "events.csv")
    manifest = copy.deepcopy(good.manifest)
    manifest.extra["universe"]["symbols"] = sorted({s.symbol for s in served})
    manifest.extra["below_baselines"] = {}  # serve both arms whatever six windows scored
    bad_model = copy.deepcopy(good.model)
    bad_model.platt_ = (0.0, float(np.log(0.3 / 0.7)))  # a constant 0.3
    v1_dir = write_bundle(tmp_path / "v1", bad_model.to_onnx(), manifest)
    v2_dir = write_bundle(tmp_path / "v2", good.onnx_bytes, manifest)

    rt = Runtime.from_env()
    store, client = rt.store(), rt.mlflow
    for seg in served:  # what `kairos ingest trades` stores
        store.upsert(seg.frame[[c for c in CANDLE_COLUMNS if c in seg.frame]])
        store.upsert_trade_minutes(seg.symbol, "1m", seg.frame[MINUTE_COLUMNS])
    client.create_registered_model(NAME)
    v1, v2 = register_version(client, v1_dir, NAME), register_version(client, v2_dir, NAME)
    set_alias(client, NAME, "champion", v1, reason="first version", actor="test")
    set_alias(client, NAME, "challenger", v2, reason="new version", actor="test")

    rtc = RuntimeConfig(warmup_runs=2, withhold_below_baselines=False)
    champ = load_model(download_bundle(client, NAME, alias="champion", dst=tmp_path / "d1"), rtc, version=v1)
    chall = load_model(
        download_bundle(client, NAME, alias="challenger", dst=tmp_path / "d2"), rtc, version=v2
    )
    log = PredictionLog(kairos_home / "predictions", flush_every=512).start()
    pred = Predictor(champ, chall, RoutingConfig(mode="shadow"), log=log)
    n = 0
    for seg in served:
        for r in candle_records(seg.frame[[c for c in CANDLE_COLUMNS if c in seg.frame]]):
            n += pred.update(r) is not None
    log.close()
    assert n > 10_000 and log.written == 2 * n

    res = CliRunner().invoke(app, ["review", "--model", NAME])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "PROMOTE" in out and "brier" in out, res.output
    assert current_aliases(client, NAME) == {"champion": v2}
    promo = [m for m in history(client, NAME) if m.alias == "champion" and m.to_version == v2]
    assert len(promo) == 1 and "A/B review" in promo[0].reason
