"""`kairos monitor`: every monitoring check once on the serving model; exit 3 when an alert fires (cron, CI)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flows.cli._common import console, errors, prepare

ALERT_EXIT = 3  # 0: nothing fired; 1: the checks could not run (one `error:` line); 2: bad options
_STYLE = {"fired": "bold red", "skipped": "dim", "ok": "green"}


def monitor(
    model: str = typer.Option(..., "--model", "-m", help="Registered model name, e.g. returns-FILUSDT-1m."),
    retrain: bool = typer.Option(
        True, "--retrain/--no-retrain", help="Drift on valid data starts the retrain flow (gated promotion)."
    ),
    window: str | None = typer.Option(
        None,
        "--window",
        "-w",
        help="Live-performance window, e.g. 24h, 6h, 90m (default: configs/monitoring.yaml).",
    ),
    predlog_dir: Path | None = typer.Option(
        None, "--predlog-dir", help="Prediction log directory (default: serving's)."
    ),
    now: str | None = typer.Option(None, "--now", help="The monitor's clock, ISO-8601 UTC (default: now)."),
) -> None:
    """Run the checks of configs/monitoring.yaml once against the serving (champion) version.

    Prints a table of the checks and one `ALERT ...` line per alert; exit code 0 when nothing fires,
    3 when an alert fires, 1 when the checks cannot run (unknown model, no champion, ...).
    """
    prepare()
    with errors():
        from pipelines.config import duration_seconds

        if window is not None:
            duration_seconds(window)  # a bad --window fails here, in one line
        from flows.monitor import monitor as monitor_flow

        out = monitor_flow(
            model,
            window=window,
            retrain=retrain,
            predlog_dir=str(predlog_dir.resolve()) if predlog_dir else None,
            now=now,
        )
    t = Table(title=f"monitor — {model} v{out['version']} (serving)")
    for col in ("check", "subject", "statistic", "value", "fires when", "severity", "status", "detail"):
        t.add_column(col, overflow="fold")
    from pipelines.monitoring.alerts import fmt

    order = {"fired": 0, "ok": 1, "skipped": 2}
    for c in sorted(out["checks"], key=lambda c: order.get(c.status, 3)):
        skipped = c.status == "skipped"
        t.add_row(
            c.check,
            c.subject if not c.version or c.version == out["version"] else f"v{c.version} {c.subject}",
            c.statistic,
            "" if skipped else fmt(c.value),
            "" if skipped else f"{c.op} {fmt(c.threshold)}",
            c.severity,
            f"[{_STYLE.get(c.status, '')}]{c.status}[/]",
            c.detail,
        )
    console.print(t)
    for line in out["alerts"]:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if out["alerts"]:
        console.print(f"webhook: {out['webhook']}", highlight=False, soft_wrap=True)
    r = out["retrain"]
    if r is not None:
        console.print(
            f"retrain: {'started — ' if r['started'] else 'not started — '}{r['reason']}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    console.print(f"report: {out['report']}  (MLflow run {out['run_id']}, experiment kairos-monitoring)")
    if out["alerts"]:
        raise typer.Exit(ALERT_EXIT)
