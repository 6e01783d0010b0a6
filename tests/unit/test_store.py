"""The candle store on both backends (DuckDB file, PostgreSQL): idempotent upsert, replace-if-changed,
all-or-nothing transactions (also when the writer is killed), gap status, hashes identical across backends.

Every test takes `make_store`, parametrised over the backends; the PostgreSQL cases run on the session's
throw-away cluster (tests/fixtures/postgres.py), one fresh database per store, and are marked `postgres`.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from pipelines import store as store_mod
from pipelines import store_postgres as pg_mod
from pipelines.contracts.errors import StoreError
from pipelines.sources import binance_files, synthetic
from pipelines.store import CandleStore, candles_hash, open_store
from pipelines.store_postgres import PostgresCandleStore
from tests.conftest import FIL_FILES, REPO
from tests.fixtures.postgres import new_database

BACKENDS = ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]


def _factory(backend: str, request, tmp_path_factory):
    if backend == "duckdb":
        root = tmp_path_factory.mktemp("store")
        return lambda name="candles": CandleStore(root / f"{name}.duckdb")
    server = request.getfixturevalue("postgres_server")
    return lambda name="candles": PostgresCandleStore(new_database(server, "store"))


@pytest.fixture(params=BACKENDS)
def make_store(request, tmp_path_factory):
    """name -> a fresh, empty store of the backend under test."""
    return _factory(request.param, request, tmp_path_factory)


def _module(s) -> object:
    """The module whose `_insert_new` / `_replace_changed` the store looks up at call time."""
    return pg_mod if isinstance(s, PostgresCandleStore) else store_mod


def _location(s) -> str:
    return s.url if isinstance(s, PostgresCandleStore) else str(s.path)


@pytest.fixture(scope="module")
def fil() -> pd.DataFrame:
    return binance_files.read_many(FIL_FILES, "FILUSDT", "1m")


@pytest.fixture(scope="module", params=BACKENDS)
def fil_store(request, tmp_path_factory, fil):
    s = _factory(request.param, request, tmp_path_factory)()
    assert s.upsert(fil) == 175_680
    return s


@pytest.fixture()
def small(make_store):
    df = synthetic.generate(n=3000)
    s = make_store("small")
    assert s.upsert(df) == 3000
    return s, df


def test_real_data_ingest_status_and_reingest(shared_data, fil_store, fil):
    assert fil_store.count("FILUSDT", "1m") == 175_680
    st = fil_store.status()
    assert len(st) == 1
    row = st.iloc[0]
    assert (row["symbol"], row["interval"]) == ("FILUSDT", "1m")
    assert row["first"] == pd.Timestamp("2023-08-01", tz="UTC")
    assert row["last"] == pd.Timestamp("2023-11-30 23:59", tz="UTC")
    assert (row["candles"], row["expected"], row["gaps"], row["missing"]) == (175_680, 175_680, 0, 0)
    assert row["longest_gap"] == pd.Timedelta(0)
    before = fil_store.data_hash("FILUSDT", "1m")
    assert fil_store.merge(fil) == store_mod.MergeResult(added=0, replaced=0)  # idempotent
    # the same hash on both backends: the frames round-trip bit for bit
    assert fil_store.data_hash("FILUSDT", "1m") == before == candles_hash(fil)
    assert fil_store.last_open_time("FILUSDT", "1m") == pd.Timestamp("2023-11-30 23:59", tz="UTC")


def test_load_round_trips_the_contract(fil_store, fil):
    start, end = pd.Timestamp("2023-09-30 23:00", tz="UTC"), pd.Timestamp("2023-10-01 01:00", tz="UTC")
    got = fil_store.load("FILUSDT", "1m", start, end)  # both ends inclusive
    want = fil[(fil["open_time"] >= start) & (fil["open_time"] <= end)].reset_index(drop=True)
    assert len(got) == 121
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert fil_store.data_hash("FILUSDT", "1m", start, end) == candles_hash(want)
    assert fil_store.load("FILUSDT", "5m").empty and fil_store.last_open_time("NOPE", "1m") is None


def test_gaps_are_counted_in_sql(make_store):
    df = synthetic.generate(n=1000)
    holed = df.drop(index=list(range(100, 110)) + [500, 501, 502]).reset_index(drop=True)  # 2 holes: 10 + 3
    s = make_store("gaps")
    s.upsert(holed)
    s.upsert(synthetic.generate(interval="1h", start="2024-01-01", n=48).drop(index=[10]))  # second series
    st = s.status().set_index(["symbol", "interval"])
    m = st.loc[("SYNTHUSDT", "1m")]
    assert (m["candles"], m["expected"], m["gaps"], m["missing"]) == (987, 1000, 2, 13)
    assert m["longest_gap"] == pd.Timedelta(minutes=10)
    h = st.loc[("SYNTHUSDT", "1h")]
    got = (h["candles"], h["expected"], h["gaps"], h["missing"], h["longest_gap"])
    assert got == (47, 48, 1, 1, pd.Timedelta(hours=1))
    assert s.symbols() == [("SYNTHUSDT", "1h"), ("SYNTHUSDT", "1m")]


def test_changed_rows_are_replaced_new_rows_added(small):
    s, df = small
    fixed = df.iloc[10:20].copy()
    fixed.loc[15, "close"] = fixed.loc[15, "close"] * 1.01
    fixed.loc[16, "spread_bps"] = 1.5  # NULL -> a value is a change too
    nxt = synthetic.generate_continuation(df, 5)
    assert s.merge(pd.concat([fixed, nxt])) == store_mod.MergeResult(added=5, replaced=2)
    got = s.load("SYNTHUSDT", "1m")
    assert len(got) == 3005 and got.loc[15, "close"] == fixed.loc[15, "close"]
    assert got.loc[16, "spread_bps"] == 1.5 and got["spread_bps"].drop(index=16).isna().all()
    assert got["open_time"].is_monotonic_increasing
    assert s.merge(pd.concat([fixed, nxt])) == store_mod.MergeResult(added=0, replaced=0)


def _snapshot(s) -> tuple[int, str]:
    return s.count("SYNTHUSDT", "1m"), s.data_hash("SYNTHUSDT", "1m")


def test_failure_mid_transaction_leaves_store_unchanged(small, monkeypatch):
    s, df = small
    before = _snapshot(s)
    changed = df.iloc[:100].assign(close=df["close"].iloc[:100] * 2)
    batch = pd.concat([changed, synthetic.generate_continuation(df, 50)])

    def boom(con):  # runs after the 50 new rows were inserted inside the transaction
        assert con.execute("SELECT count(*) FROM candles").fetchone()[0] == 3050
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(_module(s), "_replace_changed", boom)
    with pytest.raises(StoreError, match="rolled back, store unchanged: disk full"):
        s.upsert(batch)
    assert _snapshot(s) == before


def test_database_error_mid_transaction_rolls_back(small, monkeypatch):
    s, df = small
    before = _snapshot(s)
    # After the new rows are in, a statement violates the primary key inside the same transaction.
    dup_all = "INSERT INTO candles SELECT * FROM candles"
    monkeypatch.setattr(_module(s), "_replace_changed", lambda con: con.execute(dup_all))
    with pytest.raises(StoreError, match="rolled back.*(primary key|unique constraint)"):
        s.upsert(synthetic.generate_continuation(df, 50))
    assert _snapshot(s) == before


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: pd.concat([f, f.iloc[[-1]]]), "duplicate keys"),
        (lambda f: f.assign(open_time=f["open_time"].where(f.index < 40)), "empty key"),
        (lambda f: f.assign(interval="7m"), "unknown interval"),
        (lambda f: f.drop(columns=["volume"]), "candle contract"),
    ],
)
def test_unkeyable_frames_are_refused_before_writing(small, mutate, message):
    s, df = small
    before = _snapshot(s)
    batch = mutate(synthetic.generate_continuation(df, 50))
    with pytest.raises(StoreError, match=message):
        s.upsert(batch)
    assert _snapshot(s) == before


def test_missing_store_reads_empty_without_creating(make_store):
    s = make_store("none")
    assert s.load("SYNTHUSDT", "1m").empty and s.count("SYNTHUSDT", "1m") == 0
    assert s.symbols() == [] and s.status().empty and s.last_open_time("SYNTHUSDT", "1m") is None
    assert s.load_trade_minutes("SYNTHUSDT").empty
    assert not s._has_table("candles")  # reading created nothing (DuckDB: no file)
    assert s.upsert(synthetic.generate(n=0 + 5)) == 5 and s._has_table("candles")


def test_hash_ignores_order_and_sees_changes():
    df = synthetic.generate(n=300)
    assert candles_hash(df.sample(frac=1.0, random_state=1)) == candles_hash(df)
    changed = df.copy()
    changed.loc[7, "volume"] = np.nextafter(changed.loc[7, "volume"], np.inf)
    assert candles_hash(changed) != candles_hash(df)


# A writer that upserts a batch (100 changed + 50 new candles, pickled by the test) and is SIGKILLed inside
# the transaction, after the new rows were inserted: no half batch stays, and the next writer goes on
# (the DuckDB file lock and the PostgreSQL session die with the process).
_KILLED_WRITER = """
import os, signal, sys
import pandas as pd
from pipelines import store, store_postgres
def die(con):
    os.kill(os.getpid(), signal.SIGKILL)
store._replace_changed = store_postgres._replace_changed = die
store.open_store(sys.argv[1]).upsert(pd.read_pickle(sys.argv[2]))
print('not killed')
"""


def test_killed_writer_leaves_no_half_batch_and_the_next_writer_proceeds(small, tmp_path):
    s, df = small
    before = _snapshot(s)
    batch = pd.concat(
        [df.iloc[:100].assign(close=df["close"].iloc[:100] * 2), synthetic.generate_continuation(df, 50)]
    )
    batch.to_pickle(tmp_path / "batch.pkl")
    cmd = [sys.executable, "-c", _KILLED_WRITER, _location(s), str(tmp_path / "batch.pkl")]
    killed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert _snapshot(s) == before  # neither the 50 new rows nor the 100 changes
    assert s.merge(batch) == store_mod.MergeResult(added=50, replaced=100)
    assert s.count("SYNTHUSDT", "1m") == 3050
    assert s.last_open_time("SYNTHUSDT", "1m") == df["open_time"].iloc[-1] + pd.Timedelta(minutes=50)


@pytest.mark.postgres
def test_open_store_selects_the_backend(tmp_path, postgres_server):
    assert isinstance(open_store(tmp_path / "c.duckdb"), CandleStore)
    pg = open_store("postgresql://kairos:secret@db.example:5432/candles")
    assert isinstance(pg, PostgresCandleStore) and "secret" not in repr(pg)
    with pytest.raises(StoreError, match="unknown store URL 'mysql://u:\\*\\*\\*@h/db'"):
        open_store("mysql://u:pw@h/db")
    down = PostgresCandleStore(postgres_server.rsplit(":", 1)[0] + ":1/nothing", connect_timeout_s=1)
    with pytest.raises(StoreError, match="cannot connect to store") as err:
        down.count("SYNTHUSDT", "1m")
    assert err.value.transient


@pytest.mark.postgres
def test_postgres_many_writers_lose_no_update(postgres_server, caplog):
    """Eight writers at once into an empty database (they race to create the table), overlapping keys with
    different values: every merge is all-or-nothing, the added counts sum to the rows stored, and each row
    holds the values of exactly one writer's batch."""
    s = PostgresCandleStore(new_database(postgres_server, "writers"))
    base = synthetic.generate(n=600)
    batches = [base.iloc[50 * w : 50 * w + 200].assign(spread_bps=float(w + 1)) for w in range(8)]
    results, errors = [None] * 8, []

    def write(w: int) -> None:
        try:
            results[w] = s.merge(batches[w])
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    with caplog.at_level("INFO", logger="kairos.store"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert s.hypertable is False and "TimescaleDB not available" in caplog.text  # plain table here, logged
    got = s.load("SYNTHUSDT", "1m")
    assert len(got) == 550 and not got["open_time"].duplicated().any()
    assert sum(r.added for r in results) == 550
    # each row's spread_bps is the mark of a writer whose batch covered that row (no mixed or lost rows)
    for i, v in enumerate(got["spread_bps"]):
        w = int(v) - 1
        assert 50 * w <= i < 50 * w + 200, (i, v)
    # a row is written by its last writer whole: the other columns are the generator's, untouched
    pd.testing.assert_frame_equal(
        got.drop(columns=["spread_bps"]), base.iloc[:550].drop(columns=["spread_bps"])
    )
