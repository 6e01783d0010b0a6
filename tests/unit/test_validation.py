"""Candle validation (GX 1.x suite), gap reporting and quarantine, on real FILUSDT candles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.contracts.errors import ValidationFailed
from pipelines.sources.binance_files import read_many
from tests.conftest import FIL_FILES
from validation import candles as vc
from validation.candles import (
    SUITE_NAME,
    candle_expectations,
    check_or_quarantine,
    find_gaps,
    quarantine,
    validate_candles,
)

KEY = ("symbol", "interval", "open_time")


@pytest.fixture(scope="module")
def fil_all(shared_data) -> pd.DataFrame:
    assert len(FIL_FILES) == 4, f"expected 4 FILUSDT monthly zips in {shared_data}"
    import great_expectations  # noqa: F401 - import once here (seconds) so tests time validation only

    return read_many(FIL_FILES, "FILUSDT", "1m")


@pytest.fixture(scope="module")
def fil_month(fil_all) -> pd.DataFrame:
    return fil_all.iloc[:44640].reset_index(drop=True)  # August 2023: 31 days of 1m candles


def failed_counts(report) -> dict[tuple[str, tuple[str, ...]], int | None]:
    return {(r.expectation, r.columns): r.unexpected_count for r in report.failed}


def test_real_fil_four_months_pass_with_zero_gaps(fil_all, tmp_path, capfd):
    capfd.readouterr()
    report = validate_candles(fil_all, data_docs_dir=tmp_path / "docs", batch_name="FILUSDT-1m-2023-08..11")
    out, _ = capfd.readouterr()

    assert report.rows == 175_680
    assert report.evaluated_expectations == len(candle_expectations()) == 47
    assert len(report.results) == report.evaluated_expectations
    assert report.success, [r.label for r in report.failed]
    assert all(r.unexpected_count in (0, None) for r in report.results)
    assert [(g.symbol, g.interval, g.gaps, g.missing_candles) for g in report.gaps] == [
        ("FILUSDT", "1m", 0, 0)
    ]
    assert report.gaps[0].longest_span == pd.Timedelta(0)
    # Data Docs: site index lists the suite; this validation has its own page
    index = report.data_docs
    assert index == (tmp_path / "docs" / "index.html").resolve() and index.exists()
    assert SUITE_NAME in index.read_text()
    assert report.validation_page is not None and report.validation_page.exists()
    assert "FILUSDT-1m-2023-08..11" in str(report.validation_page)
    assert out == "", f"validation printed to stdout: {out[:300]!r}"
    # timing is reported, not asserted (shared CI boxes): ~1 s on an idle core
    print(f"\nvalidate_candles, 175,680 rows, 47 expectations + Data Docs: {report.elapsed_s:.2f}s")


def test_corrupted_copy_fails_naming_exactly_those_expectations(fil_month, tmp_path):
    df = fil_month.copy()
    i_bad_hl, i_dup, i_nan = 100, 2000, 30000
    df.loc[i_bad_hl, "high"] = df.loc[i_bad_hl, "low"] * 0.99  # high < low (so < max(open, close))
    close = df["close"].astype(object)
    close[i_nan] = "n/a"  # a source that could not parse a number, coerced like a CSV reader would
    df["close"] = pd.to_numeric(close, errors="coerce")
    df = pd.concat([df.iloc[: i_dup + 1], df.iloc[[i_dup]], df.iloc[i_dup + 1 :]], ignore_index=True)

    report = validate_candles(df, data_docs_dir=tmp_path / "docs", batch_name="fil-corrupt")

    assert not report.success
    assert report.evaluated_expectations == 47
    assert failed_counts(report) == {
        ("expect_column_pair_values_a_to_be_greater_than_b", ("high", "open", "close")): 1,
        ("expect_column_values_to_not_be_null", ("close",)): 1,
        # GX counts every row of a duplicated key: the original and its copy
        ("expect_compound_columns_to_be_unique", KEY): 2,
        # the copy sits right after its original: its open_time does not increase
        ("expect_column_values_to_be_in_set", KEY): 1,
    }
    assert report.total_gaps == 0  # a duplicate is not a gap
    assert (tmp_path / "docs" / "index.html").exists()


def test_check_or_quarantine_raises_and_keeps_the_batch(fil_month, tmp_path):
    df = fil_month.iloc[:1440].copy()
    df.loc[10, "volume"] = -1.0
    df.loc[20, "taker_buy_quote_asset_volume"] = df.loc[20, "quote_asset_volume"] + 1.0
    qdir = tmp_path / "quarantine"

    with pytest.raises(ValidationFailed) as exc:
        check_or_quarantine(df, data_docs_dir=tmp_path / "docs", quarantine_dir=qdir, batch_name="fil day/1")

    msg = str(exc.value)
    (folder,) = list(qdir.iterdir())
    assert folder.name.endswith("-fil_day_1") and folder.name[:8].isdigit()
    assert "'fil day/1'" in msg and str(folder) in msg and "\n" not in msg
    assert "expect_column_values_to_be_between(volume): 1 row;" in msg
    assert (
        "expect_column_pair_values_a_to_be_greater_than_b(quote_asset_volume, "
        "taker_buy_quote_asset_volume): 1 row;"
    ) in msg
    kept = pd.read_parquet(folder / "candles.parquet")
    assert len(kept) == 1440 and kept.loc[10, "volume"] == -1.0
    payload = json.loads((folder / "report.json").read_text())
    assert payload["success"] is False and payload["batch_name"] == "fil day/1"
    assert {
        (r["expectation"], tuple(r["columns"]), r["unexpected_count"])
        for r in payload["results"]
        if not r["success"]
    } == {
        ("expect_column_values_to_be_between", ("volume",), 1),
        # a negative volume is also below its own taker-buy part
        ("expect_column_pair_values_a_to_be_greater_than_b", ("volume", "taker_buy_base_asset_volume"), 1),
        (
            "expect_column_pair_values_a_to_be_greater_than_b",
            ("quote_asset_volume", "taker_buy_quote_asset_volume"),
            1,
        ),
    }
    md = (folder / "report.md").read_text()
    assert "FAILED" in md and "| expect_column_values_to_be_between | volume | 1 |" in md


def test_removed_hour_is_one_61_minute_gap_and_still_passes(fil_month, tmp_path):
    start = 5000
    df = fil_month.drop(index=range(start, start + 60)).reset_index(drop=True)

    report = validate_candles(df, data_docs_dir=tmp_path / "docs", batch_name="fil-gap")

    assert report.success, [r.label for r in report.failed]
    (gap,) = report.gaps
    assert (gap.symbol, gap.interval, gap.gaps, gap.missing_candles) == ("FILUSDT", "1m", 1, 60)
    assert gap.longest_span == pd.Timedelta(minutes=61)  # last candle before → first candle after
    assert gap.longest_after == fil_month.loc[start - 1, "open_time"]
    assert "| FILUSDT | 1m | 1 | 60 | 0 days 01:01:00 |" in report.to_markdown()


def test_several_symbols_interleaved_pass_and_out_of_order_fails(fil_month, tmp_path):
    fil = fil_month.iloc[:600]
    near = fil.assign(symbol="NEARUSDT")
    both = pd.concat([fil, near]).sort_values("open_time", kind="stable").reset_index(drop=True)
    ok = validate_candles(both, data_docs_dir=tmp_path / "docs", batch_name="two-symbols")
    assert ok.success, [r.label for r in ok.failed]
    assert [(g.symbol, g.gaps) for g in ok.gaps] == [("FILUSDT", 0), ("NEARUSDT", 0)]

    # swap two NEAR rows: one step goes backwards; the set of times (so gaps) is unchanged
    swapped = both.copy()
    a, b = swapped.index[swapped["symbol"] == "NEARUSDT"][[100, 101]]
    swapped.loc[[a, b]] = swapped.loc[[b, a]].to_numpy()
    bad = validate_candles(swapped, data_docs_dir=tmp_path / "docs", batch_name="two-symbols-swapped")
    assert failed_counts(bad) == {("expect_column_values_to_be_in_set", KEY): 1}
    assert bad.total_gaps == 0


def test_broken_schema_fails_without_crashing(fil_month, tmp_path):
    df = fil_month.iloc[:300].drop(columns=["quote_asset_volume"])
    df["volume"] = df["volume"].where(df.index != 7, np.inf)
    df["open"] = df["open"].astype(object)
    df.loc[3, "open"] = "garbage"  # unparsed text left in a price column
    df["open_time"] = df["open_time"].dt.tz_localize(None)  # naive timestamps

    report = validate_candles(df, data_docs_dir=tmp_path / "docs", batch_name="broken")

    failed = {r.label for r in report.failed}
    assert not report.success
    assert "expect_table_columns_to_match_set(quote_asset_volume)" in failed  # names the missing column
    assert "expect_column_values_to_be_of_type(open_time)" in failed
    assert "expect_column_values_to_be_of_type(open)" in failed
    assert failed_counts(report)[("expect_column_values_to_be_between", ("volume",))] == 1  # +inf
    on_missing = [
        r
        for r in report.failed
        if "quote_asset_volume" in r.columns and r.expectation != "expect_table_columns_to_match_set"
    ]
    assert len(on_missing) == 4 and all(r.error for r in on_missing)  # GX could not evaluate: error, no crash

    folder = quarantine(df, report, tmp_path / "q")
    assert json.loads((folder / "report.json").read_text())["stringified_columns"] == ["open"]
    assert pd.read_parquet(folder / "candles.parquet").loc[3, "open"] == "garbage"


def test_zero_evaluated_expectations_never_pass(fil_month, tmp_path, monkeypatch):
    monkeypatch.setattr(vc, "candle_expectations", lambda: [])
    report = validate_candles(fil_month.iloc[:10], data_docs_dir=tmp_path / "docs", batch_name="empty-suite")
    assert report.evaluated_expectations == 0
    assert not report.success
    with pytest.raises(ValidationFailed, match="no expectation was evaluated"):
        check_or_quarantine(
            fil_month.iloc[:10],
            data_docs_dir=tmp_path / "docs",
            quarantine_dir=tmp_path / "q",
            batch_name="empty-suite",
        )


def test_find_gaps_ignores_order_and_duplicates_and_counts_missing_candles(fil_month):
    df = fil_month.iloc[:100].drop(index=[10, 11, 50]).sample(frac=1.0, random_state=0)
    df = pd.concat([df, df.iloc[:5]])
    (g,) = find_gaps(df)
    assert (g.gaps, g.missing_candles, g.longest_span) == (2, 3, pd.Timedelta(minutes=3))
    assert g.longest_after == fil_month.loc[9, "open_time"]
