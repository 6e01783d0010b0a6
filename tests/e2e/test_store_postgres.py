"""The candle store on PostgreSQL selected by configuration (KAIROS_STORE_URL), with writer processes.

Two processes, each opening the store as every flow does (`Runtime.from_env().store()`), write overlapping
months of real FILUSDT candles into one PostgreSQL store at the same time; `kairos data status` then reads
it. No row is lost or doubled, and the stored series hashes like the files themselves (as DuckDB's does).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import FIL_FILES, REPO
from tests.fixtures.postgres import new_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

_WRITER = """
import sys
from flows.runtime import Runtime
from pipelines.sources import binance_files
store = Runtime.from_env().store()
print(type(store).__name__, store.upsert(binance_files.read_many(sys.argv[1:], 'FILUSDT', '1m')))
"""


def test_writer_processes_share_one_postgres_store(postgres_server, kairos_home, monkeypatch, shared_data):
    from typer.testing import CliRunner

    from flows.cli import app
    from pipelines.contracts.settings import get_settings
    from pipelines.sources import binance_files
    from pipelines.store import candles_hash, open_store

    url = new_database(postgres_server, "e2e_store")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "MLFLOW_"))}
    env.update(KAIROS_HOME=str(kairos_home), KAIROS_STORE_URL=url)
    months = [FIL_FILES[:1], FIL_FILES[:2]]  # both write August: the same keys at the same time
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, *map(str, files)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for files in months
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    added = [int(o.split()[-1]) for o in outs]
    assert all(o.startswith("PostgresCandleStore") for o in outs), outs
    assert sum(added) == 31 * 1440 + 30 * 1440  # whoever came second added only what was new

    monkeypatch.setenv("KAIROS_STORE_URL", url)
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["data", "status"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "87,840" in res.output and "PostgresCandleStore('postgresql://postgres@" in res.output, res.output
    assert not (kairos_home / "candles.duckdb").exists()  # the URL, not the default file, was used

    store = open_store(url)
    st = store.status().iloc[0]
    assert (st["candles"], st["gaps"], st["missing"]) == (87_840, 0, 0)
    want = candles_hash(binance_files.read_many(FIL_FILES[:2], "FILUSDT", "1m"))
    assert store.data_hash("FILUSDT", "1m") == want
