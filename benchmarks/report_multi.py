"""Multi-symbol walk-forward report: the default returns model vs the best naive rule, per symbol-month.

Run on demand (not part of the test suite); it is the diagnosis table of issue 11. For every real
symbol-month in ../shared/data (FILUSDT 2023-08..11, NEARUSDT 2023-08..10, one monthly Binance 1m dump
each) taken as the TEST period, and every horizon 1..5, it prints and stores

    the model's direction accuracy [95% Wilson CI], the best naive rule (always_up / persistence /
    reversal, highest accuracy on the same rows) with its CI, the model's IC and the reversal rule's IC,

then a summary line counting the (symbol-month, horizon) pairs where the model's lower CI bound is
above the best rule's point estimate ("above"), where its upper bound is below it ("below"), and
the rest ("within noise").

How a month is tested (nothing in the training core changes; only the config and the candle slice):

* the candles are cut so that the newest one is the last minute of the test month, with enough
  history before it for one training window (14 days = `walk_forward.train_size`), the purge and the
  feature warm-up; labels need `lookahead` (= max horizon) candles, so the month's last 5 minutes
  are never tested;
* the month's L labelled rows are tiled by k = round(L / 2880) rolling folds with
  `test_size = step = L // k` rows (≈ 2 days; the < k oldest rows of the month, i.e. its first
  minutes, stay untested), `max_folds = k` and `window = k * test_size + purge + train_size`, so every
  fold trains on the 14 days (minus purge) before its own 2-day test window -- for the first test
  folds of a month that is the previous month's data. Everything else is configs/defaults.yaml +
  configs/tasks/returns.yaml (core27 features, LightGBM 200 trees, num_threads 1);
* a month without 14 days of history before it (the first month of each symbol) cannot be tested
  whole: its first 14 days (+ warm-up, purge) only train, and the folds test the rest of the month
  ("in-month only" in the output, `history_before_month: false` in the JSON);
* the report's numbers are pooled over the month's test folds (`TrainResult.report`); the final
  model fit, ONNX export and parity check that `train_walk_forward` always does are not used here.

`--objective` sets the returns task's training objective (l2 | huber | quantile; LightGBM maps them
in pipelines/models/lightgbm.py). Note LightGBM's huber takes its delta from `alpha`, default 0.9 in
target units: at 1m log-return scale (|r| ~ 1e-3) every residual is inside it and `huber` trains
bit-identically to `l2`. `--huber-delta D` (diagnosis only) patches that delta for the run.

`--synthetic-reversal X` runs the same report on 30 days of synthetic SYNTHUSDT 1m candles
(pipelines/sources/synthetic.py) with a planted AR(1) reversal of coefficient X in the mid returns
(e.g. -0.1); 30 days leave 16 testable days, tested "in-month only".

Results: benchmarks/results/multi_report_<objective>.json (real data) or
multi_report_<objective>_synthetic.json (`huber_d<D>` in the name with --huber-delta), with the load
average (`os.getloadavg()`) before and after.

    python benchmarks/report_multi.py [--objective l2|huber|quantile] [--synthetic-reversal -0.1]
        [--symbols FILUSDT NEARUSDT] [--months 2023-09 ...] [--jobs 1] [--huber-delta D]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RULES = ("always_up", "persistence", "reversal")
ONE_MINUTE = pd.Timedelta(minutes=1)
TARGET_TEST_ROWS = 2880  # the default config's 2-day test window, in 1m candles


def month_files() -> dict[str, list[str]]:
    """{symbol: [YYYY-MM, ...]} of the 1m monthly dumps in ../shared/data."""
    out: dict[str, list[str]] = {}
    for p in sorted(DATA.glob("*-1m-????-??.zip")):
        sym, _, ym = p.stem.split("-", 2)
        out.setdefault(sym, []).append(ym)
    return out


def plan(
    candles: pd.DataFrame,
    test_from: pd.Timestamp,
    test_to: pd.Timestamp,
    cfg: Any,
    task: Any,
    candle: pd.Timedelta = ONE_MINUTE,
) -> dict:
    """Slice of `candles` and walk-forward overrides that test the labelled rows in [test_from, test_to)."""
    from pipelines.features import get_feature_set

    wf = cfg.walk_forward
    warm = max(int(get_feature_set(cfg.features.feature_set).warmup), int(task.warmup), 1)
    times = pd.to_datetime(candles["open_time"], utc=True)
    hist_from = test_from - candle * (wf.train_size + wf.purge + warm + 60)
    sl = candles[(times >= hist_from) & (times < test_to)].reset_index(drop=True)
    t = pd.to_datetime(sl["open_time"], utc=True)
    n = len(sl)
    end = n - task.lookahead  # labelled rows: [warm, end)
    first_test = int((t < test_from).sum())  # rows before the test month (t is sorted)
    month_rows = end - first_test  # labelled rows of the test month
    trainable = end - warm - wf.train_size - wf.purge  # rows a fold could test at all
    test_rows = min(month_rows, trainable)
    if test_rows < TARGET_TEST_ROWS // 2:
        raise ValueError(f"only {test_rows} testable rows in {test_from:%Y-%m}; need more candles")
    k = max(1, round(test_rows / TARGET_TEST_ROWS))
    ts = test_rows // k
    window = k * ts + wf.purge + wf.train_size
    return {
        "candles": sl,
        "overrides": {"walk_forward": {"test_size": ts, "step": ts, "max_folds": k, "window": window}},
        "folds": k,
        "test_size": ts,
        "test_start": t[end - k * ts].isoformat(),
        "test_end": t[end - 1].isoformat(),
        "test_rows": k * ts,
        "history_before_month": test_rows == month_rows,
    }


def btc_1h() -> pd.DataFrame:
    """BTC/USDT 1h (freqtrade feather: date, OHLC, volume) in the candle contract. The file has no quote
    volume, taker-buy volumes or trade counts: quote volume = volume x (h+l+c)/3, taker-buy = half the
    volume (the ratio a constant 0.5, so it carries nothing) and 0 trades; its 28 maintenance gaps are
    left in (rows are treated as consecutive, as for any store with gaps; 28 of 58,419 rows)."""
    df = pd.read_feather(DATA / "BTC_USDT-1h.feather")
    tp = (df["high"] + df["low"] + df["close"]) / 3
    return pd.DataFrame(
        {
            "symbol": "BTCUSDT",
            "interval": "1h",
            "open_time": pd.to_datetime(df["date"], utc=True),
            **{c: df[c].astype(float) for c in ("open", "high", "low", "close", "volume")},
            "quote_asset_volume": df["volume"] * tp,
            "taker_buy_base_asset_volume": df["volume"] / 2,
            "taker_buy_quote_asset_volume": df["volume"] * tp / 2,
            "number_of_trades": 0.0,
            "spread_bps": float("nan"),
        }
    )


def run_one(job: dict) -> dict:
    """Walk-forward over one symbol-month; returns the per-horizon rows of the report."""
    from pipelines.config import load_training_config
    from pipelines.tasks import get_task, read_task_file
    from pipelines.training.walk_forward import train_walk_forward

    configs = REPO / "configs"
    base_cfg = load_training_config(configs, task="returns")
    tf = read_task_file(configs, "returns")
    task = get_task("returns", base_cfg.labels.horizons, tf.options, job["objective"])
    if job.get("huber_delta") is not None:  # diagnosis only: LightGBM's huber delta, in target units
        from pipelines.models import lightgbm as lgbm

        lgbm.OBJECTIVES["huber"] = {"objective": "huber", "alpha": job["huber_delta"]}
    interval, candle = "1m", pd.Timedelta(minutes=1)
    if job.get("btc_1h"):
        candles = btc_1h()
        interval, candle = "1h", pd.Timedelta(hours=1)
        t_to = pd.to_datetime(candles["open_time"], utc=True).iloc[-1] + candle
        t_from = t_to - pd.Timedelta(days=365)
    elif job["synthetic"] is not None:
        from pipelines.sources.synthetic import SynthParams, generate

        days = int(job.get("synthetic_days") or 30)
        candles = generate(
            "SYNTHUSDT", "1m", "2024-01-01", days * 1440, params=SynthParams(reversal=job["synthetic"])
        )
        t_from = pd.Timestamp("2024-01-01", tz="UTC")
        t_to = t_from + pd.Timedelta(days=days)
    else:
        from pipelines.sources.binance_files import read_many

        files = sorted(DATA.glob(f"{job['symbol']}-1m-*.zip"))
        keep = [p for p in files if p.stem.split("-", 2)[2] <= job["month"]][-2:]  # the month + one before
        candles = read_many(keep, job["symbol"], "1m").drop_duplicates("open_time", ignore_index=True)
        t_from = pd.Timestamp(job["month"] + "-01", tz="UTC")
        t_to = t_from + pd.offsets.MonthBegin(1)
    if job.get("features"):
        base_cfg = load_training_config(
            configs, {"features": {"feature_set": job["features"]}}, task="returns"
        )
    p = plan(candles, t_from, t_to, base_cfg, task, candle)
    overrides = p["overrides"] | (
        {"features": {"feature_set": job["features"]}} if job.get("features") else {}
    )
    if job.get("lightgbm"):
        overrides["lightgbm"] = job["lightgbm"]
    cfg = load_training_config(configs, overrides, task="returns")
    t0 = time.perf_counter()
    res = train_walk_forward(
        p["candles"],
        symbol=job["symbol"],
        interval=interval,
        cfg=cfg,
        task=task,
        synthetic=job["synthetic"] is not None,
    )
    wall = time.perf_counter() - t0
    assert len(res.fold_metrics) == p["folds"], (len(res.fold_metrics), p["folds"])
    close = p["candles"]["close"].to_numpy(np.float64)
    test_t = pd.to_datetime(p["candles"]["open_time"], utc=True)
    r = np.diff(np.log(close[(test_t >= pd.Timestamp(p["test_start"])).to_numpy()]))
    from pipelines.review.fixed import paired_block_bootstrap_ci

    def paired(model: np.ndarray, rule: np.ndarray, actual: np.ndarray) -> dict[str, float]:
        """Direction accuracy of model minus rule on the same rows (actual != 0, both finite)."""
        keep = np.isfinite(model) & np.isfinite(rule) & np.isfinite(actual) & (actual != 0)
        y = np.sign(actual[keep])
        ci = paired_block_bootstrap_ci((np.sign(model[keep]) == y) * 1.0 - (np.sign(rule[keep]) == y))
        return {"diff": ci.diff, "diff_lo": ci.low, "diff_hi": ci.high, "n": float(keep.sum())}

    rows = []
    for j, h in enumerate(res.horizons):
        m = res.report["model"][f"h{h}"]
        accs = {who: res.report[who][f"h{h}"]["accuracy"] for who in RULES}
        best = max(accs, key=lambda w: -math.inf if math.isnan(accs[w]) else accs[w])
        b = res.report[best][f"h{h}"]
        verdict = (
            "above"
            if m["accuracy_lo"] > b["accuracy"]
            else "below"
            if m["accuracy_hi"] < b["accuracy"]
            else "within"
        )
        rows.append(
            {
                "h": h,
                "n": int(m["n"]),
                "n_flat": int(m["n_flat"]),
                "model_acc": m["accuracy"],
                "model_lo": m["accuracy_lo"],
                "model_hi": m["accuracy_hi"],
                "best_rule": best,
                "rule_acc": b["accuracy"],
                "rule_lo": b["accuracy_lo"],
                "rule_hi": b["accuracy_hi"],
                "rule_accs": accs,
                "model_ic": m["ic"],
                "reversal_ic": res.report["reversal"][f"h{h}"]["ic"],
                "verdict": verdict,
                "acc_ge_rule": bool(m["accuracy"] >= b["accuracy"]),
                "ic_ge_reversal": bool(m["ic"] >= res.report["reversal"][f"h{h}"]["ic"]),
                "beats_every_rule_ci": bool(m["accuracy_lo"] > max(accs.values())),
                # paired: model minus each rule on the same rows, block-bootstrap 95 % interval
                "paired": {
                    who: paired(
                        res.pooled.predictions[:, j],
                        task.baseline_column(res.pooled.baselines[who], j, "accuracy"),
                        res.pooled.actuals[:, j],
                    )
                    for who in RULES
                },
            }
        )
    return {
        "symbol": job["symbol"],
        "month": job["month"],
        "objective": task.training_objective,
        "folds": p["folds"],
        "test_size": p["test_size"],
        "test_start": p["test_start"],
        "test_end": p["test_end"],
        "test_rows": p["test_rows"],
        "history_before_month": p["history_before_month"],
        "lag1_acf_1m_returns": float(np.corrcoef(r[:-1], r[1:])[0, 1]),
        "flat_share_1m": float(np.mean(r == 0)),
        "train_wall_s": round(wall, 1),
        "horizons": rows,
    }


def print_result(res: dict) -> None:
    where = "" if res["history_before_month"] else "  [in-month only: no 14 days of history before it]"
    print(
        f"\n{res['symbol']} {res['month']} ({res['objective']}): test {res['test_start'][:16]} → "
        f"{res['test_end'][:16]}, {res['folds']} folds x {res['test_size']} rows, lag-1 acf "
        f"{res['lag1_acf_1m_returns']:+.3f}, flat {res['flat_share_1m']:.0%}, {res['train_wall_s']:.0f} s{where}"
    )
    print(
        f"{'h':>3} {'model acc [95% CI]':>26} {'best rule':>12} {'rule acc [95% CI]':>26} {'model IC':>9} {'rev. IC':>9}  verdict"
        "  model - best rule, paired [95% CI]"
    )
    for r in res["horizons"]:
        p = r["paired"][r["best_rule"]]
        print(
            f"{r['h']:>3} {r['model_acc']:>8.2%} [{r['model_lo']:.2%}, {r['model_hi']:.2%}] {r['best_rule']:>12} "
            f"{r['rule_acc']:>8.2%} [{r['rule_lo']:.2%}, {r['rule_hi']:.2%}] {r['model_ic']:>+9.4f} "
            f"{r['reversal_ic']:>+9.4f}  {r['verdict']:<7}  {100 * p['diff']:+.2f} pp "
            f"[{100 * p['diff_lo']:+.2f}, {100 * p['diff_hi']:+.2f}]"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", default="l2", choices=["l2", "huber", "quantile", "direction"])
    ap.add_argument("--synthetic-reversal", type=float, default=None, metavar="X")
    ap.add_argument("--synthetic-days", type=int, default=30, help="days of synthetic candles (default 30)")
    ap.add_argument(
        "--huber-delta",
        type=float,
        default=None,
        metavar="D",
        help="diagnosis: LightGBM huber's delta (`alpha`, default 0.9 = plain L2 at return scale)",
    )
    ap.add_argument("--symbols", nargs="*", default=None)
    ap.add_argument("--months", nargs="*", default=None, help="YYYY-MM test months (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="symbol-months run in parallel (each 1 thread)")
    ap.add_argument(
        "--btc-1h", action="store_true", help="also BTCUSDT 1h, its last 365 days as the test period"
    )
    ap.add_argument(
        "--features",
        default=None,
        help="feature set(s) for the model, e.g. core18 or core27,ta (default: config)",
    )
    ap.add_argument(
        "--lightgbm",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="LightGBM config overrides, e.g. n_estimators=50 num_leaves=7 linear_base=true",
    )
    args = ap.parse_args()
    lgb_overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.lightgbm)}
    if args.huber_delta is not None and args.objective != "huber":
        ap.error("--huber-delta needs --objective huber")

    if args.btc_1h:
        jobs = [{"symbol": "BTCUSDT", "month": "last 365 d (1h)", "synthetic": None, "btc_1h": True}]
    elif args.synthetic_reversal is not None:
        d = args.synthetic_days
        jobs = [
            {
                "symbol": "SYNTHUSDT",
                "month": f"2024-01 ({d} d)",
                "synthetic": args.synthetic_reversal,
                "synthetic_days": d,
            }
        ]
    else:
        avail = month_files()
        jobs = [
            {"symbol": s, "month": m, "synthetic": None}
            for s in (args.symbols or sorted(avail))
            for m in avail.get(s, [])
            if not args.months or m in args.months
        ]
    for j in jobs:
        j["objective"] = args.objective
        j["huber_delta"] = args.huber_delta
        j["features"] = args.features
        j["lightgbm"] = lgb_overrides
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            results = list(ex.map(run_one, jobs))
    else:
        results = [run_one(j) for j in jobs]
    wall = time.perf_counter() - t0
    for res in results:
        print_result(res)
    counts = {"above": 0, "within": 0, "below": 0}
    paired = {"above": 0, "within": 0, "below": 0}  # the paired interval of model - best rule vs 0
    for res in results:
        for r in res["horizons"]:
            counts[r["verdict"]] += 1
            p = r["paired"][r["best_rule"]]
            paired["above" if p["diff_lo"] > 0 else "below" if p["diff_hi"] < 0 else "within"] += 1
    total = sum(counts.values())
    bar = {
        f"{res['symbol']} {res['month']}": all(
            r["acc_ge_rule"] and r["ic_ge_reversal"] for r in res["horizons"]
        )
        for res in results
    }
    print(
        f"\nsummary ({args.objective}): of {total} (symbol-month, horizon) pairs the model's lower CI bound is "
        f"above the best rule's accuracy in {counts['above']}, within noise in {counts['within']}, "
        f"its upper bound below it in {counts['below']}"
    )
    print(
        f"paired (model - best rule on the same rows, block bootstrap): interval above 0 in {paired['above']}, "
        f"containing 0 in {paired['within']}, below 0 in {paired['below']}"
    )
    print(
        "issue-11 bar (every horizon: acc >= best rule, IC >= reversal IC): "
        + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in bar.items())
    )
    out = {
        "objective": args.objective,
        "synthetic_reversal": args.synthetic_reversal,
        "huber_delta": args.huber_delta,
        "btc_1h": args.btc_1h,
        "features": args.features,
        "lightgbm": lgb_overrides,
        "summary": counts,
        "summary_paired": paired,
        "issue11_bar": bar,
        "wall_s": round(wall, 1),
        "jobs": args.jobs,
        "load_avg_before": load_before,
        "load_avg": os.getloadavg(),
        "results": results,
    }
    tag = f"{args.objective}_d{args.huber_delta:g}" if args.huber_delta is not None else args.objective
    if args.features:
        tag += "_" + args.features.replace(",", "+")
    if lgb_overrides:
        tag += "_" + "_".join(f"{k}{v}" for k, v in lgb_overrides.items())
    name = f"multi_report_{tag}" + ("_synthetic" if args.synthetic_reversal is not None else "")
    if args.synthetic_reversal is not None and args.synthetic_days != 30:
        name += f"{args.synthetic_days}d"
    name += "_btc1h" if args.btc_1h else ""
    dst = REPO / "benchmarks" / "results" / f"{name}.json"
    dst.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
