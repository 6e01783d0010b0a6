"""The curves every training run logs beside its metrics: calibration and, for signed-return tasks,
accuracy against coverage (trading only the most confident share of candles), model beside the task's
baselines, from the pooled out-of-sample rows of the walk-forward (`TrainResult.pooled`).

Returns `{file name: bytes}` (two PNGs and `curves.json` with the numbers), which the registry stores
as run artifacts. matplotlib is imported lazily, with the Agg canvas (no display).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from pipelines.tasks import Task
from pipelines.training.metrics import direction_accuracy, top_rows

SHARES = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # coverage shares on the curve


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * n_panels, 3.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def coverage_curve(pred: np.ndarray, actual: np.ndarray, confidence: np.ndarray) -> list[float | None]:
    """Direction accuracy on the top share of rows by `confidence`, for each share in `SHARES`."""
    out: list[float | None] = []
    for q in SHARES:
        mask = top_rows(confidence, float(q))
        acc = direction_accuracy(pred[mask], actual[mask])["accuracy"] if mask.any() else float("nan")
        out.append(None if not np.isfinite(acc) else float(acc))
    return out


def training_figures(pooled: Any, task: Task, horizons: list[int], title: str) -> dict[str, bytes]:
    """Calibration (every task) and coverage (signed-return tasks) curves per horizon, as PNG + JSON."""
    pred, actual = np.asarray(pooled.predictions, float), np.asarray(pooled.actuals, float)
    curves: dict[str, Any] = {"task": task.name, "horizons": horizons, "calibration": {}, "coverage": {}}
    files: dict[str, bytes] = {}
    fig, axes = _figure(len(horizons))
    for j, (h, ax) in enumerate(zip(horizons, axes, strict=True)):
        cal = task.calibration(pred[:, j], actual[:, j])
        curves["calibration"][f"h{h}"] = {
            k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cal.items()
        }
        lo, hi = (
            float(np.min([cal["x"].min(), cal["y"].min()])),
            float(np.max([cal["x"].max(), cal["y"].max()])),
        )
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.plot(cal["x"], cal["y"], marker="o", lw=1)
        ax.set_title(
            f"h{h}" + (f"  Brier {cal['brier']:.4f}  ECE {cal['ece']:.4f}" if "brier" in cal else "")
        )
        ax.set_xlabel(cal["xlabel"])
        ax.set_ylabel(cal["ylabel"])
    fig.suptitle(f"Calibration — {title}")
    files["calibration.png"] = _png(fig)
    if task.directional:
        fig, axes = _figure(len(horizons))
        for j, (h, ax) in enumerate(zip(horizons, axes, strict=True)):
            series = {"model": coverage_curve(pred[:, j], actual[:, j], np.abs(pred[:, j]))}
            for who, fc in pooled.baselines.items():
                calls = task.baseline_column(fc, j, "accuracy")
                series[who] = coverage_curve(calls, actual[:, j], np.abs(task.baseline_column(fc, j, "ic")))
            curves["coverage"][f"h{h}"] = {"share": SHARES.tolist(), **series}
            for who, ys in series.items():
                y = np.array([np.nan if v is None else v for v in ys])
                ax.plot(100 * SHARES, 100 * y, lw=1.6 if who == "model" else 1, label=who)
            ax.axhline(50, color="grey", lw=0.6)
            ax.set_title(f"h{h}")
            ax.set_xlabel("candles traded: most confident share, %")
            ax.set_ylabel("direction accuracy, %")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Accuracy against coverage — {title}")
        files["coverage.png"] = _png(fig)
    files["curves.json"] = json.dumps(curves, indent=1, allow_nan=True).encode()
    return files
