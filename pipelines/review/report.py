"""The A/B review report: one self-contained HTML file plus its PNG figures beside it.

Figures (one panel per horizon, champion vs challenger):
- `cumulative_loss_difference.png`: D(t) = n_a(t) · (mean loss_a − mean loss_b) up to t, direction
  loss; rising = the challenger is winning (for shadow traffic this is the plain cumulative sum
  of the paired loss differential);
- `accuracy_over_time.png`: cumulative direction accuracy per arm with a Wilson band whose
  sample size is scaled by the arm's n_eff / n (autocorrelation-aware, as `arm_metrics`);
- `pnl_curves.png`: cumulative fee-aware P&L of the sign strategy per arm (every h-th request).
The HTML embeds the PNGs as data URIs (so it renders alone, e.g. in the MLflow artifact viewer)
and the files sit beside it (so MLflow lists them as figures). matplotlib is used through the
object API with the Agg canvas: no pyplot global state, no display needed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipelines.review.arms import ArmData
from pipelines.review.compare import ABResult
from pipelines.training.metrics import direction_hits, fee_aware_pnl, trade_rows, wilson_interval

FIGURES = ("cumulative_loss_difference.png", "accuracy_over_time.png", "pnl_curves.png")
_COLORS = {"champion": "#1f77b4", "challenger": "#d62728"}


@dataclass(frozen=True)
class ReviewReport:
    html: Path  # report.html
    figures: tuple[Path, ...]  # the PNGs beside it


def _dt(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, dtype="int64").astype("datetime64[ms]")


def _direction_rows(arm: ArmData) -> tuple[np.ndarray, np.ndarray]:
    """(time ms (m,), hit 0/1 (m,)) over rows with realised != 0."""
    keep = arm.realised != 0
    return arm.time[keep], direction_hits(arm.prediction, arm.realised)


def _loss_rows(arm: ArmData, loss: Callable | None) -> tuple[np.ndarray, np.ndarray]:
    """(time ms (m,), loss (m,)): the task's per-request loss, or the direction loss 1 - hit."""
    if loss is None:
        t, hits = _direction_rows(arm)
        return t, 1.0 - hits
    values, keep = loss(arm.prediction, arm.realised)
    return arm.time[keep], np.asarray(values, np.float64)


def cumulative_loss_difference(
    champion: ArmData, challenger: ArmData, loss: Callable | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(time ms (k,), D (k,)) with D(t) = n_a(t) · (mean loss_a(t) − mean loss_b(t)).

    `loss` is the task's `row_loss` (default: the direction loss). Evaluated at every champion row time
    once both arms have a row; equals cumsum(loss_a − loss_b) for paired arms.
    """
    ta, la = _loss_rows(champion, loss)
    tb, lb = _loss_rows(challenger, loss)
    if not ta.size or not tb.size:
        return np.array([], dtype=np.int64), np.array([])
    la_cum = np.cumsum(la)  # champion losses so far
    lb_cum = np.cumsum(lb)
    nb = np.searchsorted(tb, ta, side="right")  # challenger rows up to each champion row
    ok = nb > 0
    na = np.arange(1, ta.size + 1)[ok]
    mean_b = lb_cum[nb[ok] - 1] / nb[ok]
    return ta[ok], la_cum[ok] - na * mean_b


def accuracy_path(arm: ArmData, n_eff_ratio: float, confidence: float = 0.95, points: int = 200):
    """(time ms, accuracy, low, high) of the cumulative accuracy at up to `points` rows."""
    t, hits = _direction_rows(arm)
    if not t.size:
        return (np.array([], dtype=np.int64),) + (np.array([]),) * 3
    idx = np.unique(np.linspace(0, t.size - 1, min(points, t.size)).astype(int))
    n = idx + 1.0
    acc = np.cumsum(hits)[idx] / n
    ratio = min(max(n_eff_ratio, 1e-3), 1.0) if np.isfinite(n_eff_ratio) else 1.0
    bands = np.array([wilson_interval(a * m * ratio, m * ratio, confidence) for a, m in zip(acc, n)])
    return t[idx], acc, bands[:, 0], bands[:, 1]


def pnl_path(arm: ArmData, fee_bps: float) -> tuple[np.ndarray, np.ndarray]:
    """(time ms, cumulative net log P&L in %) of the sign strategy trading every h-th request."""
    rows = trade_rows(len(arm), arm.horizon)
    pnl = fee_aware_pnl(arm.prediction[rows], arm.realised[rows], fee_bps)
    return arm.time[rows], 100.0 * np.cumsum(pnl)


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.4 * n_panels + 0.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, squeeze=False, sharex=True)[:, 0]
    return fig, axes


def _time_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("request time (UTC)")


def _plot_all(
    out_dir: Path,
    arms: dict[int, tuple[ArmData, ArmData]],
    results: dict[int, ABResult],
    fee_bps: float,
    loss: Callable | None = None,
    directional: bool = True,
) -> tuple[Path, ...]:
    hs = sorted(arms)
    fig_d, ax_d = _figure(len(hs))
    fig_a, ax_a = _figure(len(hs))
    fig_p, ax_p = _figure(len(hs))
    for i, h in enumerate(hs):
        champ, chall = arms[h]
        res = results.get(h)
        t, d = cumulative_loss_difference(champ, chall, loss)
        ax_d[i].plot(_dt(t), d, color="k", lw=1)
        ax_d[i].axhline(0, color="grey", lw=0.6)
        ax_d[i].set_ylabel(f"h{h}: cum. loss diff")
        for who, arm in (("champion", champ), ("challenger", chall)):
            m = None if res is None else (res.champion if who == "champion" else res.challenger)
            ratio = (m.accuracy_n_eff / m.n_direction) if m is not None and m.n_direction else 1.0
            ta, acc, lo, hi = accuracy_path(arm, ratio, 1 - (res.alpha if res else 0.05))
            ax_a[i].plot(_dt(ta), 100 * acc, color=_COLORS[who], lw=1, label=arm.name)
            ax_a[i].fill_between(_dt(ta), 100 * lo, 100 * hi, color=_COLORS[who], alpha=0.2, lw=0)
            tp, cum = pnl_path(arm, fee_bps)
            ax_p[i].plot(_dt(tp), cum, color=_COLORS[who], lw=1, label=arm.name)
        ax_a[i].set_ylabel(f"h{h}: accuracy %")
        ax_p[i].set_ylabel(f"h{h}: P&L %")
        ax_p[i].axhline(0, color="grey", lw=0.6)
    for axes in (ax_d, ax_a, ax_p):
        _time_axis(axes[-1])
    ax_a[0].legend(loc="best", fontsize=8)
    ax_p[0].legend(loc="best", fontsize=8)
    loss_name = "direction" if loss is None else getattr(loss, "__name__", "task")
    fig_d.suptitle(f"Cumulative {loss_name}-loss difference (champion − challenger; up = challenger wins)")
    fig_a.suptitle("Cumulative direction accuracy with HAC-adjusted Wilson bands")
    fig_p.suptitle(f"Cumulative fee-aware P&L of the sign strategy ({fee_bps:g} bp per unit turnover)")
    paths = []
    figs = (fig_d, fig_a, fig_p) if directional else (fig_d,)  # accuracy and sign P&L only mean something
    for fig, name in zip(figs, FIGURES):  # for signed-return predictions
        fig.savefig(out_dir / name, format="png")
        paths.append(out_dir / name)
    return tuple(paths)


def _pct(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float | None, fmt: str = "{:+.4g}") -> str:
    return "—" if x is None or not np.isfinite(x) else fmt.format(x)


def _table(results: dict[int, ABResult]) -> str:
    head = (
        "horizon",
        "arm",
        "n",
        "accuracy [CI]",
        "IC",
        "MSE",
        "P&L (fees)",
        "verdict (always-valid)",
        "p (always-valid)",
        "DM p / bootstrap CI",
        "naive Welch p (1 look)",
    )
    rows = []
    for h, r in sorted(results.items()):
        fixed = (
            f"DM {r.dm.dm_hln:+.2f}, p={r.dm.p_value:.3g}"
            if r.dm
            else f"[{_num(r.bootstrap.low)}, {_num(r.bootstrap.high)}]"
            if r.bootstrap
            else "—"
        )
        welch = f"{r.welch.p_value:.3g} (d={r.welch.cohens_d:+.3f})" if r.welch else "—"
        for k, (who, m) in enumerate((("champion", r.champion), ("challenger", r.challenger))):
            cells = [
                str(h) if k == 0 else "",
                who,
                f"{m.n:,}",
                f"{_pct(m.accuracy)} [{_pct(m.accuracy_ci[0])}, {_pct(m.accuracy_ci[1])}]",
                _num(m.ic),
                _num(m.mse, "{:.3e}"),
                _num(m.pnl_total_return * 100, "{:+.3f}%"),
            ]
            cells += [r.verdict, f"{r.p_value:.3g}", fixed, welch] if k == 0 else [""] * 4
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
    ".verdict{font-size:1.2em;padding:.6em;border-left:5px solid #555;background:#f5f5f5}"
    "img{max-width:100%}"
)


def write_review_report(
    out_dir: Path,
    *,
    model: str,
    champion_version: str,
    challenger_version: str,
    arms: dict[int, tuple[ArmData, ArmData]],
    results: dict[int, ABResult],
    decision: str,
    counts: dict[str, int],
    fee_bps: float,
    missing_note: str = "",
    generated_at: datetime | None = None,
    loss: Callable | None = None,
    directional: bool = True,
) -> ReviewReport:
    """Write `report.html` and the three PNGs into `out_dir` (created).

    Args:
        out_dir: directory for the report (e.g. $KAIROS_HOME/reviews/<model>/<time>).
        model: registered model name.
        champion_version / challenger_version: the versions compared.
        arms: horizon → (champion ArmData, challenger ArmData), as given to `compare_arms`.
        results: horizon → ABResult (horizons where compare_arms refused are absent).
        decision: the policy's decision in words (one line).
        counts: outcome rows resolved / pending / missing.
        fee_bps: fee of the P&L curves.
        missing_note: extra line on missing candles (e.g. the first few gaps).
        generated_at: report time (default now, UTC).
        loss: the task's per-request loss (`Task.row_loss`; default the direction loss).
        directional: the task predicts signed returns (accuracy and P&L figures are drawn).

    Returns:
        ReviewReport with the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _plot_all(out_dir, arms, results, fee_bps, loss, directional) if arms else ()
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    any_r = next(iter(results.values()), None)
    mode = "—" if any_r is None else ("shadow (paired)" if any_r.paired else "split")
    summaries = "".join(f"<li>{html.escape(r.summary())}</li>" for _, r in sorted(results.items()))
    imgs = "".join(
        f'<h3>{html.escape(p.stem.replace("_", " "))}</h3><img alt="{p.name}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><p><a href="{p.name}">{p.name}</a></p>'
        for p in figures
    )
    method = any_r.method if any_r else "—"
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>A/B review {html.escape(model)}</title>
<style>{_CSS}</style></head><body>
<h1>A/B review — {html.escape(model)}: champion v{html.escape(str(champion_version))} vs challenger
v{html.escape(str(challenger_version))}</h1>
<p>{when} · traffic: {mode} · outcomes: {counts.get("resolved", 0):,} resolved,
{counts.get("pending", 0):,} pending (kept for the next review), {counts.get("missing", 0):,} with missing
candles {html.escape(missing_note)}</p>
<div class="verdict"><b>Decision:</b> {html.escape(decision)}</div>
<h2>Verdict per horizon</h2><ul>{summaries or "<li>no horizon has enough resolved rows yet</li>"}</ul>
<p>Verdicts come from {html.escape(method)}: valid however many times this review has run. The
Diebold–Mariano / bootstrap and the naive Welch figures hold for a single look only and are shown for
reference (the naive Welch test assumes independent rows and overstates certainty on per-minute errors).</p>
{_table(results)}
<h2>Figures</h2>{imgs or "<p>no figures: no resolved rows yet</p>"}
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(body, encoding="utf-8")
    return ReviewReport(path, figures)
