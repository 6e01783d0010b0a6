"""`kairos review --model NAME` and `kairos rollback --model NAME` (flows/cli.py calls `register(app)`).

flows.cli imports this module while it is itself being imported, so its helpers (`_prepare`,
`_errors`, consoles) are imported inside the commands, never at module level.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Optional

import typer

ModelOpt = typer.Option(..., "--model", "-m", help="Registered model name, e.g. returns-FILUSDT-1m.")


def _user_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli:unknown"


def review(
    model: str = ModelOpt,
    predlog_dir: Optional[Path] = typer.Option(
        None, "--predlog-dir", help="Prediction log directory (default: serving's)."
    ),
    apply: bool = typer.Option(True, "--apply/--no-apply", help="Apply the policy's decision to the aliases."),
) -> None:
    """Review champion vs challenger: outcomes, statistics, HTML report, MLflow run, promotion policy."""
    from flows.cli import _errors, _prepare, console

    _prepare()
    with _errors():
        from rich.table import Table

        from flows.review import ab_review

        out = ab_review(model, str(predlog_dir.resolve()) if predlog_dir else None, apply, _user_actor())
    d = out["decision"]
    if out["report"] is None:
        console.print(f"review: {d.reason}", highlight=False, soft_wrap=True)
        return
    c = out["counts"]
    console.print(f"{model}: champion v{out['champion']} vs challenger v{out['challenger']} — outcomes "
                  f"{c['resolved']:,} resolved, {c['pending']:,} pending, {c['missing']:,} missing candles")  # fmt: skip
    t = Table(title="verdict per horizon (always-valid sequential test)")
    t.add_column("horizon")
    t.add_column("verdict")
    for h, text in sorted(out["verdicts"].items()):
        t.add_row(str(h), text)
    for h, why in sorted(out["skipped"].items()):
        t.add_row(str(h), f"skipped: {why}")
    console.print(t)
    verdict = "[bold green]PROMOTE[/]" if d.promote else "[bold yellow]KEEP CHAMPION[/]"
    console.print(f"decision: {verdict} — {d.reason}", highlight=False, soft_wrap=True)
    for m in out["moves"]:
        console.print(f"moved: {m}", highlight=False, soft_wrap=True)
    if d.promote and not apply:
        console.print("(--no-apply: aliases left as they are)")
    console.print(f"report: {out['report']}  (MLflow run {out['run_id']}, experiment kairos-reviews)")


def rollback(
    model: str = ModelOpt,
    reason: str = typer.Option(
        "rollback from the command line", "--reason", help="Why (recorded in the history)."
    ),
) -> None:
    """Put the previous champion back (recorded like every alias move; run twice to undo)."""
    from flows.cli import _errors, _prepare, console

    _prepare()
    with _errors():
        from flows.runtime import Runtime
        from registry.promotion import rollback as registry_rollback

        move = registry_rollback(Runtime.from_env().mlflow, model, reason=reason, actor=_user_actor())
    console.print(f"rolled back: {move.describe()}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `review` and `rollback` to the main `kairos` app."""
    app.command("review")(review)
    app.command("rollback")(rollback)
