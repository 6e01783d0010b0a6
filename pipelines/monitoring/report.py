"""The monitor report: one self-contained HTML file plus its PNG figures beside it (as the A/B review's).

Figures (those with data to show):
- `drift.png`: each feature's and output's drift statistic as a share of its calibrated threshold
  (1 = the alarm line; red = fired);
- `distributions.png`: reference vs live share per profile bin of the most drifted columns;
- `live_performance.png`: per horizon, the task's metric per hour of live outcomes, its value over
  the window and the walk-forward interval from the manifest;
- `latency.png`: latency-budget violations and p99 latency per hour.
matplotlib through the object API with the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contracts.profile import ReferenceProfile, bin_counts
from pipelines.monitoring.alerts import FIRED, SKIPPED, Check, fmt
from pipelines.monitoring.live import LivePerformance

TOP_DISTRIBUTIONS = 4


@dataclass(frozen=True)
class MonitorReport:
    html: Path
    figures: tuple[Path, ...]


def _figure(rows: int, height: float = 2.0, left: float = 0.1):
    """A figure of `rows` stacked panels sharing x. Fixed margins, not constrained layout: the layout
    pass cost more than the drawing (seconds per report on a busy 2-core box)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = height * rows + 0.8
    fig = Figure(figsize=(9, h), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False, sharex=True)
    fig.subplots_adjust(left=left, right=0.97, top=1 - 0.45 / h, bottom=0.45 / h, hspace=0.3)
    return fig, axes


def _drift_figure(drift: Sequence[Any], path: Path) -> Path:
    ratio = np.array([d.value / d.threshold if d.threshold > 0 else np.nan for d in drift])
    order = np.argsort(np.nan_to_num(ratio, nan=-1.0))
    fig, ax = _figure(1, height=max(2.0, 0.2 * len(drift)), left=0.28)
    a = ax[0, 0]
    labels = [f"{drift[i].kind[:3]} {drift[i].name}" for i in order]
    colors = ["#d62728" if drift[i].fired else "#1f77b4" for i in order]
    a.barh(np.arange(len(order)), ratio[order], color=colors)
    a.axvline(1.0, color="k", lw=0.8, ls="--")
    a.set_yticks(np.arange(len(order)), labels, fontsize=7)
    a.set_xlabel(f"{drift[0].statistic} / calibrated threshold (alarm at 1)")
    fig.suptitle(f"Drift of features and outputs over the last {drift[0].rows:,} rows")
    fig.savefig(path, format="png")
    return path


def _distributions_figure(
    drift: Sequence[Any], profile: ReferenceProfile, live: pd.DataFrame, path: Path
) -> Path:
    top = sorted(drift, key=lambda d: -(d.value / d.threshold if d.threshold > 0 else 0.0))[
        :TOP_DISTRIBUTIONS
    ]
    fig, ax = _figure(len(top), height=1.5)
    for a, d in zip(ax[:, 0], top):
        col = profile.column(d.name)
        counts = bin_counts(live[d.name].to_numpy(np.float64), col.edges)
        share = counts / counts.sum() if counts.sum() else counts
        x = np.arange(col.n_bins)
        a.bar(x - 0.2, col.shares, width=0.4, label="reference (training)", color="#7f7f7f")
        a.bar(x + 0.2, share, width=0.4, label="live", color="#d62728" if d.fired else "#1f77b4")
        a.set_ylabel(d.name, fontsize=8)
        a.set_xticks(x)
    ax[0, 0].legend(fontsize=7, loc="best")
    ax[-1, 0].set_xlabel("reference quantile bin")
    fig.suptitle("Share of rows per reference bin: the most drifted columns")
    fig.savefig(path, format="png")
    return path


def _live_figure(
    perf: Sequence[LivePerformance], resolved: pd.DataFrame, task: Any, end_ms: int, path: Path
) -> Path:
    fig, ax = _figure(len(perf), height=1.5)
    for a, p in zip(ax[:, 0], perf):
        rows = resolved[(resolved["horizon"] == p.horizon) & (resolved["version"].astype(str) == p.version)]
        if len(rows):
            hour = (rows["time_ms"].to_numpy(np.int64) - end_ms) // 3_600_000  # hours before the clock
            pts = [
                (
                    h,
                    task.score(
                        g["prediction"].to_numpy(float),
                        g["realised"].to_numpy(float),
                        p.metric,
                        p.horizon,
                        interval="1m",
                        cfg=None,
                    ),
                )
                for h, g in rows.groupby(hour)
                if len(g) >= 2
            ]
            if pts:
                xs, ys = zip(*pts)
                a.plot(list(xs), ys, "o-", ms=3, lw=0.8, label=f"{p.metric} per hour")
        if p.backtest_ci is not None:
            a.axhspan(*p.backtest_ci, color="#2ca02c", alpha=0.2, label="backtest interval")
        if math.isfinite(p.value):
            a.axhline(p.value, color="#1f77b4", lw=1, ls="--", label=f"{p.name} {fmt(p.value)}")
        if p.baseline is not None and math.isfinite(p.baseline_value):
            a.axhline(
                p.baseline_value, color="#ff7f0e", lw=1, ls=":", label=f"{p.baseline} {fmt(p.baseline_value)}"
            )
        a.set_ylabel(f"v{p.version} h{p.horizon}: {p.metric}", fontsize=8)
        a.legend(fontsize=6, loc="upper left")
    ax[-1, 0].set_xlabel("hours before the monitor's clock")
    fig.suptitle("Live performance per hour vs the walk-forward interval and the best naive rule")
    fig.savefig(path, format="png")
    return path


def _latency_figure(hours: pd.DataFrame, budget_us: float, path: Path) -> Path:
    fig, ax = _figure(1, height=2.4)
    a = ax[0, 0]
    x = hours["hour_start"].dt.strftime("%m-%d %H:%M")
    a.bar(x, hours["violations"], color="#d62728", label=f"predictions over {fmt(budget_us)} µs")
    a.set_ylabel("violations per hour")
    b = a.twinx()
    b.plot(x, hours["p99_us"], "k.-", lw=0.8, label="p99 latency (µs)")
    b.set_ylabel("p99 µs")
    a.tick_params(axis="x", labelsize=7, rotation=45)
    a.legend(fontsize=7, loc="upper left")
    fig.suptitle("Latency budget per hour (features + model time, prediction log)")
    fig.savefig(path, format="png")
    return path


_CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
tr.fired td{background:#fde0e0}tr.skipped td{color:#888}.verdict{padding:.6em;border-left:4px solid #888}
.alert{border-color:#d62728}img{max-width:100%}"""


def write_monitor_report(
    out_dir: Path,
    *,
    model: str,
    version: str | None,
    checks: Sequence[Check],
    drift: Sequence[Any] | None = None,
    profile: ReferenceProfile | None = None,
    live_rows: pd.DataFrame | None = None,
    perf: Sequence[LivePerformance] = (),
    resolved: pd.DataFrame | None = None,
    task: Any = None,
    hours: pd.DataFrame | None = None,
    budget_us: float = math.nan,
    notes: Sequence[str] = (),
    clock: pd.Timestamp | None = None,
    generated_at: datetime | None = None,
) -> MonitorReport:
    """Write `report.html` and the figures it has data for into `out_dir` (created).

    Args:
        out_dir: e.g. $KAIROS_HOME/monitoring/<model>/<time>.
        model, version: the serving model checked.
        checks: every evaluated check (the table).
        drift: the drift statistics (`pipelines.monitoring.drift.DriftCheck`), with `profile` and the
            live rows they were computed on (`live_rows`: the drift window of `live_frame`).
        perf: live performance per horizon, with the `resolved` outcome rows and the `task`.
        hours: `latency_by_hour` output and the budget.
        notes: extra lines (data window, what the alarm started).
        clock: the monitor's clock (the live window's end; default the newest outcome).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs: list[Path] = []
    if drift:
        figs.append(_drift_figure(drift, out_dir / "drift.png"))
        if profile is not None and live_rows is not None and len(live_rows):
            figs.append(_distributions_figure(drift, profile, live_rows, out_dir / "distributions.png"))
    if perf and resolved is not None and task is not None:
        if clock is not None:
            end_ms = int(pd.Timestamp(clock).value // 1_000_000)
        else:
            end_ms = int(resolved["time_ms"].max()) + 1 if len(resolved) else 0
        figs.append(_live_figure(perf, resolved, task, end_ms, out_dir / "live_performance.png"))
    if hours is not None and len(hours) and int(hours["predictions"].sum()):
        figs.append(_latency_figure(hours, budget_us, out_dir / "latency.png"))
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    fired = [c for c in checks if c.status == FIRED]
    rows = "".join(
        f'<tr class="{c.status}"><td>{html.escape(c.check)}</td><td>{html.escape(c.subject)}</td>'
        f"<td>{html.escape(c.statistic)}</td><td>{'' if c.status == SKIPPED else fmt(c.value)}</td>"
        f"<td>{html.escape(c.op)} {'' if c.status == SKIPPED else fmt(c.threshold)}</td><td>{c.severity}</td>"
        f"<td>{c.status}</td><td>{html.escape(c.detail)}</td></tr>"
        for c in sorted(checks, key=lambda c: (c.status != FIRED, c.status == SKIPPED))
    )
    alerts = "".join(f"<li><code>{html.escape(c.line(model, version))}</code></li>" for c in fired)
    imgs = "".join(
        f'<h3>{html.escape(p.stem.replace("_", " "))}</h3><img alt="{p.name}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><p><a href="{p.name}">{p.name}</a></p>'
        for p in figs
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>monitor {html.escape(model)}</title>
<style>{_CSS}</style></head><body>
<h1>Monitor — {html.escape(model)} v{html.escape(str(version))}</h1>
<p>{when}</p><ul>{note_html}</ul>
<div class="verdict {"alert" if fired else ""}"><b>{len(fired)} alert(s)</b><ul>{alerts}</ul></div>
<h2>Checks</h2><table><tr><th>check</th><th>subject</th><th>statistic</th><th>value</th><th>fires when</th>
<th>severity</th><th>status</th><th>detail</th></tr>{rows}</table>
<h2>Figures</h2>{imgs or "<p>no figures: nothing to plot yet</p>"}
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(body, encoding="utf-8")
    return MonitorReport(path, tuple(figs))
