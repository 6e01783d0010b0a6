"""Deep presets on 30 days of FILUSDT 1m: walk-forward minutes and score, new default beside the previous.

    .venv/bin/python benchmarks/report_deep_presets.py --runs lstm_attention:small,lstm_attention:small_prev
        [--max-folds 2]   # a sample of the walk-forward for presets too slow to run whole (an estimate)

Each run is `train_walk_forward` exactly as `kairos train --model <family> --preset <preset>` runs it
(configs/defaults.yaml: 6 rolling folds of 14 days train / 2 days test over the newest 30 days, then
the final fit, ONNX export and parity), on every FILUSDT-1m-*.zip in ../shared/data, in a fresh
process (one at a time: the machine has 2 cores). Recorded per run, into
benchmarks/results/deep_presets.json (merged by family/preset/folds, so families can run separately):
- wall minutes, CPU minutes of the process (every thread; `resource.getrusage`), and the 1-minute load
  average sampled every 10 s (the machine is shared: with load > 2 the wall time is inflated, the CPU
  time much less so);
- per fit: epochs run, best epoch, seconds (does early stopping stop?);
- the walk-forward score as the training report gives it: direction accuracy and IC per horizon for the
  model and the naive baselines (always_up, persistence, reversal), pooled over the folds, and the same
  on the newest 2 folds only (the rows a `--max-folds 2` sample scores, to set the two side by side).
With `--max-folds N` the run trains N folds + the final model; its full-run minutes are estimated as
wall x (6 + 1) / (N + 1) and flagged `estimate`.
Whole runs also save the direction loss of every pooled test row (model per preset, baselines once) in
deep_presets_rows.npz, and the JSON's `vs_small_prev` holds, for every preset beside its family's
small_prev, the paired one-sided DM/HAC test per horizon on those same rows (pipelines.review.gates).
`--table` recomputes the comparisons and prints both tables without training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "results" / "deep_presets.json"
WHO = ("model", "always_up", "persistence", "reversal")
METRICS = ("accuracy", "ic")


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _scores(report: dict[str, Any], horizons: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        who: {f"h{h}": {m: report[who][f"h{h}"].get(m) for m in METRICS} for h in horizons}
        for who in WHO
        if who in report
    }


def one_run(family: str, preset: str, max_folds: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train one family/preset walk-forward in this process and measure it: (summary, row losses)."""

    from pipelines.config import load_training_config
    from pipelines.models.sequence import base
    from pipelines.sources.binance_files import read_many
    from pipelines.tasks import get_task, nested_report
    from pipelines.training.walk_forward import train_walk_forward

    files = sorted(DATA.glob("FILUSDT-1m-????-??.zip"))
    candles = read_many(files, "FILUSDT", "1m").drop_duplicates("open_time", ignore_index=True)
    overrides = {"walk_forward": {"max_folds": max_folds}} if max_folds else None
    cfg = load_training_config(REPO / "configs", overrides)

    fits: list[dict[str, Any]] = []
    fit = base.SequenceRegressor.fit

    def recording_fit(self: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        out = fit(self, *a, **k)
        fits.append(
            {"epochs": self.epochs_run_, "best_epoch": self.best_epoch_, "seconds": time.perf_counter() - t}
        )
        return out

    base.SequenceRegressor.fit = recording_fit
    loads: list[float] = []
    done = threading.Event()

    def sample_load() -> None:
        while not done.is_set():
            loads.append(os.getloadavg()[0])
            done.wait(10)

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    res = train_walk_forward(
        candles, symbol="FILUSDT", interval="1m", cfg=cfg, model_type=family, preset=preset
    )
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    done.set()
    sampler.join()

    # The newest 2 folds' test rows (step == test_size: folds do not overlap) scored on their own.
    task = get_task("returns", res.horizons)
    per_fold = cfg.walk_forward.test_size
    k = min(2, len(res.folds))
    p = res.pooled
    tail = slice(len(p.predictions) - k * per_fold, None)
    newest2 = task.evaluate(
        np.asarray(p.predictions[tail]),
        np.asarray(p.actuals[tail]),
        {who: np.asarray(b)[tail] for who, b in p.baselines.items()},
        interval="1m",
        cfg=cfg.evaluation,
        segments=[per_fold] * k,
    )
    n_fits = len(res.folds) + 1
    full_fits = 6 + 1
    return {
        "family": family,
        "preset": preset,
        "folds": len(res.folds),
        "estimate": bool(max_folds),
        "minutes": wall / 60,
        "minutes_full_walk_forward": wall / 60 * (full_fits / n_fits if max_folds else 1.0),
        "cpu_minutes": cpu / 60,
        "load1": {
            "mean": float(np.mean(loads)),
            "max": float(np.max(loads)),
            "start": loads[0],
            "samples": len(loads),
        },
        "fits": fits,
        "params": {
            k: v
            for k, v in res.params.items()
            if k
            in (
                "d_model",
                "n_layers",
                "d_state",
                "batch_size",
                "max_epochs",
                "patience",
                "min_delta",
                "num_threads",
                "cpu_bf16",
            )
        },
        "data_window": {k: res.data_window[k] for k in ("evaluation_start", "end", "evaluation_rows")},
        "parity_max_abs": res.parity_max_abs,
        "below_baselines": {str(h): why for h, why in res.below_baselines.items()},
        "score": _scores(res.report, res.horizons),
        "score_newest2": _scores(nested_report(newest2), res.horizons),
        "openmp_env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
    }, _row_losses(task, p, res.horizons)


def _row_losses(task: Any, p: Any, horizons: list[int]) -> dict[str, np.ndarray]:
    """Direction loss (1 - hit) per pooled test row and horizon, for the model and each baseline: int8,
    -1 where undefined (a flat realised return). Saved beside the JSON so that two presets can be compared
    row by row (a paired test), not only by their accuracies."""
    from pipelines.review.gates import row_losses

    out = {}
    actual = np.asarray(p.actuals)
    model = np.asarray(p.predictions)
    for who, pred in [("model", None), *p.baselines.items()]:
        for j, h in enumerate(horizons):
            col = model[:, j] if pred is None else task.baseline_column(pred, j, "accuracy")
            loss = row_losses(task, col, actual[:, j])
            out[f"{who}/h{h}"] = np.where(np.isfinite(loss), loss, -1).astype(np.int8)
    return out


def _key(r: dict[str, Any]) -> tuple[str, str, int]:
    return (r["family"], r["preset"], r["folds"])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: minutes (wall, CPU, load), epochs per fit, and accuracy / IC per horizon beside the best
    naive baseline, on the newest 2 folds (comparable between full runs and samples) and pooled."""
    out = [
        "| family:preset | folds | minutes (full WF) | CPU min | load mean | epochs/fit | "
        "acc h1..h5 (newest 2 folds) | IC h1 | best baseline acc h1 | acc h1..h5 (all folds) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hs = sorted(r["score"]["model"], key=lambda h: int(h[1:]))
        acc2 = " ".join(f"{100 * r['score_newest2']['model'][h]['accuracy']:.1f}" for h in hs)
        acc = (
            " ".join(f"{100 * r['score']['model'][h]['accuracy']:.1f}" for h in hs)
            if not r["estimate"]
            else "–"
        )
        best_base = max(r["score_newest2"][w]["h1"]["accuracy"] for w in WHO[1:] if w in r["score_newest2"])
        minutes = f"{r['minutes_full_walk_forward']:.1f}" + (" (est.)" if r["estimate"] else "")
        epochs = ",".join(str(f["epochs"]) for f in r["fits"])
        out.append(
            f"| {r['family']}:{r['preset']} | {r['folds']} | {minutes} | {r['cpu_minutes']:.1f} | "
            f"{r['load1']['mean']:.1f} | {epochs} | {acc2} | {r['score_newest2']['model']['h1']['ic']:.3f} | "
            f"{100 * best_base:.1f} | {acc} |"
        )
    return "\n".join(out)


def _rows_file(out: Path) -> Path:
    return out.with_name(out.stem + "_rows.npz")


def compare(
    rows_file: Path, family: str, new: str = "small", old: str = "small_prev"
) -> list[dict[str, Any]]:
    """The new preset against the old on the same pooled rows, per horizon: accuracy difference in pp
    (> 0: the new one is better) with a 90 % interval, one-sided DM/HAC p-value that the new is better and
    that it is worse (pipelines.review.gates.paired_test on the direction loss)."""
    from pipelines.review.gates import paired_test

    z = np.load(rows_file)
    out = []
    for key in sorted(k for k in z.files if k.startswith(f"{family}:{new}|model/")):
        h = key.rsplit("/h", 1)[1]
        a, b = z[key].astype(float), z[f"{family}:{old}|model/h{h}"].astype(float)
        a[a < 0], b[b < 0] = np.nan, np.nan
        better = paired_test(b, a, horizon=int(h), alpha=0.05, loss="direction")
        worse = paired_test(a, b, horizon=int(h), alpha=0.05, loss="direction")
        out.append(
            {
                "horizon": int(h),
                "n": better.n,
                "diff_pp": 100 * better.diff,
                "ci90_pp": [100 * better.ci_low, 100 * better.ci_high],
                "p_new_better": better.p_value,
                "p_new_worse": worse.p_value,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="", help="family:preset,... run one after the other")
    ap.add_argument("--max-folds", type=int, default=0, help="sample: N folds + the final fit (0 = all 6)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true", help="only print the table of the results file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--losses", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        family, preset = args.one.split(":")
        summary, losses = one_run(family, preset, args.max_folds or None)
        np.savez_compressed(args.losses, **losses)
        print(json.dumps(summary))
        return
    out = Path(args.out)
    rows: list[dict[str, Any]] = json.loads(out.read_text())["runs"] if out.exists() else []
    rows_file = _rows_file(out)
    for item in [r for r in args.runs.split(",") if r]:
        with tempfile.TemporaryDirectory() as tmp:
            losses = Path(tmp) / "losses.npz"
            cmd = [sys.executable, __file__, "--one", item, "--max-folds", str(args.max_folds)]
            t = time.perf_counter()
            proc = subprocess.run(
                [*cmd, "--losses", str(losses)], capture_output=True, text=True, check=False
            )
            if proc.returncode:
                raise SystemExit(
                    f"{item} failed after {time.perf_counter() - t:.0f} s:\n{proc.stderr[-3000:]}"
                )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if not r["estimate"]:  # row losses of whole walk-forward runs only (samples cover other rows)
                kept = dict(np.load(rows_file)) if rows_file.exists() else {}
                kept = {k: v for k, v in kept.items() if not k.startswith(f"{item}|")}
                for k, v in np.load(losses).items():  # the baselines' rows are the same in every run
                    kept[f"{item}|{k}" if k.startswith("model/") else f"baselines|{k}"] = v
                np.savez_compressed(rows_file, **kept)
        rows = [x for x in rows if _key(x) != _key(r)] + [r]
        save(out, rows)
        print(table([r]).splitlines()[-1], flush=True)
    if rows:
        save(out, rows)  # also after `--table`: the paired comparisons follow this script's code
    print(table(rows))
    print(compare_table(comparisons_of(rows_file, rows)))


def save(out: Path, rows: list[dict[str, Any]]) -> None:
    doc = {
        "command": "benchmarks/report_deep_presets.py",
        "runs": rows,
        "vs_small_prev": comparisons_of(_rows_file(out), rows),  # paired, on the same pooled test rows
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))


def comparisons_of(rows_file: Path, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """`{"family:preset": compare(...)}` for every whole run beside its family's small_prev."""
    if not rows_file.exists():
        return {}
    with np.load(rows_file) as z:
        have = {k.split("|")[0] for k in z.files}
    return {
        f"{r['family']}:{r['preset']}": compare(rows_file, r["family"], r["preset"])
        for r in rows
        if r["preset"] != "small_prev"
        and {f"{r['family']}:{r['preset']}", f"{r['family']}:small_prev"} <= have
    }


def compare_table(comparisons: dict[str, list[dict[str, Any]]]) -> str:
    out = ["| family:preset | horizon | minus small_prev (pp) | 90 % CI | p (better) | p (worse) |"]
    out.append("|---|---|---|---|---|---|")
    for name, rows in comparisons.items():
        for c in rows:
            lo, hi = c["ci90_pp"]
            out.append(
                f"| {name} | h{c['horizon']} | {c['diff_pp']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | "
                f"{c['p_new_better']:.2g} | {c['p_new_worse']:.2g} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    main()
