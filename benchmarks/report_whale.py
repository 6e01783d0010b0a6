"""Whale detection on the shared pump-and-dump windows (issue 13): train on the 20 earliest windows,
test on the 10 latest, model beside the rules, threat-level false-alarm rates, event detection.

    python benchmarks/report_whale.py [--features whale19r] [--test-windows 10]

Reads ../shared/data/pumps in place (trades → 1-minute candles + trade minutes, pipelines.sources.trades),
trains with configs/tasks/whale.yaml (pipelines.training.pooled.train_pooled) and writes
benchmarks/results/whale_report[_<features>].json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PUMPS = REPO.parent / "shared" / "data" / "pumps"


def run(
    features: str | None,
    test_windows: int,
    first: int | None = None,
    lightgbm: dict | None = None,
    label: str | None = None,
    klines: list[str] | None = None,
) -> dict:
    from pipelines.config import load_training_config
    from pipelines.tasks import load_task
    from pipelines.training.pooled import segments_from_trade_files, train_pooled

    t0 = time.perf_counter()
    if klines:  # kline-only symbols: each file's months cut into 4-day windows, no announced events
        from pipelines.sources.binance_files import read_klines
        from pipelines.training.pooled import split_segments

        segs = []
        for path in klines:
            symbol = Path(path).name.split("-")[0]
            segs += split_segments(read_klines(Path(path), symbol, "1m"), symbol, max_len="4D")
    else:
        segs = segments_from_trade_files(sorted(PUMPS.glob("*.zip")), PUMPS / "events.csv")
    if first:  # model selection: only the earliest `first` windows (the outer test windows stay unseen)
        segs = sorted(segs, key=lambda s: s.start)[:first]
    t_load = time.perf_counter() - t0
    overrides: dict = {"features": {"feature_set": features}} if features else {}
    if lightgbm:
        overrides["lightgbm"] = lightgbm
    cfg = load_training_config(REPO / "configs", overrides or None, "whale")
    task = load_task(REPO / "configs", "whale", cfg.labels.horizons)
    if label:
        task = type(task)(task.horizons, {**task.options, "label": label})
    t0 = time.perf_counter()
    r = train_pooled(segs, universe="PUMPS", interval="1m", cfg=cfg, task=task, test_segments=test_windows)
    t_train = time.perf_counter() - t0
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else float(v)  # noqa: E731
    return {
        "command": "python benchmarks/report_whale.py"
        + (f" --features {features}" if features else "")
        + (f" --first {first}" if first else "")
        + "".join(f" --lightgbm {k}={v}" for k, v in (lightgbm or {}).items())
        + (f" --label {label}" if label else "")
        + "".join(f" --klines {Path(k).name}" for k in (klines or []))
        + f" --test-windows {test_windows}",
        "feature_set": cfg.features.feature_set,
        "label": r.manifest.extra["label"],
        "train_windows": [s for s in r.data_window["segments"] if s not in r.data_window["test_segments"]],
        "test_windows": r.data_window["test_segments"],
        "test_rows": r.data_window["evaluation_rows"],
        "metrics_h15": {who: {k: clean(v) for k, v in m["h15"].items()} for who, m in r.report.items()},
        "model_threshold": r.manifest.extra["model_threshold"],
        "threat": r.manifest.extra["threat"],
        "level_rates_test": r.manifest.extra["level_rates_test"],
        "event_detection_test": r.manifest.extra["event_detection_test"],
        "parity_max_abs": r.parity_max_abs,
        "parity_level_agreement": r.manifest.extra["parity_level_agreement"],
        "seconds": {"read_trades": round(t_load, 1), "train_evaluate_refit_export": round(t_train, 1)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default=None, help="feature set (default: configs/tasks/whale.yaml's)")
    ap.add_argument("--test-windows", type=int, default=10)
    ap.add_argument(
        "--first", type=int, default=None, help="use only the earliest N windows (inner selection)"
    )
    ap.add_argument("--lightgbm", action="append", default=[], help="classifier override K=V (repeatable)")
    ap.add_argument("--label", choices=["trade_size", "volume_spike"], default=None)
    ap.add_argument(
        "--klines", nargs="*", default=None, help="Binance kline files instead of the pump trades"
    )
    a = ap.parse_args()
    lgb = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.lightgbm)}
    out = run(a.features, a.test_windows, a.first, lgb, a.label, a.klines)
    name = (
        "whale_report"
        + (f"_{a.features}" if a.features else "")
        + (f"_first{a.first}_test{a.test_windows}" if a.first else "")
        + "".join(f"_{k}{v}" for k, v in lgb.items())
        + (f"_{a.label}" if a.label else "")
        + ("_" + "_".join(Path(k).name.split("-")[0] for k in a.klines[:1]) if a.klines else "")
        + ".json"
    )
    path = REPO / "benchmarks" / "results" / name
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    m = out["metrics_h15"]
    for who in ("model", "threat_score", "anomaly_only", "volume_spike", "return_spike", "base_rate"):
        print(f"{who:14s}", {k: (round(v, 4) if v is not None else None) for k, v in m[who].items()})
    print(json.dumps(out["level_rates_test"], indent=1))
    print(json.dumps(out["event_detection_test"], indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
