"""Synthetic candles with the stylised facts of real 1-minute crypto data.

The series is a deterministic function of (symbol, interval, seed) over an unbounded timeline that
starts at the Unix epoch: `generate(start, n)` returns the slice of that timeline, so any window is
reproducible and consecutive windows join bit-exactly (`kairos ingest synthetic` can append "the
next day" by asking for the window that starts one candle after the last stored one).

How random access works. The timeline is cut into UTC days ("blocks"). Every block draws its own
random numbers from a generator seeded by (seed, symbol, interval, block), so a block can be built
without simulating the ones before it. Two kinds of memory cross block boundaries:

* price level and daily volatility live on the block level: one short AR/OU recursion per day
  (~20k days since 1970, a few milliseconds), giving each day's opening mid price and its total
  log return `T_b`; intraday returns are bridged to sum to exactly `T_b`, so day b closes where
  day b+1 opens;
* intraday volatility clustering is a truncated (one-day) exponential filter of log-volatility
  shocks, so a block needs only its own and the previous block's shocks.

Stylised facts (asserted in tests/unit/test_sources.py): Student-t shocks under stochastic volatility
(kurtosis >> 3), autocorrelation of |returns| positive over tens of lags, a 24h cycle in volume and
volatility (peak around 15:00 UTC, the US open), rare volume bursts with larger moves, a bid-ask
bounce (close = mid ± half-spread: slightly negative lag-1 return autocorrelation), and a weak
predictable component: the next return loads on this candle's order-flow imbalance, which shows
in `taker_buy_ratio`.

Optionally (`SynthParams.reversal`, default 0.0: off, bit-identical to the series without it) a
planted reversal effect: the mid returns follow an AR(1) with that coefficient (e.g. -0.1), the
filter's memory truncated at one day (it reads day b-1's raw returns, hence day b-2's last flow).
Likewise optional (`SynthParams.wick`, default 0.0: off) a planted rejection-wick signal: the next mid
return loads on this candle's lower wick minus its upper wick (the high/low draws, in units of the
candle's vol), which the candle's high and low show (e.g. `price_position`). The wicks are drawn
independently of the returns, so no rule on past returns sees it; a model reading the candle's range does.

A changed market (`SynthParams.change_from`, a UTC day; default None: no change): the planted reversal and
wick signal apply only from that day (without `change_from` they apply throughout), so a model retrained
after the change has a real edge over one trained before it (`kairos demo`). Days before it are
bit-identical to the series without the planted effects.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.signal import lfilter

from pipelines.contracts.errors import SourceError
from pipelines.contracts.schema import INTERVALS, normalize_candles
from pipelines.sources import SourceConfig

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")  # timeline origin: candle index 0
ANCHOR = pd.Timestamp("2024-01-01", tz="UTC")  # `start_price` is the mid price at this instant
N_BLOCKS = 100_000  # days of timeline (1970 → 2243)
MINUTES_PER_BLOCK = 1440  # a block is one UTC day, whatever the interval


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator; defaults are calibrated on FILUSDT 1m (Aug–Nov 2023)."""

    vol_1m: float = 8e-4  # per-minute log-return volatility (FIL: 1.0e-3 incl. jumps)
    t_df: float = 3.0  # Student-t degrees of freedom of return shocks: fat tails
    sv_phi_1m: float = 0.995  # per-minute persistence of log-vol (half-life ~2h): clustering
    sv_sd: float = 0.5  # stationary sd of intraday log-vol
    day_phi: float = 0.9  # day-to-day persistence of the daily vol level
    day_sd: float = 0.3  # stationary sd of the daily log-vol level
    level_phi: float = 0.999  # daily mean reversion of log price (keeps centuries of prices finite)
    half_spread: float = 0.22  # bounce half-spread, in units of the candle's vol
    flow_rho: float = 0.4  # corr(order flow, same-candle return): buyers push price up
    flow_kappa: float = 0.06  # loading of the next return on this candle's flow: the weak signal
    vol_season_amp: float = 0.25  # log amplitude of the 24h volatility cycle
    volume_season_amp: float = 0.2  # log amplitude of the 24h volume cycle, on top of 0.8 x the vol cycle
    season_peak_hour: float = 15.0  # UTC hour of the daily peak
    volume_1m: float = 20_000.0  # typical base-asset volume per minute
    burst_prob: float = 0.003  # chance per candle of a volume burst (~4 a day at 1m)
    burst_alpha: float = 1.5  # Pareto tail of burst size
    trade_size: float = 88.0  # base units per trade (FIL: median count/volume ≈ 1/88)
    # AR(1) coefficient of consecutive mid-price returns (negative = a planted reversal effect); 0.0
    # (the default) leaves the series bit-identical to the generator without it.
    reversal: float = 0.0
    # Loading of the next mid return on this candle's (lower wick - upper wick) / sqrt(2), wicks in units of
    # the candle's vol (a rejection-wick signal); 0.0 (the default) leaves the series as it was.
    wick: float = 0.0
    # A changed market from this UTC day on (ISO date, e.g. "2024-02-01"): the reversal and wick signal
    # apply only from it. None: they apply throughout.
    change_from: str | None = None

    def __post_init__(self) -> None:
        if not -1.0 < self.reversal < 1.0:
            raise SourceError(
                f"synthetic reversal={self.reversal!r} must lie in (-1, 1) (an AR(1) coefficient)"
            )
        if self.change_from is not None:
            try:
                pd.Timestamp(self.change_from)
            except (ValueError, TypeError):
                raise SourceError(
                    f"synthetic change_from={self.change_from!r} is not a date; use ISO, e.g. '2024-02-01'"
                ) from None

    def changed(self, block: int) -> bool:
        """Whether day `block` (days since the epoch) lies in the changed market (from `change_from`)."""
        if self.change_from is None:
            return False
        t = pd.Timestamp(self.change_from)
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        return block >= (t - EPOCH) // pd.Timedelta(days=1)

    def reversal_on(self, block: int) -> bool:
        """Whether the planted reversal applies on day `block`."""
        return bool(self.reversal) and (self.change_from is None or self.changed(block))

    def wick_on(self, block: int) -> float:
        """The wick loading of day `block` (0.0 before `change_from`)."""
        return self.wick if self.change_from is None or self.changed(block) else 0.0


# `kairos demo`'s market: a learnable order-flow signal (the next return loads 0.2 on this candle's flow,
# which `taker_buy_ratio` shows), and from the demo's change day a planted rejection-wick signal that a
# model trained before the change cannot know. Pass with `change_from` (SyntheticConfig.params).
DEMO_SIGNAL: dict[str, float] = {"flow_kappa": 0.2, "wick": 0.4}


def is_synthetic_symbol(symbol: str) -> bool:
    """True when `symbol` is labelled synthetic (contains "SYNTH", e.g. "SYNTHUSDT")."""
    return isinstance(symbol, str) and "SYNTH" in symbol.upper()


def _check_symbol(symbol: str) -> None:
    if not is_synthetic_symbol(symbol):
        raise SourceError(
            f"synthetic symbol {symbol!r} must contain 'SYNTH' so made-up candles can never pass for a "
            "real market; use e.g. 'SYNTHUSDT'"
        )


def _interval_minutes(interval: str) -> int:
    if interval not in INTERVALS:
        raise SourceError(f"unknown interval {interval!r} for synthetic data; use one of {sorted(INTERVALS)}")
    return int(INTERVALS[interval] / pd.Timedelta(minutes=1))


def _seed_key(seed: int, symbol: str, iv_min: int) -> list[int]:
    # crc32, not hash(): Python's str hash is salted per process.
    return [int(seed) & 0xFFFFFFFF, zlib.crc32(symbol.upper().encode()), iv_min]


def _block_level(key: list[int], p: SynthParams) -> dict[str, np.ndarray]:
    """Day-level series over the whole timeline, each shape (N_BLOCKS,) or (N_BLOCKS + 1,).

    g: daily log-vol level; C: log price relative to day 0 (C[b] = mid at the start of day b);
    T: total log return of day b = C[b+1] - C[b].
    """
    rng = np.random.default_rng([*key, 1, 0])
    eg = rng.standard_normal(N_BLOCKS)
    ed = rng.standard_t(4.0, N_BLOCKS) / np.sqrt(2.0)  # unit variance, fat-tailed daily moves
    g = lfilter([p.day_sd * np.sqrt(1 - p.day_phi**2)], [1.0, -p.day_phi], eg)
    day_vol = p.vol_1m * np.sqrt(MINUTES_PER_BLOCK) * np.exp(g)
    level = lfilter([1.0], [1.0, -p.level_phi], day_vol * ed)  # level[b] = C[b+1]
    C = np.concatenate([[0.0], level])
    return {"g": g, "C": C, "T": np.diff(C)}


def _draws(key: list[int], block: int, m: int, p: SynthParams) -> dict[str, np.ndarray]:
    """The random numbers of one block (m candles), a pure function of (key, block)."""
    rng = np.random.default_rng([*key, 0, block])
    return {
        "z": rng.standard_t(p.t_df, m) / np.sqrt(p.t_df / (p.t_df - 2)),  # unit-variance shocks
        "eta": rng.standard_normal(m),  # log-vol shocks
        "flow": rng.standard_normal(m),  # order-flow imbalance
        "q": rng.integers(0, 2, m) * 2.0 - 1.0,  # which side of the spread the close prints on
        "vnoise": rng.standard_normal(m),
        "burst_u": rng.random(m),
        "burst_size": rng.pareto(p.burst_alpha, m),
        "hi": rng.exponential(1.0, m),
        "lo": rng.exponential(1.0, m),
        "tbr_noise": rng.standard_normal(m),
        "trade_noise": rng.standard_normal(m),
    }


def _calm_vol(b: int, prev: dict, cur: dict, lvl: dict, p: SynthParams, iv_min: int, m: int) -> np.ndarray:
    """Per-candle log-return vol of day b before bursts, shape (m,); needs day b-1's shocks only.

    Always computed by this one function from the same inputs, so a block and its successor
    (which needs the block's last value for the bounce of its first open) agree bit for bit.
    """
    phi = p.sv_phi_1m**iv_min
    taps = p.sv_sd * np.sqrt(1 - phi**2) * phi ** np.arange(m)  # truncated AR(1) impulse response
    h = np.convolve(np.concatenate([prev["eta"], cur["eta"]]), taps)[m : 2 * m]  # intraday log-vol
    frac = np.arange(m) / m
    g = lvl["g"][b] + (lvl["g"][b + 1] - lvl["g"][b]) * frac  # daily level, interpolated: no jump at 00:00
    hour = (np.arange(m) * iv_min / 60.0) % 24
    season = np.cos(2 * np.pi * (hour - p.season_peak_hour) / 24)
    return p.vol_1m * np.sqrt(iv_min) * np.exp(g + h - p.sv_sd**2 / 2 + p.vol_season_amp * season)


def _raw_returns(prev: dict, cur: dict, calm: np.ndarray, p: SynthParams, b: int) -> np.ndarray:
    """Mid log returns of day b before the bridge (and before any planted reversal), shape (m,).

    `prev` holds the previous day's draws: its last order flow (and, with a wick signal, its last wicks)
    load on this day's first return.
    """
    sigma = calm * np.where(cur["burst_u"] < p.burst_prob, 2.0, 1.0)
    flow = cur["flow"]
    flow_prev = np.concatenate([prev["flow"][-1:], flow[:-1]])
    r = sigma * (p.flow_rho * flow + np.sqrt(1 - p.flow_rho**2) * cur["z"]) + p.flow_kappa * sigma * flow_prev
    wick = p.wick_on(b)
    if wick:  # lower minus upper wick of the candle before, unit variance: a long upper wick predicts down
        lower = np.concatenate([prev["lo"][-1:], cur["lo"][:-1]])
        upper = np.concatenate([prev["hi"][-1:], cur["hi"][:-1]])
        r = r + wick * sigma * (lower - upper) / np.sqrt(2.0)
    return r


def _block_candles(
    b: int,
    prev: dict,
    cur: dict,
    calm: np.ndarray,
    prev_calm_last: float,
    lvl: dict,
    p: SynthParams,
    iv_min: int,
    log_p0: float,
    prev_raw: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All fields of the m candles of day b, from its draws, the previous day's and their vols.

    `prev_raw` (needed only when a planted reversal applies on day b): day b-1's `_raw_returns`, the
    memory of the AR(1) reversal filter (truncated at one day: |reversal|^m is nil).
    """
    m = len(calm)
    hour = (np.arange(m) * iv_min / 60.0) % 24
    season = np.cos(2 * np.pi * (hour - p.season_peak_hour) / 24)
    burst = cur["burst_u"] < p.burst_prob
    sigma = calm * np.where(burst, 2.0, 1.0)
    h = np.log(calm)  # log-vol incl. daily level and season: drives volume too

    flow = cur["flow"]
    r = _raw_returns(prev, cur, calm, p, b)
    if p.reversal_on(b):  # r_t <- r_t + reversal * r_{t-1}, the filter started a day back
        assert prev_raw is not None, "a planted reversal needs the previous day's raw returns"
        r = lfilter([1.0], [1.0, -p.reversal], np.concatenate([prev_raw, r]))[m:]
    # Bridge: spread the gap to the day's total in proportion to variance, so day b ends at C[b+1].
    w = sigma**2 / np.sum(sigma**2)
    r = r + (lvl["T"][b] - r.sum()) * w
    day_open = log_p0 + lvl["C"][b]  # the same float expression the previous block ends on
    mid = day_open + np.cumsum(r)  # log mid at each candle's close
    mid[-1] = log_p0 + lvl["C"][b + 1]  # exactly where day b+1 opens (cumsum rounding aside)
    # Bid-ask bounce: the close prints half a spread above or below mid; spreads widen with vol.
    close = np.exp(mid + p.half_spread * calm * cur["q"])
    first_open = np.exp(day_open + p.half_spread * prev_calm_last * prev["q"][-1])
    open_ = np.concatenate([[first_open], close[:-1]])
    high = np.maximum(open_, close) * np.exp(0.5 * sigma * cur["hi"])
    low = np.minimum(open_, close) * np.exp(-0.5 * sigma * cur["lo"])

    log_volume = (
        np.log(p.volume_1m * iv_min)
        + p.volume_season_amp * season
        + 0.8 * (h - np.log(p.vol_1m * np.sqrt(iv_min)))
        + 0.3 * np.log1p(np.abs(cur["z"]))
        + 0.7 * cur["vnoise"]
    )
    volume = np.exp(log_volume) * np.where(burst, 5.0 + 8.0 * cur["burst_size"], 1.0)
    volume = np.maximum(np.round(volume, 1), 0.1)
    tbr = 1.0 / (1.0 + np.exp(-(1.2 * flow + 0.6 * cur["tbr_noise"])))
    typical = (high + low + close) / 3.0  # within [low, high] by construction
    quote = volume * typical
    lam = volume / p.trade_size
    trades = np.maximum(1, np.round(lam + np.sqrt(lam) * cur["trade_noise"])).astype(np.int64)
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "quote_asset_volume": quote,
        "number_of_trades": trades,
        "taker_buy_base_asset_volume": volume * tbr,
        "taker_buy_quote_asset_volume": quote * tbr,
    }


def generate(
    symbol: str = "SYNTHUSDT",
    interval: str = "1m",
    start: str | pd.Timestamp = "2024-01-01",
    n: int = 43200,
    seed: int = 7,
    start_price: float = 100.0,
    params: SynthParams = SynthParams(),
) -> pd.DataFrame:
    """The `n` candles of the synthetic series (symbol, interval, seed) opening at `start`.

    Args:
        symbol: must contain "SYNTH" (see `is_synthetic_symbol`).
        interval: a key of `pipelines.contracts.schema.INTERVALS` (all divide a day).
        start: open time of the first candle (UTC if naive); must lie on the interval grid.
        n: number of candles (> 0).
        seed: series identity; the same (symbol, interval, seed, start_price) is the same series.
        start_price: mid price at 2024-01-01T00:00Z; keep it fixed across calls so windows join.
        params: generator knobs (defaults calibrated on FILUSDT 1m).

    Returns:
        A candle-contract frame of n rows, contiguous, identical for identical arguments.
    """
    _check_symbol(symbol)
    iv_min = _interval_minutes(interval)
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise SourceError(f"synthetic n={n!r} must be a positive number of candles")
    if not start_price > 0:
        raise SourceError(f"synthetic start_price={start_price!r} must be positive")
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    step = pd.Timedelta(minutes=iv_min)
    if (t0 - EPOCH) % step != pd.Timedelta(0):
        raise SourceError(
            f"synthetic start {t0} is not on the {interval} grid; use a multiple of {step} after 00:00"
        )
    m = MINUTES_PER_BLOCK // iv_min  # candles per day
    i0 = int((t0 - EPOCH) // step)
    b_first, b_last = i0 // m, (i0 + n - 1) // m
    if b_first < 2 or b_last >= N_BLOCKS - 1:
        raise SourceError(
            f"synthetic window {t0} + {n} x {interval} is outside 1970-01-03 .. 2243; move start"
        )

    key = _seed_key(seed, symbol, iv_min)
    lvl = _block_level(key, params)
    log_p0 = np.log(start_price) - lvl["C"][int((ANCHOR - EPOCH) // pd.Timedelta(days=1))]
    draws = {b: _draws(key, b, m, params) for b in range(b_first - 2, b_last + 1)}
    calm = {
        b: _calm_vol(b, draws[b - 1], draws[b], lvl, params, iv_min, m)
        for b in range(b_first - 1, b_last + 1)
    }
    prev_raw = {  # day b-1's raw returns, the memory of a planted reversal (unused when it is 0)
        b: _raw_returns(draws[b - 2], draws[b - 1], calm[b - 1], params, b - 1)
        if params.reversal_on(b)
        else None
        for b in range(b_first, b_last + 1)
    }
    blocks = [
        _block_candles(
            b,
            draws[b - 1],
            draws[b],
            calm[b],
            float(calm[b - 1][-1]),
            lvl,
            params,
            iv_min,
            log_p0,
            prev_raw[b],
        )
        for b in range(b_first, b_last + 1)
    ]
    cols = {k: np.concatenate([blk[k] for blk in blocks]) for k in blocks[0]}
    lo = i0 - b_first * m
    frame = pd.DataFrame({k: v[lo : lo + n] for k, v in cols.items()})
    frame.insert(0, "open_time", pd.date_range(t0, periods=n, freq=step, unit="ns"))
    frame.insert(0, "interval", interval)
    frame.insert(0, "symbol", symbol)
    return normalize_candles(frame)


def generate_continuation(
    prev: pd.DataFrame, n: int, seed: int = 7, start_price: float = 100.0, params: SynthParams = SynthParams()
) -> pd.DataFrame:
    """The `n` candles that follow `prev` (a frame from `generate` with the same seed/start_price).

    Raises SourceError when `prev` is empty, mixes series, or was not made with this seed and
    start_price (its last close must match the regenerated one): a join would otherwise jump.
    """
    if len(prev) == 0:
        raise SourceError("generate_continuation needs a non-empty previous frame; call generate() first")
    keys = prev[["symbol", "interval"]].drop_duplicates()
    if len(keys) != 1:
        raise SourceError(f"previous frame mixes {len(keys)} (symbol, interval) series; pass one series")
    symbol, interval = str(keys.iloc[0, 0]), str(keys.iloc[0, 1])
    last = pd.Timestamp(prev["open_time"].max())
    check = generate(symbol, interval, last, 1, seed, start_price, params)
    got = float(prev.loc[prev["open_time"] == last, "close"].iloc[-1])
    if not np.isclose(check["close"].iloc[0], got, rtol=1e-12):
        raise SourceError(
            f"previous {symbol} frame ends at close {got} but seed={seed}, start_price={start_price} gives "
            f"{check['close'].iloc[0]}; pass the seed and start_price it was generated with"
        )
    return generate(symbol, interval, last + INTERVALS[interval], n, seed, start_price, params)


class SyntheticConfig(SourceConfig):
    """`kairos ingest synthetic` options."""

    days: float = Field(30.0, gt=0, description="days of candles per fetch")
    seed: int = Field(7, description="series identity: the same seed is the same market")
    start: datetime = Field(
        datetime(2024, 1, 1), description="first open time when nothing is stored (UTC if naive)"
    )
    params: dict[str, float | str | None] = Field(
        default_factory=dict,
        description="SynthParams overrides, e.g. {flow_kappa: 0.2} (the demo plants a learnable signal); "
        "pass the same ones on every fetch, or the series changes where they differ",
    )

    def synth_params(self) -> SynthParams:
        """The generator knobs: the defaults with `params` applied (an unknown knob is named)."""
        known = set(SynthParams.__dataclass_fields__)
        unknown = sorted(set(self.params) - known)
        if unknown:
            raise SourceError(f"synthetic params {unknown} are not SynthParams knobs; known: {sorted(known)}")
        return SynthParams(**self.params)


class SyntheticSource:
    """The synthetic series, continued: each fetch returns the `days` after the newest stored candle
    (bit-exact continuation, see `generate`), or from `start` when nothing is stored."""

    Config = SyntheticConfig

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config

    def fetch(
        self, symbol: str, interval: str, *, last_open_time: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        step = pd.Timedelta(minutes=_interval_minutes(interval))
        n = int(round(self.config.days * pd.Timedelta(days=1) / step))
        if n < 1:
            raise SourceError(
                f"days={self.config.days} is less than one {interval} candle; ask for more days"
            )
        start = pd.Timestamp(last_open_time) + step if last_open_time is not None else self.config.start
        return generate(
            symbol,
            interval=interval,
            start=start,
            n=n,
            seed=self.config.seed,
            params=self.config.synth_params(),
        )


SOURCE = SyntheticSource
