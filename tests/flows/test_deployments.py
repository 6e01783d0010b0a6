"""prefect.yaml deploys to a real Prefect server (the test harness's) with the schedules it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_prefect_yaml_deploys_daily_retrain_and_hourly_review(harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="kairos", type="process"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        KAIROS_REPO=str(REPO),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("daily_retrain/daily-retrain")
        review = client.read_deployment_by_name("ab_review/ab-review")
    assert daily.entrypoint == "flows/retrain.py:daily_retrain"
    assert daily.work_pool_name == "kairos"
    [sched] = daily.schedules
    assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 3 * * *", "UTC", True)
    assert daily.parameters["symbol"] == "SYNTHUSDT"
    [hourly] = review.schedules
    assert (hourly.schedule.cron, hourly.schedule.timezone) == ("0 * * * *", "UTC")
