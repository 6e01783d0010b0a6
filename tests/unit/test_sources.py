"""Candle sources: synthetic generator, Binance kline files, CCXT paging against a local fake."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipelines.contracts.errors import SourceError
from pipelines.contracts.schema import CANDLE_COLUMNS, DTYPES
from pipelines.sources import binance_files, synthetic
from tests.conftest import FIL_FILES

MONTH_ROWS = {"2023-08": 44_640, "2023-09": 43_200, "2023-10": 44_640, "2023-11": 43_200}


def assert_contract(df: pd.DataFrame) -> None:
    assert list(df.columns) == CANDLE_COLUMNS
    want = {c: str(pd.Series(dtype=t).dtype) for c, t in DTYPES.items()}
    assert {c: str(t) for c, t in df.dtypes.items()} == want
    assert str(df["open_time"].dt.tz) == "UTC"


def acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).mean() / x.var())


# ---------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def month() -> pd.DataFrame:
    return synthetic.generate(n=43_200)


def test_synthetic_is_deterministic_and_seeded(month):
    again = synthetic.generate(n=43_200)
    pd.testing.assert_frame_equal(month, again, check_exact=True)
    other = synthetic.generate(n=1440, seed=8)
    assert not np.allclose(other["close"].to_numpy(), month["close"].to_numpy()[:1440])


def test_synthetic_contract_and_field_consistency(month):
    df = month
    assert_contract(df)
    assert len(df) == 43_200
    assert (df["open_time"].diff().iloc[1:] == pd.Timedelta(minutes=1)).all()
    assert df["open_time"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert abs(df["open"].iloc[0] / 100.0 - 1) < 0.01  # start_price is the mid at 2024-01-01
    o, h, lo, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all() and (lo > 0).all()
    assert (o[1:] == c[:-1]).all()  # open = previous close, also across day boundaries
    vwap = df["quote_asset_volume"] / df["volume"]
    assert ((vwap >= df["low"]) & (vwap <= df["high"])).all()  # quote ≈ volume × price
    assert (df["volume"] > 0).all()
    assert (df["taker_buy_base_asset_volume"] <= df["volume"]).all()
    assert (df["taker_buy_quote_asset_volume"] <= df["quote_asset_volume"]).all()
    assert (df["number_of_trades"] >= 1).all()
    assert df[CANDLE_COLUMNS[3:12]].notna().all().all()


def test_synthetic_stylised_facts(month):
    r = np.diff(np.log(month["close"].to_numpy()))
    assert stats.kurtosis(r, fisher=False) > 10  # fat tails (FILUSDT: ~400)
    abs_acf = [acf(np.abs(r), k) for k in range(1, 31)]
    assert min(abs_acf) > 0.05, abs_acf  # volatility clustering (FILUSDT: 0.40 .. 0.18)
    assert -0.08 < acf(r, 1) < -0.005  # bid-ask bounce (FILUSDT: -0.016)
    by_hour = month.groupby(month["open_time"].dt.hour)["volume"].mean()
    assert by_hour.max() / by_hour.min() > 1.5 and 12 <= by_hour.idxmax() <= 18  # US-hours peak
    v = month["volume"].to_numpy()
    bursts = v > 20 * np.median(v)
    assert 10 <= bursts.sum() <= 200  # a few bursts a day, not a regime
    assert np.abs(r[bursts[1:]]).mean() > 1.5 * np.abs(r).mean()  # bursts move the price
    tbr = month["taker_buy_ratio"].to_numpy()
    assert np.corrcoef(tbr[:-1] - 0.5, r)[0, 1] > 0.02  # weak predictable component


def test_synthetic_windows_join_exactly(month):
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    a = synthetic.generate(start=t0, n=1000)
    b = synthetic.generate(start=t0 + pd.Timedelta(minutes=1000), n=2000)  # crosses a day boundary
    joined = pd.concat([a, b], ignore_index=True)
    pd.testing.assert_frame_equal(joined, month.iloc[:3000].reset_index(drop=True), check_exact=True)


def test_synthetic_continuation_appends_next_day(month):
    day1 = month.iloc[:1440]
    day2 = synthetic.generate_continuation(day1, 1440)
    pd.testing.assert_frame_equal(day2, month.iloc[1440:2880].reset_index(drop=True), check_exact=True)
    assert day2["open"].iloc[0] == day1["close"].iloc[-1]
    with pytest.raises(SourceError, match="seed"):
        synthetic.generate_continuation(day1, 10, seed=99)


def test_synthetic_planted_reversal(month):
    # Off by default: reversal=0.0 is the series as it was before the option existed (lag-1 acf of the
    # default month recorded when the option was added; only the bid-ask bounce makes it negative).
    off = synthetic.generate(n=43_200, params=synthetic.SynthParams(reversal=0.0))
    pd.testing.assert_frame_equal(off, month, check_exact=True)
    r0 = np.diff(np.log(month["close"].to_numpy()))
    assert acf(r0, 1) == pytest.approx(-0.030197646819819655, abs=1e-9)
    # On: AR(1) mid returns at -0.1 make the lag-1 autocorrelation clearly negative, at lag 1 only.
    params = synthetic.SynthParams(reversal=-0.1)
    planted = synthetic.generate(n=43_200, params=params)
    assert_contract(planted)
    r = np.diff(np.log(planted["close"].to_numpy()))
    assert acf(r, 1) < -0.05 and acf(r, 1) < acf(r0, 1) - 0.05
    assert abs(acf(r, 2)) < 0.03
    # Still a random-access series: windows join bit-exactly across a day boundary.
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    b = synthetic.generate(start=t0 + pd.Timedelta(minutes=1000), n=2000, params=params)
    pd.testing.assert_frame_equal(b, planted.iloc[1000:3000].reset_index(drop=True), check_exact=True)
    with pytest.raises(SourceError, match="reversal"):
        synthetic.SynthParams(reversal=1.0)


def test_synthetic_other_interval():
    df = synthetic.generate(interval="1h", start="2024-03-01 05:00", n=72)
    assert_contract(df)
    assert (df["open_time"].diff().iloc[1:] == pd.Timedelta(hours=1)).all()
    assert df["open_time"].iloc[0] == pd.Timestamp("2024-03-01 05:00", tz="UTC")
    with pytest.raises(SourceError, match="grid"):
        synthetic.generate(interval="1h", start="2024-03-01 05:30", n=3)


@pytest.mark.parametrize("bad", ["BTCUSDT", "FILUSDT", ""])
def test_synthetic_rejects_real_looking_symbols(bad):
    assert not synthetic.is_synthetic_symbol(bad)
    with pytest.raises(SourceError, match="SYNTH"):
        synthetic.generate(symbol=bad, n=10)


def test_synthetic_symbol_labels():
    assert synthetic.is_synthetic_symbol("SYNTHUSDT") and synthetic.is_synthetic_symbol("BTCSYNTH")
    with pytest.raises(SourceError, match="positive"):
        synthetic.generate(n=0)


# ---------------------------------------------------------------- Binance kline files


def _csv_text(zip_path: Path) -> str:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read(zf.namelist()[0]).decode()


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def aug() -> pd.DataFrame:
    return binance_files.read_klines(FIL_FILES[0], "FILUSDT")


@pytest.mark.parametrize("path", FIL_FILES, ids=lambda p: p.stem)
def test_real_monthly_files(shared_data, path):
    df = binance_files.read_klines(path, "FILUSDT", "1m")
    assert_contract(df)
    month = path.stem.split("-1m-")[1]
    assert len(df) == MONTH_ROWS[month]
    assert df["open_time"].iloc[0] == pd.Timestamp(f"{month}-01", tz="UTC")
    assert (df["open_time"].diff().iloc[1:] == pd.Timedelta(minutes=1)).all()
    assert df[["open", "high", "low", "close", "volume"]].notna().all().all()
    assert (df["symbol"] == "FILUSDT").all() and (df["interval"] == "1m").all()


def test_field_mapping_first_row(aug):
    # 1690848000000,4.255,4.256,4.252,4.252,25259.1,1690848059999,107451.0165,208,5452.3,23199.1103,0
    row = aug.iloc[0]
    assert row["open_time"] == pd.Timestamp("2023-08-01", tz="UTC")
    ohlcv = (row["open"], row["high"], row["low"], row["close"], row["volume"])
    assert ohlcv == (4.255, 4.256, 4.252, 4.252, 25259.1)
    assert row["quote_asset_volume"] == 107451.0165 and row["number_of_trades"] == 208
    assert row["taker_buy_base_asset_volume"] == 5452.3 and row["taker_buy_quote_asset_volume"] == 23199.1103
    assert row["taker_buy_ratio"] == pytest.approx(5452.3 / 25259.1)


def test_headerless_csv_and_microseconds(tmp_path, aug):
    lines = _csv_text(FIL_FILES[0]).splitlines()[1:]  # spot layout: no header
    plain = binance_files.read_klines(_write(tmp_path, "spot.csv", lines), "FILUSDT")
    pd.testing.assert_frame_equal(plain, aug, check_exact=True)
    us_lines = []
    for ln in lines:
        f = ln.split(",")
        f[0], f[6] = f[0] + "000", f[6] + "999"  # newer spot dumps: µs
        us_lines.append(",".join(f))
    micro = binance_files.read_klines(_write(tmp_path, "spot_us.csv", us_lines), "FILUSDT")
    pd.testing.assert_frame_equal(micro, aug, check_exact=True)


def test_csv_with_header_and_read_many_sorts(tmp_path, aug):
    text = _csv_text(FIL_FILES[0]).splitlines()
    head, tail = text[: 1 + 100], [text[0]] + text[101:200]
    later = _write(tmp_path, "b.csv", tail)
    earlier = _write(tmp_path, "a.csv", head)
    both = binance_files.read_many([later, earlier], "FILUSDT")
    pd.testing.assert_frame_equal(both, aug.iloc[:199].reset_index(drop=True), check_exact=True)
    with pytest.raises(SourceError, match="no kline files"):
        binance_files.read_many([], "FILUSDT")


def test_non_numeric_price_is_kept_as_nan(tmp_path):
    lines = _csv_text(FIL_FILES[0]).splitlines()[:20]
    f = lines[5].split(",")
    f[2] = "4.2x6"  # corrupt high of data row 5
    lines[5] = ",".join(f)
    df = binance_files.read_klines(_write(tmp_path, "bad_price.csv", lines), "FILUSDT")
    assert len(df) == 19
    assert np.isnan(df["high"].iloc[4]) and df["high"].drop(index=4).notna().all()


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        (
            "short.csv",
            lambda ls: ls[:7] + [ls[7].rsplit(",", 2)[0]] + ls[8:],
            r"line 8: expected 12 .* found 10",
        ),
        ("long.csv", lambda ls: ls[:3] + [ls[3] + ",1"] + ls[4:], r"line 4: expected 12 .* found 13"),
        ("time.csv", lambda ls: ls[:9] + ["x" + ls[9]] + ls[10:], r"line 10: column 'open_time'"),
        (
            "count.csv",
            lambda ls: ls[:1] + [ls[1].replace(",208,", ",2o8,")] + ls[2:],
            r"line 2: column 'count'",
        ),
        ("header.csv", lambda ls: ["time,o,h,l,c"] + ls[1:], r"line 1: unrecognised header"),
        ("empty.csv", lambda ls: [""], r"empty file"),
        ("only_header.csv", lambda ls: ls[:1], r"header but no rows"),
    ],
)
def test_structural_damage_names_file_and_line(tmp_path, name, mutate, message):
    lines = _csv_text(FIL_FILES[0]).splitlines()[:20]
    path = _write(tmp_path, name, mutate(lines))
    with pytest.raises(SourceError, match=message) as err:
        binance_files.read_klines(path, "FILUSDT")
    assert name in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        binance_files.read_klines(tmp_path / "missing.zip", "FILUSDT")
    fake_zip = tmp_path / "fake.zip"
    fake_zip.write_bytes(b"not a zip at all")
    with pytest.raises(SourceError, match="not a valid zip"):
        binance_files.read_klines(fake_zip, "FILUSDT")
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.csv", "1,2")
        zf.writestr("b.csv", "1,2")
    with pytest.raises(SourceError, match="one CSV inside"):
        binance_files.read_klines(two, "FILUSDT")
    with pytest.raises(SourceError, match="unsupported file type"):
        binance_files.read_klines(_write(tmp_path, "x.parquet", ["1"]), "FILUSDT")
    with pytest.raises(SourceError, match="unknown interval"):
        binance_files.read_klines(FIL_FILES[0], "FILUSDT", "7m")


def test_zip_of_derived_csv(tmp_path, aug):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("FILUSDT-1m-2023-08.csv", "\n".join(_csv_text(FIL_FILES[0]).splitlines()[1:301]))
    p = tmp_path / "FILUSDT-1m-2023-08.zip"
    p.write_bytes(buf.getvalue())
    pd.testing.assert_frame_equal(binance_files.read_klines(p, "FILUSDT"), aug.iloc[:300], check_exact=True)


# ---------------------------------------------------------------- CCXT (local fake Binance)


@pytest.fixture(scope="module")
def fake():
    from tests.fixtures.fake_exchange import FakeBinance, load_kline_rows

    with FakeBinance(load_kline_rows(FIL_FILES[0], 3000)) as server:  # 2023-08-01 00:00 .. 08-03 02:00
        yield server


@pytest.fixture()
def ccxt_source(fake):
    from pipelines.sources import ccxt_source

    fake.requests.clear()
    fake.fail_next = 0
    return ccxt_source


def test_ccxt_pages_and_keeps_binance_fields(ccxt_source, fake, aug):
    df = ccxt_source.fetch_ohlcv_range(
        "binance", "FIL/USDT", "1m", "2023-08-01", "2023-08-02", fake.ccxt_config(), limit=500
    )
    assert_contract(df)
    pd.testing.assert_frame_equal(df, aug.iloc[:1440], check_exact=True)  # all 11 raw fields exact
    assert [int(q["limit"]) for q in fake.requests] == [500, 500, 440]  # paged, no over-fetch
    assert int(fake.requests[1]["startTime"]) == 1690848000000 + 500 * 60_000


def test_ccxt_drops_open_candle_and_accepts_exchange_id(ccxt_source, fake, aug):
    t100 = aug["open_time"].iloc[100]
    df = ccxt_source.fetch_ohlcv_range(
        "binance",
        "FILUSDT",
        "1m",
        "2023-08-01",
        None,
        fake.ccxt_config(),
        now=t100 + pd.Timedelta(seconds=30),
    )
    assert df["open_time"].iloc[-1] == aug["open_time"].iloc[99]  # candle 100 is still open
    assert len(df) == 100 and (df["symbol"] == "FILUSDT").all()


def test_ccxt_incremental_starts_after_last_stored(ccxt_source, fake, aug):
    last = aug["open_time"].iloc[1439]
    df = ccxt_source.incremental(
        "binance",
        "FIL/USDT",
        "1m",
        last,
        exchange_config=fake.ccxt_config(),
        until=aug["open_time"].iloc[1500],
    )
    pd.testing.assert_frame_equal(df, aug.iloc[1440:1500].reset_index(drop=True), check_exact=True)
    with pytest.raises(SourceError, match="first backfill"):
        ccxt_source.incremental("binance", "FIL/USDT", "1m", None, exchange_config=fake.ccxt_config())


def test_ccxt_retries_transient_errors(ccxt_source, fake):
    fake.fail_next = 2  # two 503s, then success
    df = ccxt_source.fetch_ohlcv_range(
        "binance", "FIL/USDT", "1m", "2023-08-01", "2023-08-01 00:10", fake.ccxt_config(), backoff_s=0.001
    )
    assert len(df) == 10 and len(fake.requests) == 3
    fake.requests.clear()
    fake.fail_next = 5
    with pytest.raises(SourceError, match="after 2 attempts"):
        ccxt_source.fetch_ohlcv_range(
            "binance",
            "FIL/USDT",
            "1m",
            "2023-08-01",
            "2023-08-01 00:10",
            fake.ccxt_config(),
            retries=1,
            backoff_s=0.001,
        )
    assert len(fake.requests) == 2


def test_ccxt_permanent_errors_are_not_retried(ccxt_source, fake):
    with pytest.raises(SourceError, match="no market 'DOGE/USDT'"):
        ccxt_source.fetch_ohlcv_range("binance", "DOGE/USDT", "1m", "2023-08-01", None, fake.ccxt_config())
    with pytest.raises(SourceError, match="BadRequest|Invalid interval"):  # the fake serves 1m only
        ccxt_source.fetch_ohlcv_range(
            "binance", "FIL/USDT", "5m", "2023-08-01", "2023-08-01 01:00", fake.ccxt_config()
        )
    assert len(fake.requests) == 1  # one klines call, no retries
    with pytest.raises(SourceError, match="unknown exchange id"):
        ccxt_source.fetch_ohlcv_range("nosuchexchange", "FIL/USDT", "1m", "2023-08-01")


def test_ccxt_estimates_fields_other_exchanges_lack(ccxt_source):
    rows = [[1690848000000, 4.0, 4.2, 3.9, 4.1, 1000.0], [1690848060000, 4.1, 4.1, 4.0, 4.0, 0.0]]
    df = ccxt_source._to_frame(rows, {}, "FILUSDT", "1m")
    assert_contract(df)
    assert df["quote_asset_volume"].iloc[0] == pytest.approx(1000.0 * (4.2 + 3.9 + 4.1) / 3)
    assert df["number_of_trades"].tolist() == [0, 0]
    assert df["taker_buy_ratio"].tolist() == [0.5, 0.0]  # neutral where volume > 0
