"""`retrain_universe` and `kairos retrain --symbols`: bad universes fail before anything starts.

The fan-out itself runs against real servers in tests/e2e/test_scale_out.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipelines.contracts.errors import KairosError
from tests.conftest import FIL_FILES, REPO


@pytest.mark.parametrize(
    ("symbols", "per_symbol", "needle"),
    [
        ([], {}, "no symbols"),
        (["FILUSDT", "FILUSDT"], {}, "listed twice: ['FILUSDT']"),
        (["FILUSDT"], {"NEARUSDT": {"source": "synthetic"}}, "not in the universe: ['NEARUSDT']"),
        (["FILUSDT"], {"FILUSDT": {"model_type": "tft"}}, "unknown keys ['model_type']"),
    ],
)
def test_bad_universe_is_refused_with_the_reason(symbols, per_symbol, needle):
    from flows.fanout import _check_universe

    with pytest.raises(KairosError) as e:
        _check_universe(symbols, per_symbol)
    assert needle in str(e.value)


def test_cli_symbols_need_a_file_each(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env["KAIROS_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "retrain", "--symbols", "FILUSDT,NEARUSDT"]
        + ["--source", "binance-files", "--path", str(FIL_FILES[0])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    [line] = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert "no --path file for NEARUSDT" in line, line
