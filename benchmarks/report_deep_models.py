"""One table per deep family and preset from the three deep-model benchmarks' results (runs nothing):

    .venv/bin/python benchmarks/report_deep_models.py      # after `make bench-deep`

- training throughput: windows/s of `kairos train`'s loop (Lightning) and of a plain PyTorch loop on the
  same windows and settings (benchmarks/bench_train_throughput.py, results/train_throughput.json);
- minutes of a 30-day FILUSDT walk-forward (6 folds + the final fit, export, parity) and its h1 direction
  accuracy beside the best naive rule, with the paired difference to the previous default
  (benchmarks/report_deep_presets.py, results/deep_presets.json);
- one-window inference p50 / p99 through ONNX Runtime as served: fp32, optimized, int8
  (benchmarks/bench_deep_inference.py, results/deep_inference.json).
Writes results/deep_models.json and prints the markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = ("lstm_attention", "transformer", "tft", "mamba")


def _preset(r: dict[str, Any]) -> str:
    """bench_train_throughput names a family's default preset "default" (it is `small` for every family)."""
    return "small" if r["preset"] in (None, "default") else r["preset"]


def _load(name: str) -> Any:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def collect() -> list[dict[str, Any]]:
    tp, wf, inf = _load("train_throughput.json"), _load("deep_presets.json"), _load("deep_inference.json")
    out = []
    for family in FAMILIES:
        for preset in ("small", "small_prev", "seed000"):
            row: dict[str, Any] = {"family": family, "preset": preset}
            # small: the presets now; small_prev: `before` (the previous preset, 2 threads, float32, libgomp's
            # default spin); seed000 is measured before / spin only
            src, mode = {"small_prev": ("small", "lightning (before)")}.get(
                preset, (preset, "lightning (after)" if preset == "small" else "lightning (before)")
            )
            for r in (tp or {}).get("rows", []):
                if (
                    r["family"] == family
                    and _preset(r) == src
                    and r["mode"] == mode
                    and not r.get("busy_processes")
                ):
                    row["train_windows_per_s"] = r["windows_per_s"]
                    row["vs_plain_loop"] = r.get("vs_plain_wall")
                    row["throughput_load1"] = r["load1_at_best"]
            for r in (wf or {}).get("runs", []):
                if r["family"] == family and r["preset"] == preset and not r["estimate"]:
                    base = max(
                        r["score"][w]["h1"]["accuracy"] for w in ("always_up", "persistence", "reversal")
                    )
                    row.update(
                        wf_minutes=r["minutes"],
                        wf_cpu_minutes=r["cpu_minutes"],
                        wf_load1_mean=r["load1"]["mean"],
                        acc_h1=r["score"]["model"]["h1"]["accuracy"],
                        best_rule_acc_h1=base,
                        horizons_below_rules=len(r["below_baselines"]),
                    )
            if preset == "small" and wf and f"{family}:small" in wf.get("vs_small_prev", {}):
                h1 = next(c for c in wf["vs_small_prev"][f"{family}:small"] if c["horizon"] == 1)
                row["h1_vs_small_prev_pp"] = h1["diff_pp"]
                row["h1_vs_small_prev_ci90_pp"] = h1["ci90_pp"]
            for r in (inf or {}).get("rows", []):
                if r["model"] == family and r["preset"] == preset:
                    row["inference_us"] = {
                        v: [r["latency"][v]["p50_us"], r["latency"][v]["p99_us"]]
                        for v in ("fp32", "optimized", "int8")
                        if v in r["latency"]
                    }
            if len(row) > 2:
                out.append(row)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    def f(x: Any, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    out = [
        "| family:preset | train windows/s (Lightning, × the plain loop) | 30-day WF minutes (CPU) | WF acc h1 "
        "(best rule) | h1 vs small_prev, pp [90 % CI] | horizons below rules | p50 / p99 µs fp32 · optimized "
        "· int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        inf = r.get("inference_us", {})
        lat = " · ".join(f"{p50:.0f} / {p99:.0f}" for p50, p99 in inf.values()) or "–"
        ci = r.get("h1_vs_small_prev_ci90_pp")
        vs = f"{r['h1_vs_small_prev_pp']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "–"
        acc = f"{100 * r['acc_h1']:.2f} % ({100 * r['best_rule_acc_h1']:.2f} %)" if "acc_h1" in r else "–"
        wf = f"{r['wf_minutes']:.1f} ({r['wf_cpu_minutes']:.1f})" if "wf_minutes" in r else "–"
        out.append(
            f"| {r['family']}:{r['preset']} | {f(r.get('train_windows_per_s'), '.0f')} "
            f"({f(r.get('vs_plain_loop'), '.2f')}×) | {wf} | {acc} | {vs} | "
            f"{f(r.get('horizons_below_rules'), 'd')} of 5 | {lat} |"
        )
    return "\n".join(out)


THROUGHPUT_MODES = (
    "plain (before)",
    "lightning (before)",
    "lightning (passive)",
    "lightning (spin)",
    "plain (after)",
    "lightning (after)",
)


def throughput_table(busy: int = 0) -> str:
    """Windows/s per family: the floor and Lightning before, with each OpenMP wait setting, and after; then
    each single change on top of `lightning (spin)` as a ratio (> 1: faster)."""
    tp = _load("train_throughput.json") or {"rows": []}
    rows = [r for r in tp["rows"] if r.get("busy_processes", 0) == busy]
    names = sorted({(r["family"], _preset(r)) for r in rows}, key=lambda k: (FAMILIES.index(k[0]), k[1]))
    modes = [m for m in THROUGHPUT_MODES if any(r["mode"] == m for r in rows)]
    changes = sorted({r["mode"] for r in rows if r["mode"].startswith("spin + ")})
    head = "| family:preset | " + " | ".join(modes) + " | Lightning / plain (after) |"
    out = [head, "|---" * (len(modes) + 2) + "|"]
    for fam, preset in names:
        by = {r["mode"]: r for r in rows if r["family"] == fam and _preset(r) == preset}
        cells = [f"{by[m]['windows_per_s']:.0f}" if m in by else "–" for m in modes]
        ratio = by.get("lightning (after)", {}).get("vs_plain_wall")
        out.append(
            f"| {fam}:{preset} | " + " | ".join(cells) + f" | {'–' if ratio is None else f'{ratio:.2f}'} |"
        )
    if changes:
        out += ["", "| family:preset | " + " | ".join(changes) + " |", "|---" * (len(changes) + 1) + "|"]
        for fam, preset in names:
            by = {r["mode"]: r for r in rows if r["family"] == fam and _preset(r) == preset}
            cells = [
                f"{by[m]['vs_spin_wall']:.2f}×" if m in by and "vs_spin_wall" in by[m] else "–"
                for m in changes
            ]
            out.append(f"| {fam}:{preset} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    rows = collect()
    (RESULTS / "deep_models.json").write_text(json.dumps({"rows": rows}, indent=2))
    print(table(rows))
    for busy in sorted(
        {r.get("busy_processes", 0) for r in (_load("train_throughput.json") or {"rows": []})["rows"]}
    ):
        print(f"\ntraining windows/s, {busy} busy-loop processes beside the fits:\n")
        print(throughput_table(busy))


if __name__ == "__main__":
    main()
