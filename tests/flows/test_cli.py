"""The `kairos` command line as a user runs it: help everywhere, one-line errors, real data, the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.conftest import FIL_FILES, REPO
from tests.fixtures.flow_helpers import write_small_configs

KAIROS = [sys.executable, "-m", "flows.cli"]


def run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(KAIROS + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(
        KAIROS_HOME=str(tmp_path / "home"),
        KAIROS_CONFIGS_DIR=str(write_small_configs(tmp_path / "configs")),
        COLUMNS="200",
    )
    return env


def test_every_command_has_help():
    from flows.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    commands = [
        "demo",
        "train",
        "promote",
        "retrain",
        "history",
        "serve",
        "tune",
        "review",
        "rollback",
        "ingest binance-files",
        "ingest synthetic",
        "ingest ccxt",
        "data status",
    ]
    for cmd in commands:
        res = runner.invoke(app, cmd.split() + ["--help"])
        assert res.exit_code == 0, (cmd, res.output)
        assert "Usage" in res.output, cmd


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for n in needles:
        assert n in errors[0], errors[0]


def test_bad_input_ends_with_one_line_error(cli_env, tmp_path):
    _one_line_error(
        run(["ingest", "binance-files", str(tmp_path / "nope.zip"), "--symbol", "FILUSDT"], cli_env),
        "nope.zip",
    )
    corrupt = tmp_path / "FILUSDT-1m-corrupt.csv"
    corrupt.write_text("open_time,open,high\n1690848000000,4.2,4.3\n")
    _one_line_error(
        run(["ingest", "binance-files", str(corrupt), "--symbol", "FILUSDT"], cli_env), corrupt.name
    )
    _one_line_error(run(["train", "--symbol", "NOPEUSDT"], cli_env), "NOPEUSDT")
    _one_line_error(run(["ingest", "synthetic", "--symbol", "BTCUSDT", "--days", "1"], cli_env), "SYNTH")


@pytest.mark.slow
def test_real_files_ingest_status_and_reingest(cli_env):
    files = [str(p) for p in FIL_FILES]
    first = run(["ingest", "binance-files", *files, "--symbol", "FILUSDT"], cli_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "175,680 added" in first.stdout, first.stdout
    status = run(["data", "status"], cli_env)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if "FILUSDT" in line)
    cells = [c.strip() for c in re.split(r"[│|]", row) if c.strip()]
    assert "175,680" in cells and cells[cells.index("175,680") + 1] == "0", row  # candles, then gaps
    again = run(["ingest", "binance-files", *files, "--symbol", "FILUSDT"], cli_env)
    assert again.returncode == 0 and "0 added" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_demo_runs_the_loop_three_times(cli_env):
    """Run 1 a champion that learns the planted signal, run 2 a challenger with a real edge (promoted),
    run 3 one different by noise only (refused, with its p-value); every decision in `kairos history`."""
    proc = run(["demo", "--days", "5"], cli_env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert out.count("registered returns-SYNTHUSDT-1m version") == 3, out
    flat = " ".join(out.split())
    assert "promotion decision: PROMOTE" in flat and "promotion decision: KEEP CHAMPION" in flat, out
    assert "not significant at alpha 0.05 (p=" in flat and "promotion gates" in flat
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert "SYNTHETIC" in out

    hist = run(["history", "--symbol", "SYNTHUSDT"], cli_env)
    assert hist.returncode == 0, hist.stdout + hist.stderr
    rows = [line for line in hist.stdout.splitlines() if "kairos-train" in line or "kairos-promote" in line]
    assert any("champion" in r and "first version" in r for r in rows), hist.stdout  # v1 → champion
    assert any("challenger" in r for r in rows), hist.stdout  # v2 → challenger
    assert "which version served as champion when" in hist.stdout
    assert "promotion decisions" in hist.stdout and "v3 [daily] keep:" in hist.stdout  # the refused one
