"""The trades source: trade files → 1m candles + per-minute taker-order facts, and their store table."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.contracts.errors import SourceError, StoreError
from pipelines.contracts.schema import CANDLE_COLUMNS, DTYPES
from pipelines.sources import Source, get_source
from pipelines.sources.trades import (
    MINUTE_COLUMNS,
    MINUTE_DTYPES,
    TRADE_COLUMNS,
    build_series,
    read_trades,
    trades_to_minutes,
)
from pipelines.store import CandleStore, MergeResult

T0 = 1_614_013_200_000  # 2021-02-22 17:00:00 UTC, a minute boundary
MIN = 60_000
CCXT_HEADER = "symbol,timestamp,datetime,side,price,amount,btc_volume"


def trades(rows: list[tuple]) -> pd.DataFrame:
    """(timestamp ms, price, amount, side[, n_trades]) rows → a trade frame."""
    rows = [r if len(r) == 5 else (*r, 1) for r in rows]
    df = pd.DataFrame(rows, columns=TRADE_COLUMNS)
    return df.astype({"timestamp": "int64", "price": "float64", "amount": "float64", "n_trades": "int64"})


def ccxt_csv(path: Path, rows: list[tuple], header: str = CCXT_HEADER) -> Path:
    lines = [header]
    for ts, price, amount, side in rows:
        iso = pd.Timestamp(ts, unit="ms").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        lines.append(f"BRD/BTC,{ts},{iso},{side},{price!r},{amount!r},{price * amount!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def zipped(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def random_trades(seed: int, hours: float, rate_per_min: float = 3.0) -> pd.DataFrame:
    """A thin market: Poisson trade times (some share a millisecond), lognormal sizes, random sides."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate_per_min * hours * 60)
    ts = np.sort(T0 + 7_123 + rng.integers(0, int(hours * 3_600_000), n))
    ts[1::5] = ts[0:-1:5]  # every fifth trade shares the previous one's millisecond
    ts = np.sort(ts)
    price = 1e-5 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    amount = np.round(rng.lognormal(5, 1.5, n), 2)
    side = np.where(rng.random(n) < 0.5, "buy", "sell")
    return pd.DataFrame(
        {"timestamp": ts, "price": price, "amount": amount, "side": side, "n_trades": np.ones(n, np.int64)}
    )


# ---------------------------------------------------------------- candles


def test_minutes_without_trades_are_zero_volume_candles_at_the_previous_close():
    t = trades(
        [
            (T0 + 10_000, 10.0, 1.0, "buy"),
            (T0 + 20_000, 13.0, 1.0, "sell"),
            (T0 + 50_000, 12.0, 2.0, "buy"),
            (T0 + 3 * MIN + 5_000, 11.0, 4.0, "sell"),
        ]
    )
    candles, minutes = trades_to_minutes(t, "BRDBTC")
    assert list(candles.columns) == CANDLE_COLUMNS
    assert {c: str(t) for c, t in candles.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in DTYPES.items()
    }
    assert list(candles["open_time"]) == [pd.Timestamp(T0 + i * MIN, unit="ms", tz="UTC") for i in range(4)]
    assert candles[["open", "high", "low", "close"]].to_numpy().tolist() == [
        [10.0, 13.0, 10.0, 12.0],
        [12.0, 12.0, 12.0, 12.0],  # no trade: OHLC = previous close
        [12.0, 12.0, 12.0, 12.0],
        [11.0, 11.0, 11.0, 11.0],
    ]
    assert candles["volume"].tolist() == [4.0, 0.0, 0.0, 4.0]
    assert candles["number_of_trades"].tolist() == [3, 0, 0, 1]
    assert (candles["symbol"] == "BRDBTC").all() and (candles["interval"] == "1m").all()
    assert list(minutes.columns) == MINUTE_COLUMNS
    assert {c: str(t) for c, t in minutes.dtypes.items()} == MINUTE_DTYPES
    assert (minutes["open_time"] == candles["open_time"]).all()
    assert minutes["n_orders"].tolist() == [3, 0, 0, 1]
    assert minutes["max_order_quote"].tolist() == [24.0, 0.0, 0.0, 44.0]
    assert minutes["max_order_side"].tolist() == [1, 0, 0, -1]


def test_taker_buy_split_and_quote_volume():
    t = trades([(T0 + 1, 10.0, 2.0, "buy"), (T0 + 2, 11.0, 3.0, "sell"), (T0 + 3, 12.0, 1.0, "buy")])
    c = trades_to_minutes(t, "X")[0].iloc[0]
    assert c["volume"] == 6.0
    assert c["quote_asset_volume"] == pytest.approx(20 + 33 + 12)
    assert c["taker_buy_base_asset_volume"] == 3.0
    assert c["taker_buy_quote_asset_volume"] == pytest.approx(32.0)
    assert c["taker_buy_ratio"] == pytest.approx(0.5)
    assert c["number_of_trades"] == 3


def test_an_order_is_one_timestamp_and_one_side():
    t = trades(
        [
            (T0 + 500, 10.0, 1.0, "buy"),
            (T0 + 500, 10.5, 2.0, "buy"),  # same ms, same side: one order of 31.0
            (T0 + 500, 9.0, 3.0, "sell"),  # same ms, other side: its own order of 27.0
            (T0 + 501, 10.0, 2.5, "buy"),  # next ms: another order of 25.0
        ]
    )
    m = trades_to_minutes(t, "X")[1].iloc[0]
    assert m["n_orders"] == 3
    assert m["max_order_quote"] == pytest.approx(31.0)
    assert m["max_order_side"] == 1
    sold = trades([(T0 + 500, 10.0, 1.0, "buy"), (T0 + 500, 9.0, 2.0, "sell"), (T0 + 500, 9.0, 2.0, "sell")])
    m = trades_to_minutes(sold, "X")[1].iloc[0]
    assert (m["n_orders"], m["max_order_quote"], m["max_order_side"]) == (2, 36.0, -1)


def test_input_order_does_not_matter_beyond_ties():
    t = random_trades(1, hours=2)
    a, b = trades_to_minutes(t, "X"), trades_to_minutes(t.iloc[::-1], "X")
    pd.testing.assert_frame_equal(a[1], b[1])  # minutes depend on order sums only
    traded = (a[0]["volume"] > 0).to_numpy()  # a quiet minute repeats the close, which ties can move
    for col in ["high", "low", "volume", "number_of_trades"]:
        np.testing.assert_allclose(a[0][col][traded], b[0][col][traded], rtol=1e-12)


# ---------------------------------------------------------------- minutes: quantile, no look-ahead


def reference_minutes(t: pd.DataFrame, window_ms: int, q: float) -> pd.DataFrame:
    """The minutes frame computed the slow, obvious way (dicts and loops)."""
    orders: dict[tuple[int, str], float] = {}
    for ts, price, amount, side in zip(t["timestamp"], t["price"], t["amount"], t["side"], strict=True):
        orders[(int(ts), side)] = orders.get((int(ts), side), 0.0) + price * amount
    o_ts = np.array([k[0] for k in orders])
    o_q = np.array(list(orders.values()))
    o_side = np.array([1 if k[1] == "buy" else -1 for k in orders])
    first = int(t["timestamp"].min())
    m0, m1 = first // MIN, int(t["timestamp"].max()) // MIN
    rows = []
    for m in range(m0, m1 + 1):
        s = m * MIN
        inside = (o_ts >= s) & (o_ts < s + MIN)
        past = (o_ts >= s - window_ms) & (o_ts < s)
        p = float(np.quantile(o_q[past], q)) if s - first >= window_ms and past.any() else np.nan
        if inside.any():
            k = np.flatnonzero(inside)
            best = k[np.lexsort((o_side[k], o_ts[k], -o_q[k]))[0]]  # largest; ties: earliest, sell first
            mx, side = o_q[best], o_side[best]
        else:
            mx, side = 0.0, 0
        large = int((o_q[inside] > p).sum()) if not np.isnan(p) else 0
        rows.append((s, int(inside.sum()), mx, side, p, large))
    df = pd.DataFrame(rows, columns=MINUTE_COLUMNS)
    df["open_time"] = pd.to_datetime(df["open_time"], unit="ms", utc=True)
    return df.astype(MINUTE_DTYPES)


@pytest.mark.parametrize(("window", "q"), [("30min", 0.999), ("2h", 0.9), ("45min", 0.5)])
def test_minutes_match_a_brute_force_reference(window, q):
    t = random_trades(7, hours=5, rate_per_min=4)
    _, got = trades_to_minutes(t, "X", order_window=window, quantile=q)
    want = reference_minutes(t, int(pd.Timedelta(window) / pd.Timedelta("1ms")), q)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert got["large_orders"].sum() > 0


def test_quantile_is_nan_until_a_full_window_lies_before_the_minute():
    t = random_trades(2, hours=3)
    first = int(t["timestamp"].iloc[0])  # T0 + 7.1 s and a bit: the first full window ends 60 min later
    _, m = trades_to_minutes(t, "X", order_window="1h")
    starts = m["open_time"].astype("int64") // 1_000_000
    full = (starts - first) >= 3_600_000
    assert m.loc[~full, "order_p999_24h"].isna().all()
    assert (m.loc[~full, "large_orders"] == 0).all()
    assert m.loc[full, "order_p999_24h"].notna().all()
    assert m.loc[full, "open_time"].iloc[0] == pd.Timestamp(T0 + 61 * MIN, unit="ms", tz="UTC")
    _, day = trades_to_minutes(t, "X")  # default 24h window: 3 h of data never fill it
    assert day["order_p999_24h"].isna().all() and (day["large_orders"] == 0).all()


def test_no_look_ahead_changing_later_trades_leaves_earlier_minutes_alone():
    t = random_trades(5, hours=6, rate_per_min=2)
    base_c, base_m = trades_to_minutes(t, "X", order_window="1h")
    rng = np.random.default_rng(0)
    for m in [70, 130, 200, 301]:
        cut = T0 + (m + 1) * MIN  # trades from here on are after minute m
        later = t["timestamp"] >= cut
        changed = t.copy()
        changed.loc[later, "amount"] *= rng.uniform(0.1, 50, later.sum())
        changed.loc[later, "price"] *= 1.5
        changed.loc[later, "side"] = np.where(changed.loc[later, "side"] == "buy", "sell", "buy")
        extra = trades([(cut + 1, 1.0, 1e9, "buy"), (cut + 90 * MIN, 2.0, 5.0, "sell")])
        n = int((base_m["open_time"] < pd.Timestamp(cut, unit="ms", tz="UTC")).sum())
        assert n == m + 1
        for variant in (changed, pd.concat([changed, extra]), t[~later]):
            c, mm = trades_to_minutes(variant, "X", order_window="1h")
            k = min(n, len(mm))  # without the later trades the series may end before minute m
            assert k >= n - 2
            pd.testing.assert_frame_equal(c.iloc[:k], base_c.iloc[:k], check_exact=True)
            pd.testing.assert_frame_equal(mm.iloc[:k], base_m.iloc[:k], check_exact=True)


def test_bad_arguments_are_named():
    t = trades([(T0, 1.0, 1.0, "buy")])
    with pytest.raises(SourceError, match=r"1m candles only, not '5m'"):
        trades_to_minutes(t, "X", interval="5m")
    with pytest.raises(SourceError, match="order_window 'a day' is not a duration"):
        trades_to_minutes(t, "X", order_window="a day")
    with pytest.raises(SourceError, match="quantile 1.5 must be between 0 and 1"):
        trades_to_minutes(t, "X", quantile=1.5)
    with pytest.raises(SourceError, match=r"lacks columns \['side'\]"):
        trades_to_minutes(t.drop(columns="side"), "X")
    with pytest.raises(SourceError, match="side 'bid' is not 'buy' or 'sell'"):
        trades_to_minutes(t.assign(side="bid"), "X")
    c, m = trades_to_minutes(t.iloc[:0], "X")
    assert c.empty and m.empty and list(m.columns) == MINUTE_COLUMNS


def test_a_non_numeric_price_is_kept_as_nan_for_validation_to_reject(tmp_path):
    p = ccxt_csv(tmp_path / "t.csv", [(T0 + 1, 1.0, 2.0, "buy"), (T0 + 2, 1.5, 2.0, "sell")])
    p.write_text(p.read_text().replace(",1.5,", ",oops,"))
    t = read_trades(p)
    assert np.isnan(t["price"].iloc[1])
    c, _ = trades_to_minutes(t, "X")
    assert np.isnan(c["close"].iloc[0]) and np.isnan(c["quote_asset_volume"].iloc[0])


# ---------------------------------------------------------------- reading files


def test_ccxt_file_duplicates_dropped_and_sorted(tmp_path):
    rows = [
        (T0 + 5, 2.0, 3.0, "sell"),
        (T0 + 1, 1.0, 1.0, "buy"),
        (T0 + 1, 1.0, 1.0, "buy"),  # exact duplicate (downloader paging): dropped
        (T0 + 1, 1.0, 1.5, "buy"),  # differs in amount: a real trade
    ]
    p = ccxt_csv(tmp_path / "t.csv", rows)
    t = read_trades(p)
    assert list(t.columns) == TRADE_COLUMNS
    assert t["timestamp"].tolist() == [T0 + 1, T0 + 1, T0 + 5]  # stable: file order within a ms
    assert t["amount"].tolist() == [1.0, 1.5, 3.0]
    assert t["side"].tolist() == ["buy", "buy", "sell"]
    assert t["n_trades"].tolist() == [1, 1, 1]
    assert str(t["timestamp"].dtype) == "int64" and str(t["price"].dtype) == "float64"
    assert t.attrs["duplicates_dropped"] == 1 and t.attrs["rows_read"] == 4 and t.attrs["layout"] == "ccxt"
    z = zipped(tmp_path / "t.zip", {"t.csv": p.read_text()})
    pd.testing.assert_frame_equal(read_trades(z), t)


def agg_lines(rows: list[tuple], extra: bool = False) -> list[str]:
    """(id, price, qty, first, last, time, is_buyer_maker) → CSV lines (spot dumps add is_best_match)."""
    return [",".join(map(str, r)) + (",True" if extra else "") for r in rows]


AGG_ROWS = [
    (100, "10.0", "1.0", 500, 502, T0 + 1_000, "False"),  # 3 trades, taker bought
    (101, "10.5", "2.0", 503, 503, T0 + 1_000, "True"),  # taker sold
    (102, "11.0", "0.5", 504, 507, T0 + MIN + 2, "false"),
]


def test_aggtrades_layouts_give_the_same_frame(tmp_path):
    header = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
    futures = tmp_path / "f.csv"
    futures.write_text("\n".join([header, *agg_lines(AGG_ROWS)]) + "\n")
    spot = zipped(tmp_path / "s.zip", {"s.csv": "\n".join(agg_lines(AGG_ROWS, extra=True)) + "\n"})
    spot_us = tmp_path / "s_us.csv"  # 2025+ spot dumps: transact_time in µs
    us_rows = [(*r[:5], r[5] * 1000 + 999, r[6]) for r in AGG_ROWS]
    spot_us.write_text("\n".join(agg_lines(us_rows, extra=True)) + "\n")
    want = read_trades(futures)
    assert want["n_trades"].tolist() == [3, 1, 4]
    assert want["side"].tolist() == ["buy", "sell", "buy"]  # is_buyer_maker True: the taker sold
    assert want["amount"].tolist() == [1.0, 2.0, 0.5]
    assert want["timestamp"].tolist() == [T0 + 1_000, T0 + 1_000, T0 + MIN + 2]
    assert want.attrs["layout"] == "aggTrades"
    for p in (spot, spot_us):
        pd.testing.assert_frame_equal(read_trades(p), want)
    c, m = trades_to_minutes(want, "X")
    assert c["number_of_trades"].tolist() == [4, 4]
    assert m["n_orders"].tolist() == [2, 1]


def test_aggtrades_duplicates_by_id(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("\n".join(agg_lines([*AGG_ROWS, AGG_ROWS[1]])) + "\n")
    t = read_trades(p)
    assert len(t) == 3 and t.attrs["duplicates_dropped"] == 1
    clash = (101, "10.6", "2.0", 503, 503, T0 + 1_000, "True")
    p.write_text("\n".join(agg_lines([*AGG_ROWS, clash])) + "\n")
    with pytest.raises(SourceError, match=r"a.csv: line 4: agg_trade_id 101 appears again with different"):
        read_trades(p)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.zip", None, "trade file not found: .*missing.zip"),
        ("bad.zip", "not a zip", r"bad.zip: not a valid zip archive"),
        ("t.parquet", "x", r"unsupported file type '.parquet'"),
        ("empty.csv", "\n\n", r"empty.csv: empty file"),
        ("head.csv", CCXT_HEADER + "\n", r"head.csv: header but no rows"),
        (
            "cols.csv",
            "symbol,timestamp,datetime,price,amount\nBRD/BTC,1614013209849,x,1.0,2.0\n",
            r"cols.csv: line 1: header lacks columns \['side'\]",
        ),
        (
            "ts.csv",
            CCXT_HEADER + "\nBRD/BTC,1614013209849,x,buy,1.0,2.0,2.0\nBRD/BTC,soon,x,buy,1.0,2.0,2.0\n",
            r"ts.csv: line 3: column 'timestamp' has non-integer value 'soon'",
        ),
        (
            "sec.csv",
            CCXT_HEADER + "\nBRD/BTC,1614013209,x,buy,1.0,2.0,2.0\n",
            r"sec.csv: line 2: timestamp 1614013209 is not epoch ms or µs",
        ),
        (
            "side.csv",
            CCXT_HEADER + "\nBRD/BTC,1614013209849,x,bid,1.0,2.0,2.0\n",
            r"side.csv: line 2: side 'bid' is not 'buy' or 'sell'",
        ),
        (
            "wide.csv",
            CCXT_HEADER + "\nBRD/BTC,1614013209849,x,buy,1.0,2.0,2.0,7,8\n",
            r"wide.csv: line 2: expected 7 comma-separated fields, found 9",
        ),
        ("agg5.csv", "1,2.0,3.0,4,5\n", r"agg5.csv: line 1: 5 fields; a Binance aggTrades row has 7"),
        (
            "agghead.csv",
            "agg_trade_id,price,qty,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n1,1,1,1,1,1,1\n",
            r"agghead.csv: line 1: unrecognised aggTrades header",
        ),
        (
            "maker.csv",
            f"1,1.0,1.0,5,5,{T0},maybe\n",
            r"maker.csv: line 1: is_buyer_maker 'maybe' is not true/false",
        ),
        ("ids.csv", f"1,1.0,1.0,5,4,{T0},true\n", r"ids.csv: line 1: last_trade_id 4 < first_trade_id 5"),
        ("time.csv", "1,1.0,1.0,5,5,,true\n", r"time.csv: line 1: column 'transact_time' has non-integer"),
    ],
)
def test_structural_damage_is_a_source_error_naming_file_and_problem(tmp_path, name, content, message):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(SourceError, match=message):
        read_trades(p)


def test_a_zip_must_hold_one_csv(tmp_path):
    z = zipped(tmp_path / "two.zip", {"a.csv": "x", "b.csv": "y"})
    with pytest.raises(SourceError, match=r"two.zip: expected one CSV inside the zip, found 2 files"):
        read_trades(z)


# ---------------------------------------------------------------- the source: several files


def test_source_protocol_fetch_and_last_open_time(tmp_path):
    p = ccxt_csv(tmp_path / "a.csv", [(T0 + i * 20_000, 1.0 + i, 1.0, "buy") for i in range(10)])
    src = get_source("trades", {"paths": [str(p)]})
    assert isinstance(src, Source)
    candles = src.fetch("BRDBTC", "1m")
    assert len(candles) == 4 and candles["volume"].tolist() == [3.0, 3.0, 3.0, 1.0]
    later = src.fetch("BRDBTC", "1m", last_open_time=candles["open_time"].iloc[1])
    pd.testing.assert_frame_equal(later, candles.iloc[2:].reset_index(drop=True))
    minutes = src.fetch_minutes("BRDBTC", "1m", last_open_time=candles["open_time"].iloc[1])
    assert minutes["open_time"].tolist() == later["open_time"].tolist()
    with pytest.raises(SourceError, match="no trade files given for BRDBTC 1m"):
        get_source("trades", {"paths": []}).fetch("BRDBTC", "1m")
    with pytest.raises(SourceError, match="1m candles only"):
        src.fetch("BRDBTC", "1h")
    with pytest.raises(SourceError, match="source 'trades': option order_window"):
        get_source("trades", {"paths": [str(p)], "order_window": "-1h"})


def test_overlapping_files_join_when_they_agree(tmp_path):
    t = random_trades(11, hours=6)
    rows = list(zip(t["timestamp"], t["price"], t["amount"], t["side"], strict=True))
    ts = t["timestamp"].to_numpy()
    cut1 = int(np.searchsorted(ts, ts[len(ts) // 3]))  # files start and end on a millisecond boundary
    cut2 = int(np.searchsorted(ts, ts[2 * len(ts) // 3]))
    whole = ccxt_csv(tmp_path / "whole.csv", rows)
    a = ccxt_csv(tmp_path / "a.csv", rows[:cut2])
    b = ccxt_csv(tmp_path / "b.csv", rows[cut1:])
    one = build_series([whole], "X", order_window="1h")
    two = build_series([b, a], "X", order_window="1h")  # order of paths does not matter
    pd.testing.assert_frame_equal(two.candles, one.candles)
    pd.testing.assert_frame_equal(two.minutes, one.minutes)
    assert (two.trades, two.segments) == (one.trades, 1)
    assert two.overlapping > 0 and two.orders == one.orders
    disagree = ccxt_csv(tmp_path / "c.csv", [(ts, p * 1.01, q, s) for ts, p, q, s in rows[cut1:]])
    with pytest.raises(SourceError, match=r"c.csv overlaps .*a.csv from .* but the trades there differ"):
        build_series([a, disagree], "X")


def test_files_far_apart_stay_separate_series(tmp_path):
    a = ccxt_csv(tmp_path / "a.csv", [(T0 + 1, 1.0, 1.0, "buy"), (T0 + MIN + 1, 2.0, 1.0, "sell")])
    b = ccxt_csv(tmp_path / "b.csv", [(T0 + 90 * MIN, 3.0, 1.0, "buy")])
    abut = ccxt_csv(tmp_path / "c.csv", [(T0 + 2 * MIN + 59_000, 4.0, 1.0, "buy")])
    s = build_series([a, b], "X")
    assert s.segments == 2 and len(s.candles) == 3  # no 88 invented zero-volume minutes between them
    assert s.candles["close"].tolist() == [1.0, 2.0, 3.0]
    s = build_series([a, abut], "X")  # abutting to the minute: one series
    assert s.segments == 1 and s.candles["close"].tolist() == [1.0, 2.0, 4.0]


# ---------------------------------------------------------------- store


def test_trade_minutes_round_trip_and_idempotent_upsert(tmp_path):
    store = CandleStore(tmp_path / "s.duckdb")
    assert store.load_trade_minutes("X").empty  # no file yet
    _, m = trades_to_minutes(random_trades(3, hours=3), "X", order_window="1h")
    assert m["order_p999_24h"].isna().any() and m["order_p999_24h"].notna().any()
    assert store.upsert_trade_minutes("X", "1m", m) == len(m)
    got = store.load_trade_minutes("X", "1m")
    pd.testing.assert_frame_equal(got, m, check_exact=True)  # NaN quantiles come back as NaN
    assert store.merge_trade_minutes("X", "1m", m) == MergeResult(0, 0)  # same frame again: nothing written
    changed = m.copy()
    changed.loc[10, "large_orders"] += 1
    assert store.merge_trade_minutes("X", "1m", changed) == MergeResult(0, 1)
    start, end = m["open_time"].iloc[5], m["open_time"].iloc[9]
    assert (
        store.load_trade_minutes("X", "1m", start, end)["open_time"].tolist()
        == m["open_time"].iloc[5:10].tolist()
    )
    assert (
        store.load_trade_minutes("Y").empty and list(store.load_trade_minutes("Y").columns) == MINUTE_COLUMNS
    )
    assert store.count("X", "1m") == 0  # the candles table is separate
    assert store.upsert_trade_minutes("Y", "1m", m.iloc[:3]) == 3
    assert len(store.load_trade_minutes("X")) == len(m)


def test_bad_trade_minute_frames_are_refused_store_unchanged(tmp_path):
    store = CandleStore(tmp_path / "s.duckdb")
    _, m = trades_to_minutes(random_trades(4, hours=1), "X")
    store.upsert_trade_minutes("X", "1m", m)
    with pytest.raises(StoreError, match=r"lacks columns \['large_orders'\]"):
        store.upsert_trade_minutes("X", "1m", m.drop(columns="large_orders"))
    with pytest.raises(StoreError, match="duplicate open_times"):
        store.upsert_trade_minutes("X", "1m", pd.concat([m, m.iloc[:1]]))
    with pytest.raises(StoreError, match="unknown interval '7m'"):
        store.upsert_trade_minutes("X", "7m", m)
    with pytest.raises(StoreError, match="does not fit"):
        store.upsert_trade_minutes("X", "1m", m.assign(n_orders=np.nan))
    pd.testing.assert_frame_equal(store.load_trade_minutes("X"), m)


def test_a_candles_only_store_gets_no_trade_minutes_table(tmp_path):
    store = CandleStore(tmp_path / "s.duckdb")
    c, _ = trades_to_minutes(random_trades(4, hours=1), "X")
    assert store.upsert(c) == len(c)
    with store.connect(read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert tables == {"candles"}
    assert store.load_trade_minutes("X").empty
