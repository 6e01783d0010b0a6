"""The DuckDB candle store: idempotent upsert, all-or-nothing transactions, gap status, hashes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines import store as store_mod
from pipelines.contracts.errors import StoreError
from pipelines.sources import binance_files, synthetic
from pipelines.store import CandleStore, candles_hash
from tests.conftest import FIL_FILES, REPO


@pytest.fixture(scope="module")
def fil() -> pd.DataFrame:
    return binance_files.read_many(FIL_FILES, "FILUSDT", "1m")


@pytest.fixture(scope="module")
def fil_store(tmp_path_factory, fil) -> CandleStore:
    s = CandleStore(tmp_path_factory.mktemp("store") / "candles.duckdb")
    assert s.upsert(fil) == 175_680
    return s


@pytest.fixture()
def small(tmp_path) -> tuple[CandleStore, pd.DataFrame]:
    df = synthetic.generate(n=3000)
    s = CandleStore(tmp_path / "small.duckdb")
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


def test_gaps_are_counted_in_sql(tmp_path):
    df = synthetic.generate(n=1000)
    holed = df.drop(index=list(range(100, 110)) + [500, 501, 502]).reset_index(drop=True)  # 2 holes: 10 + 3
    s = CandleStore(tmp_path / "gaps.duckdb")
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
    nxt = synthetic.generate_continuation(df, 5)
    assert s.merge(pd.concat([fixed, nxt])) == store_mod.MergeResult(added=5, replaced=1)
    got = s.load("SYNTHUSDT", "1m")
    assert len(got) == 3005 and got.loc[15, "close"] == fixed.loc[15, "close"]
    assert got["open_time"].is_monotonic_increasing


def _snapshot(s: CandleStore) -> tuple[int, str]:
    return s.count("SYNTHUSDT", "1m"), s.data_hash("SYNTHUSDT", "1m")


def test_failure_mid_transaction_leaves_store_unchanged(small, monkeypatch):
    s, df = small
    before = _snapshot(s)
    changed = df.iloc[:100].assign(close=df["close"].iloc[:100] * 2)
    batch = pd.concat([changed, synthetic.generate_continuation(df, 50)])

    def boom(con):  # runs after the 50 new rows were inserted inside the transaction
        assert con.execute("SELECT count(*) FROM candles").fetchone()[0] == 3050
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(store_mod, "_replace_changed", boom)
    with pytest.raises(StoreError, match="rolled back, store unchanged: disk full"):
        s.upsert(batch)
    assert _snapshot(s) == before


def test_database_error_mid_transaction_rolls_back(small, monkeypatch):
    s, df = small
    before = _snapshot(s)
    # After the new rows are in, a statement violates the primary key inside the same transaction.
    dup_all = "INSERT INTO candles SELECT * FROM candles"
    monkeypatch.setattr(store_mod, "_replace_changed", lambda con: con.execute(dup_all))
    with pytest.raises(StoreError, match="rolled back.*primary key"):
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


def test_missing_store_reads_empty_without_creating(tmp_path):
    s = CandleStore(tmp_path / "none" / "candles.duckdb")
    assert s.load("SYNTHUSDT", "1m").empty and s.count("SYNTHUSDT", "1m") == 0
    assert s.symbols() == [] and s.status().empty and s.last_open_time("SYNTHUSDT", "1m") is None
    assert not s.path.exists()
    assert s.upsert(synthetic.generate(n=0 + 5)) == 5 and s.path.exists()


def test_hash_ignores_order_and_sees_changes(small):
    _, df = small
    assert candles_hash(df.sample(frac=1.0, random_state=1)) == candles_hash(df)
    changed = df.copy()
    changed.loc[7, "volume"] = np.nextafter(changed.loc[7, "volume"], np.inf)
    assert candles_hash(changed) != candles_hash(df)


def test_processes_take_turns_on_one_file(small):
    s, df = small
    code = (
        "import sys; from pipelines.store import CandleStore; from pipelines.sources import synthetic;"
        "s = CandleStore(sys.argv[1]); prev = s.load('SYNTHUSDT', '1m');"
        "print(s.upsert(synthetic.generate_continuation(prev, 60)))"
    )
    cmd = [sys.executable, "-c", code, str(s.path)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "60"
    assert s.count("SYNTHUSDT", "1m") == 3060
    assert s.last_open_time("SYNTHUSDT", "1m") == df["open_time"].iloc[-1] + pd.Timedelta(minutes=60)
