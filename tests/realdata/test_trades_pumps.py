"""The trades source on the 30 real pump-and-dump trade windows of ../shared/data/pumps (ccxt layout).

Every file becomes gap-free 1m candles that pass the candle suite and keep every deduplicated trade's
volume and count; the BRD 2021-02-24 pump shows in its announced minute; one minute is checked by hand
against the raw CSV rows; the same trades written as a Binance aggTrades dump give identical output.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.sources.trades import build_series, read_trades, trades_to_minutes

PUMPS = "pumps"
BRD = "BRD_2021-02-24_17.00.zip"


@pytest.fixture(scope="module")
def pump_files(shared_data) -> list[Path]:
    files = sorted((shared_data / PUMPS).glob("*.zip"))
    assert len(files) == 30, f"expected the 30 pump windows in {shared_data / PUMPS}"
    return files


@pytest.fixture(scope="module")
def built(pump_files) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """file name → (deduplicated trades, candles, minutes)."""
    out = {}
    for f in pump_files:
        trades = read_trades(f)
        candles, minutes = trades_to_minutes(trades, f.name.split("_")[0] + "BTC")
        out[f.name] = (trades, candles, minutes)
    return out


def raw_rows(path: Path) -> list[list[str]]:
    """The CSV rows of a pump file as text, exact duplicates dropped (first kept), in file order."""
    with zipfile.ZipFile(path) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    rows = list(csv.reader(io.StringIO(text)))[1:]
    seen: set[tuple[str, ...]] = set()
    unique = []
    for r in rows:
        if tuple(r) not in seen:
            seen.add(tuple(r))
            unique.append(r)
    return unique


def test_every_file_gives_valid_gap_free_candles_that_keep_every_trade(built, shared_data, tmp_path):
    from validation.candles import validate_candles

    events = pd.read_csv(shared_data / PUMPS / "events.csv")
    rows_in_file = dict(zip(events["file"], events["trades"], strict=True))
    frames = []
    for name, (trades, candles, minutes) in built.items():
        assert trades.attrs["rows_read"] == rows_in_file[name]
        dups = trades.attrs["duplicates_dropped"]
        assert 0.005 < dups / rows_in_file[name] < 0.08, (name, dups)
        assert len(trades) == len(raw_rows(Path(trades.attrs["path"])))
        # every minute of the span, nothing lost or invented
        span = (trades["timestamp"].iloc[-1] // 60_000) - (trades["timestamp"].iloc[0] // 60_000) + 1
        assert len(candles) == len(minutes) == span
        assert candles["number_of_trades"].sum() == len(trades)
        np.testing.assert_allclose(candles["volume"].sum(), trades["amount"].sum(), rtol=1e-9)
        quote = (trades["price"] * trades["amount"]).sum()
        np.testing.assert_allclose(candles["quote_asset_volume"].sum(), quote, rtol=1e-9)
        quiet = candles["volume"] == 0
        assert 0.1 < quiet.mean() < 0.85, name  # thin pairs: many minutes without a trade
        assert (candles.loc[quiet, "open"] == candles["close"].shift(1)[quiet]).all()
        assert (minutes.loc[quiet, "n_orders"] == 0).all()
        assert minutes["order_p999_24h"].iloc[:1440].isna().all()  # the first day has no full window
        assert minutes["order_p999_24h"].iloc[1441:].notna().all()
        assert minutes["large_orders"].sum() > 0
        frames.append(candles.assign(symbol=name))  # one batch, one series per file
    report = validate_candles(
        pd.concat(frames, ignore_index=True), data_docs_dir=tmp_path, batch_name="pumps"
    )
    assert report.success, [r.label for r in report.failed]
    assert report.evaluated_expectations > 0
    assert len(report.gaps) == 30 and report.total_gaps == 0


def test_the_brd_pump_is_the_busiest_minute(built):
    _, candles, minutes = built[BRD]
    busiest = candles.loc[candles["quote_asset_volume"].idxmax()]
    assert busiest["open_time"] == pd.Timestamp("2021-02-24 17:00", tz="UTC")
    assert 40 < busiest["quote_asset_volume"] < 60  # ~47 BTC; a typical minute is well under 1 BTC
    assert candles["quote_asset_volume"].median() < 0.05
    # and the minute with the most orders above the trailing day's p99.9 (18 of them; no other minute has 6)
    top = minutes.loc[minutes["large_orders"].idxmax()]
    assert top["open_time"] == busiest["open_time"] and top["large_orders"] > 10
    assert top["n_orders"] == minutes["n_orders"].max()


def test_one_minute_checked_by_hand_against_the_raw_rows(built, pump_files):
    path = next(f for f in pump_files if f.name == BRD)
    start = 1614186000000  # 2021-02-24 17:00:00 UTC
    rows = [r for r in raw_rows(path) if start <= int(r[1]) < start + 60_000]
    prices = [float(r[4]) for r in rows]
    amounts = [float(r[5]) for r in rows]
    buys = [float(r[5]) for r in rows if r[3] == "buy"]
    _, candles, _ = built[BRD]
    c = candles.set_index("open_time").loc[pd.Timestamp(start, unit="ms", tz="UTC")]
    assert (c["open"], c["high"], c["low"], c["close"]) == (prices[0], max(prices), min(prices), prices[-1])
    assert c["volume"] == pytest.approx(sum(amounts), rel=1e-12)
    assert c["taker_buy_base_asset_volume"] == pytest.approx(sum(buys), rel=1e-12)
    assert c["number_of_trades"] == len(rows) > 100


@pytest.mark.parametrize(("name", "micro"), [(BRD, False), ("RCN_2021-01-10_17.00.zip", True)])
def test_the_same_trades_as_an_aggtrades_dump_give_identical_output(built, tmp_path, name, micro):
    trades, candles, minutes = built[name]
    # one aggTrade per ccxt trade: first == last trade id; is_buyer_maker = the taker sold; no header;
    # the spot layout from 2025 adds is_best_match and counts µs
    ids = np.arange(len(trades)) + 1_000_000
    lines = [
        f"{i},{p!r},{q!r},{i},{i},{t * 1000 if micro else t},{s == 'sell'}" + (",True" if micro else "")
        for i, p, q, t, s in zip(
            ids, trades["price"], trades["amount"], trades["timestamp"], trades["side"], strict=True
        )
    ]
    dump = tmp_path / "RCNBTC-aggTrades.zip"
    with zipfile.ZipFile(dump, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("aggTrades.csv", "\n".join(lines) + "\n")
    again = read_trades(dump)
    assert again.attrs["layout"] == "aggTrades" and again.attrs["duplicates_dropped"] == 0
    pd.testing.assert_frame_equal(again, trades, check_exact=True)
    c2, m2 = trades_to_minutes(again, candles["symbol"].iloc[0])
    pd.testing.assert_frame_equal(c2, candles, check_exact=True)
    pd.testing.assert_frame_equal(m2, minutes, check_exact=True)


def test_the_two_overlapping_rcn_windows_join_into_one_series(pump_files, built):
    a, b = (f for f in pump_files if f.name.startswith("RCN_2021-01"))
    s = build_series([a, b], "RCNBTC")
    assert s.segments == 1 and s.overlapping > 2000
    assert s.trades == len(built[a.name][0]) + len(built[b.name][0]) - s.overlapping
    assert s.candles["open_time"].diff().dropna().eq(pd.Timedelta("1min")).all()
    assert s.candles["number_of_trades"].sum() == s.trades
    # where both windows have a full day behind them, the joined minutes equal the later file's alone
    _, _, mb = built[b.name]
    late = s.minutes[s.minutes["open_time"] >= mb["open_time"].iloc[1441]].reset_index(drop=True)
    pd.testing.assert_frame_equal(late, mb.iloc[1441:].reset_index(drop=True))
