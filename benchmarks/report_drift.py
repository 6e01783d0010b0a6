"""Drift alarm replay on real data: false alarms, planted shifts and an uncalibrated KS baseline.

For FILUSDT and NEARUSDT (every 1m dump in ../shared/data): train the default LightGBM on the first 30
days (walk-forward window 30 days, 2 folds to save time; the training code builds the reference profile
and calibrates its alarm), compute the features and outputs of every later candle (`live_frame`) and
replay the alarm over them, in two settings:

- static: the profile trained on the first 30 days watches every later day (months: the price level
  and volume regimes move far from August's, so alarms here are mostly real drift, listed by column);
- daily: the profile and its alarm are rebuilt every day from the 30 days before it (as the daily
  retraining does; the outputs are those of the one trained model), so the data watched is never more
  than a day past its profile: the false-alarm rate a served model sees.

Planted shifts: the candles' volume fields (volume, quote volume, taker buy base/quote) x1.5, x2, x3 from
a start time, every 5 days of the replay; detection delay = minutes from the start to the close of the
newest candle of the first firing window, within 3 days. A start counts as clean when the same replay
without the shift raises no alarm in those 3 days; rates and delays are over clean starts.

Baselines on the same windows, uncalibrated: scipy's two-sample KS test (asymptotic) per column at
p < 0.05 against the profile's reference rows, evaluated every 360 rows (subsampled: ~11 k tests per
symbol and setting), and the textbook rule PSI > 0.2 at every evaluation.

    python benchmarks/report_drift.py [--symbols FILUSDT,NEARUSDT] [--grid]

--grid also compares alarm designs (window, statistic, consecutive) in the daily setting and writes
benchmarks/results/drift_replay_grid.json. Writes benchmarks/results/drift_replay.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DAY = 1440
TRAIN_DAYS = 30
VOLUME_FIELDS = (
    "volume",
    "quote_asset_volume",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)
SIZES = (1.5, 2.0, 3.0)
START_EVERY_DAYS = 5
MAX_DELAY_MIN = 3 * DAY
KS_STEP = 360
WATCH_OUTPUTS_DAILY = False


def plant_volume(candles: pd.DataFrame, start: pd.Timestamp, size: float) -> pd.DataFrame:
    """The candles with every volume field x `size` from `start` on (prices untouched)."""
    out = candles.copy()
    at = pd.to_datetime(out["open_time"], utc=True) >= start
    for f in VOLUME_FIELDS:
        out.loc[at, f] = out.loc[at, f] * size
    return out


def fired_series(replayed: pd.DataFrame) -> pd.Series:
    """Any column fired, per evaluation time."""
    return replayed.groupby("time", sort=True)["fired"].any()


def episode_starts(fired: pd.Series) -> list[pd.Timestamp]:
    f = fired.to_numpy(bool)
    return list(fired.index[f & ~np.r_[False, f[:-1]]])


def train(symbol: str, candles: pd.DataFrame):
    """The default LightGBM on the first TRAIN_DAYS of candles, timing the reference profile apart."""
    from pipelines.config import load_training_config
    from pipelines.training import walk_forward as wf

    cfg = load_training_config(REPO / "configs", {"walk_forward": {"max_folds": 2}})
    timing: dict[str, float] = {}
    build = wf._reference_profile

    def timed(*a, **k):
        t = time.perf_counter()
        out = build(*a, **k)
        timing["profile_s"] = time.perf_counter() - t
        return out

    wf._reference_profile = timed
    try:
        t0 = time.perf_counter()
        res = wf.train_walk_forward(candles.iloc[: TRAIN_DAYS * DAY], symbol=symbol, interval="1m", cfg=cfg)
        timing["train_s"] = time.perf_counter() - t0
    finally:
        wf._reference_profile = build
    return res.onnx_bytes, res.manifest, timing


class Replayer:
    """One symbol: its candles, model, live frame and the profile(s) watching each time."""

    def __init__(
        self, symbol: str, candles: pd.DataFrame, onnx: bytes, manifest, setting: str, alarm_kw: dict
    ):
        from pipelines.monitoring.drift import live_frame
        from pipelines.training.predict import history_rows

        self.symbol, self.candles, self.onnx, self.manifest = symbol, candles, onnx, manifest
        self.setting, self.alarm_kw = setting, alarm_kw
        self.times = pd.to_datetime(candles["open_time"], utc=True).reset_index(drop=True)
        self.live = live_frame(onnx, manifest, candles)
        self.kinds = {n: c.kind for n, c in ((c.name, c) for c in manifest.profile().columns)}
        self.history_rows = history_rows(manifest)
        self.trained = manifest.profile()
        self.start = self.times[TRAIN_DAYS * DAY]  # first candle after the training candles
        if setting == "daily":  # profiles are rebuilt at midnight: watch whole days
            self.start = self.start.ceil("D")
        self._daily: dict[pd.Timestamp, object] = {}
        # a rebuilt profile watches features only in the daily setting: the one trained model's outputs on
        # months-later prices are not what the daily retrained model would output
        outputs = setting != "daily" or WATCH_OUTPUTS_DAILY
        self.watch = [n for n, k in self.kinds.items() if k == "feature" or outputs]

    def profile_at(self, t: pd.Timestamp):
        """The profile watching time t: the trained one (static), or the one rebuilt at t's midnight."""
        from pipelines.monitoring.drift import reference_profile

        if self.setting == "static" and not self.alarm_kw:
            return self.trained
        day = t.floor("D") if self.setting == "daily" else self.start
        if day not in self._daily:
            hist = self.live.loc[
                (self.live.index >= day - pd.Timedelta(days=TRAIN_DAYS)) & (self.live.index < day)
            ]
            hist = hist[self.watch]
            rows = min(self.trained.window["rows"], len(hist))
            self._daily[day] = reference_profile(hist, self.kinds, profile_rows=rows, **self.alarm_kw)
        return self._daily[day]

    def replay_span(self, frame: pd.DataFrame, a: pd.Timestamp, b: pd.Timestamp, profile, textbook=False):
        """Replay `profile` over `frame`, keeping evaluations whose newest row is in [a, b).

        textbook: the uncalibrated rule PSI > 0.2 on every column at each evaluation instead of the alarm."""
        from pipelines.monitoring.drift import replay

        alarm = profile.alarm
        if textbook:
            alarm = {
                **alarm,
                "statistic": "psi",
                "consecutive": 1,
                "thresholds": dict.fromkeys(profile.names(), 0.2),
            }
        lead = (int(alarm["consecutive"]) - 1) * int(alarm["step"])  # earlier evaluations the rule needs
        first = int(np.searchsorted(frame.index, a)) + 1 - lead
        sub = frame.loc[frame.index < b]
        r = replay(profile, sub, alarm=alarm, first_end=max(first, int(alarm["window"])))
        return r[r["time"] >= a]

    def no_shift(self, textbook: bool = False) -> pd.DataFrame:
        """Replay of the unshifted data after training, day by day in the daily setting."""
        end = self.live.index[-1] + pd.Timedelta(minutes=1)
        if self.setting == "static":
            return self.replay_span(self.live, self.start, end, self.profile_at(self.start), textbook)
        parts, day = [], self.start
        while day < end:
            b = min(day + pd.Timedelta(days=1), end)
            parts.append(self.replay_span(self.live, day, b, self.profile_at(day), textbook))
            day += pd.Timedelta(days=1)
        return pd.concat(parts, ignore_index=True)

    def shifted(self, s: pd.Timestamp, size: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(shifted, unshifted) replays over [s, s + MAX_DELAY) with the profile watching s."""
        from pipelines.monitoring.drift import live_frame

        prof = self.profile_at(s)
        alarm = prof.alarm
        i = int(np.searchsorted(self.times, s))
        margin = (
            self.history_rows + int(alarm["window"]) + int(alarm["consecutive"]) * int(alarm["step"]) + 10
        )
        seg = self.candles.iloc[max(0, i - margin) : i + MAX_DELAY_MIN + 1]
        b = s + pd.Timedelta(minutes=MAX_DELAY_MIN)
        frame = live_frame(self.onnx, self.manifest, plant_volume(seg, s, size))
        base = self.live.loc[(self.live.index >= frame.index[0]) & (self.live.index <= frame.index[-1])]
        return self.replay_span(frame, s, b, prof), self.replay_span(base, s, b, prof)


def shift_starts(first: pd.Timestamp, last: pd.Timestamp) -> list[pd.Timestamp]:
    """Every START_EVERY_DAYS from a day after `first`, at varying hours, leaving MAX_DELAY before `last`."""
    out, i = [], 0
    while True:
        s = first.floor("D") + pd.Timedelta(days=1 + START_EVERY_DAYS * i, hours=(7 * i + 3) % 24, minutes=17)
        if s + pd.Timedelta(minutes=MAX_DELAY_MIN) > last:
            return out
        out.append(s)
        i += 1


def planted(rp: Replayer, starts: list[pd.Timestamp]) -> dict:
    res = {}
    for size in SIZES:
        rows = []
        for s in starts:
            sh, base = rp.shifted(s, size)
            f_sh, f_base = fired_series(sh), fired_series(base)
            hit = f_sh[f_sh].index
            delay = (hit[0] - s).total_seconds() / 60 + 1 if len(hit) else None
            rows.append({"start": s.isoformat(), "clean": not bool(f_base.any()), "delay_min": delay})
        clean = [r for r in rows if r["clean"]]
        d = [r["delay_min"] for r in clean if r["delay_min"] is not None]
        res[f"volume_x{size:g}"] = {
            "starts": len(rows),
            "clean_starts": len(clean),
            "detected": len(d),
            "detection_rate": len(d) / len(clean) if clean else None,
            "delay_min_median": float(np.median(d)) if d else None,
            "delay_min_p90": float(np.quantile(d, 0.9)) if d else None,
            "delay_min_max": float(max(d)) if d else None,
            "detected_all_starts": sum(r["delay_min"] is not None for r in rows),
            "per_start": rows,
        }
    return res


def ks_baseline(rp: Replayer) -> dict:
    """scipy ks_2samp (asymptotic) at p < 0.05 per column, windows of the alarm's length every KS_STEP rows."""
    from scipy.stats import ks_2samp

    window = int(rp.trained.alarm["window"])
    live = rp.live.loc[rp.live.index >= rp.start]
    ends = np.arange(window, len(live) + 1, KS_STEP)
    fired_any, share = [], []
    for e in ends:
        t = live.index[e - 1]
        prof = rp.profile_at(t)
        w0, w1 = pd.Timestamp(prof.window["start"]), pd.Timestamp(prof.window["end"])
        ref = rp.live.loc[(rp.live.index >= w0) & (rp.live.index <= w1)]
        win = live.iloc[e - window : e]
        fired = []
        for n in prof.names():
            a, b = ref[n].to_numpy(float), win[n].to_numpy(float)
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            if np.ptp(a) == 0 and np.ptp(b) == 0 and (len(a) == 0 or len(b) == 0 or a[0] == b[0]):
                fired.append(False)  # both constant and equal (spread_bps = 0 on klines)
                continue
            fired.append(bool(ks_2samp(a, b, method="asymp").pvalue < 0.05))
        fired_any.append(any(fired))
        share.append(float(np.mean(fired)))
    f = np.array(fired_any)
    days = len(live) / DAY
    return {
        "evaluations": len(ends),
        "every_rows": KS_STEP,
        "share_evaluations_firing": float(f.mean()),
        "mean_share_of_columns_firing": float(np.mean(share)),
        "episodes_per_30d": float((f & ~np.r_[False, f[:-1]]).sum() / days * 30),
    }


def summarize_no_shift(r: pd.DataFrame, days: float, textbook: pd.DataFrame) -> dict:
    f = fired_series(r)
    starts = episode_starts(f)
    per_col = r[r["fired"]].groupby("column")["time"].nunique().sort_values(ascending=False)
    return {
        "days": round(days, 2),
        "evaluations": int(f.size),
        "alarm_episodes": len(starts),
        "false_alarms_per_30d": len(starts) / days * 30,
        "share_evaluations_firing": float(f.mean()),
        "episode_starts": [s.isoformat() for s in starts],
        "firing_evaluations_by_column": {k: int(v) for k, v in per_col.items()},
        "textbook_psi_gt_0.2_share_evaluations": float(fired_series(textbook).mean()),
    }


def run_symbol(symbol: str, setting: str, candles, onnx, manifest, alarm_kw=None, ks=True) -> dict:
    rp = Replayer(symbol, candles, onnx, manifest, setting, alarm_kw or {})
    t0 = time.perf_counter()
    r = rp.no_shift()
    days = (rp.live.index[-1] - rp.start).total_seconds() / 86400
    out = {
        "setting": setting,
        "replay_start": rp.start.isoformat(),
        "no_shift": summarize_no_shift(r, days, rp.no_shift(True)),
    }
    starts = shift_starts(rp.start, rp.live.index[-1])
    out["planted"] = planted(rp, starts)
    if ks:
        out["ks_baseline"] = ks_baseline(rp)
    any_prof = rp.profile_at(rp.start)
    out["alarm"] = {k: v for k, v in any_prof.alarm.items() if k != "thresholds"}
    out["profiles_built"] = len(rp._daily) or 1
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def table(results: dict) -> None:
    """One line per symbol and setting: alarms without a shift, the baselines, detection per shift size."""
    sizes = list(results[next(iter(results))]["static"]["planted"])
    print(
        f"{'symbol':<9} {'setting':<7} {'days':>4} {'alarms/30d':>10} {'KS p<.05':>9} {'PSI>.2':>7}  "
        + "  ".join(f"{s + ': detected, median delay':>32}" for s in sizes)
    )
    for sym, by in results.items():
        for setting in ("static", "daily"):
            r = by[setting]
            ns, ks = r["no_shift"], r.get("ks_baseline", {})
            cells = []
            for p in r["planted"].values():
                med = "-" if p["delay_min_median"] is None else f"{p['delay_min_median'] / 60:.1f} h"
                cells.append(f"{p['detected']:>2}/{p['clean_starts']:<2} clean, {med:>7}")
            textbook = ns["textbook_psi_gt_0.2_share_evaluations"]
            print(
                f"{sym:<9} {setting:<7} {ns['days']:>4.0f} {ns['false_alarms_per_30d']:>10.2f} "
                f"{ks.get('share_evaluations_firing', float('nan')):>9.0%} {textbook:>7.0%}  "
                + "  ".join(f"{c:>32}" for c in cells)
            )
    print("KS p<.05 / PSI>.2: share of no-shift evaluations where the uncalibrated rule fires on some column")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", default="FILUSDT,NEARUSDT")
    ap.add_argument("--grid", action="store_true", help="also compare alarm designs (daily setting)")
    args = ap.parse_args()

    from pipelines.sources.binance_files import read_many

    t_all = time.perf_counter()
    results, meta = {}, {}
    for symbol in args.symbols.split(","):
        files = sorted(DATA.glob(f"{symbol}-1m-????-??.zip"))
        candles = read_many(files, symbol, "1m").drop_duplicates("open_time", ignore_index=True)
        onnx, manifest, timing = train(symbol, candles)
        meta[symbol] = {
            "candles": len(candles),
            "first": str(candles["open_time"].iloc[0]),
            "last": str(candles["open_time"].iloc[-1]),
            **{k: round(v, 2) for k, v in timing.items()},
            "profile_share_of_training": round(timing["profile_s"] / timing["train_s"], 3),
            "profile_columns": len(manifest.profile().columns),
            "alarm": manifest.profile().alarm,
        }
        results[symbol] = {s: run_symbol(symbol, s, candles, onnx, manifest) for s in ("static", "daily")}
        if args.grid:
            grid = []
            for window, statistic, k in [
                (1440, "ks", 2),
                (1440, "psi", 2),
                (720, "ks", 2),
                (2880, "ks", 2),
                (1440, "ks", 1),
                (1440, "ks", 3),
            ]:
                kw = {"window": window, "statistic": statistic, "consecutive": k}
                r = run_symbol(symbol, "daily", candles, onnx, manifest, kw, ks=False)
                grid.append(
                    {
                        **kw,
                        "no_shift": {k2: v for k2, v in r["no_shift"].items() if k2 != "episode_starts"},
                        "planted": {
                            s: {k2: v for k2, v in p.items() if k2 != "per_start"}
                            for s, p in r["planted"].items()
                        },
                    }
                )
                print(
                    symbol,
                    kw,
                    r["no_shift"]["false_alarms_per_30d"],
                    {s: (p["detection_rate"], p["delay_min_median"]) for s, p in r["planted"].items()},
                )
            out = REPO / "benchmarks" / "results" / "drift_replay_grid.json"
            prev = json.loads(out.read_text()) if out.exists() else {}
            prev[symbol] = grid
            out.write_text(json.dumps(prev, indent=2, default=str))
    table(results)
    doc = {
        "benchmark": "report_drift",
        "wall_s": round(time.perf_counter() - t_all, 1),
        "symbols": meta,
        "results": results,
    }
    path = REPO / "benchmarks" / "results" / "drift_replay.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {path.relative_to(REPO)} in {doc['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
