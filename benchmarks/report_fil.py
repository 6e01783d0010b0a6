"""Walk-forward report on real data: LightGBM vs the naive baselines on FILUSDT 1m (run on demand).

Reads the four FILUSDT monthly dumps beside the repository, trains with configs/defaults.yaml
(the newest 30 days: 6 rolling folds of 14 days train / 2 days test, purge 5, fee 1 bp) and writes
benchmarks/results/fil_report.json with every model/baseline metric per horizon.

    python benchmarks/report_fil.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO.parent / "shared" / "data").glob("FILUSDT-1m-2023-*.zip"))


def main() -> None:
    from pipelines.config import load_training_config
    from pipelines.sources.binance_files import read_many
    from pipelines.training.walk_forward import train_walk_forward

    candles = read_many(FILES, "FILUSDT", "1m")
    cfg = load_training_config(REPO / "configs")
    t0 = time.perf_counter()
    res = train_walk_forward(candles, symbol="FILUSDT", interval="1m", cfg=cfg)
    wall = time.perf_counter() - t0
    print(f"FILUSDT 1m, {res.data_window['start']} → {res.data_window['end']}, "
          f"{len(res.fold_metrics)} folds, parity max |Δ| {res.parity_max_abs:.1e}, {wall:.0f} s")
    print(f"{'h':>2} {'who':<12} {'rows':>6} {'accuracy [95% CI]':<26} {'IC':>8} {'P&L':>8} {'Sharpe':>7}")
    for h in res.horizons:
        for who in ("model", "always_up", "persistence", "reversal"):
            m = res.report[who][f"h{h}"]
            ic = f"{m['ic']:+.4f}" if m["ic"] == m["ic"] else "—"
            print(f"{h:>2} {who:<12} {int(m['n']):>6} {m['accuracy']:.2%} [{m['accuracy_lo']:.2%}, "
                  f"{m['accuracy_hi']:.2%}]  {ic:>8} {m['pnl_total_return']:+8.2%} {m['pnl_sharpe']:+7.2f}")
    out = {"data_window": res.data_window, "folds": len(res.fold_metrics), "parity_max_abs": res.parity_max_abs,
           "train_wall_s": round(wall, 1), "report": res.report}
    dst = REPO / "benchmarks" / "results" / "fil_report.json"
    dst.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
