"""What every `kairos` command shares: consoles, one-line errors, Prefect quieting, progress bars."""

from __future__ import annotations

import getpass
import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console

from flows.runtime import quiet_third_parties

# Piped output (CI logs, files) gets 160 columns instead of rich's 80, which truncated the report tables.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

SymbolOpt = typer.Option(..., "--symbol", "-s", help="Symbol as stored, e.g. FILUSDT.")
IntervalOpt = typer.Option("1m", "--interval", "-i", help="Candle interval, e.g. 1m, 1h.")
TaskOpt = typer.Option(
    "returns", "--task", "-t", help="What to predict: a task of configs/tasks/ (returns, volatility, ...)."
)


def fail(msg: str) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def errors():
    """Turn expected failures into one line + exit 1."""
    from pipelines.contracts.errors import KairosError

    try:
        yield
    except typer.Exit:
        raise
    except (KairosError, FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("KAIROS_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(msg)
    except Exception as e:  # noqa: BLE001 - a CLI run ends in one line, never a traceback
        if os.environ.get("KAIROS_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail(f"{type(e).__name__}: {first} (run again with KAIROS_DEBUG=1 for the traceback)")


def prepare() -> None:
    quiet_third_parties()
    # Prefect's console handler would print task/flow failure tracebacks; the API still gets every log.
    if not os.environ.get("KAIROS_VERBOSE"):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's temporary local server needs more than its default 20 s to start on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from pipelines.contracts.settings import get_settings

    s = get_settings()
    s.ensure_dirs()
    if "PREFECT_HOME" not in os.environ:
        (s.home_abs / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(s.home_abs / "prefect")


@contextmanager
def progress():
    """Rich progress bars fed by the training code's `progress(stage, done, total)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.runtime import set_reporter

    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as prog:

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total)
            prog.update(tasks[stage], completed=done, total=total)

        set_reporter(report)
        try:
            yield
        finally:
            set_reporter(None)


def user_actor() -> str:
    """Who moved an alias from the command line (recorded in the history)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli:unknown"
