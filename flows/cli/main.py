"""The `kairos` app: one typer app, each command group in its own module, wired here and only here.

Every command has --help. Long steps show progress bars; bad input ends with a one-line
`error: ...` and exit code 1, never a traceback (set KAIROS_DEBUG=1 to see one).
"""

from __future__ import annotations

import sys

import typer

from flows.cli import data, feed, monitor, predict, review, serve, train, tune

app = typer.Typer(
    help="Kairos: ingest → validate → train walk-forward → ONNX → MLflow registry → serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.ingest_app, name="ingest")
app.add_typer(data.data_app, name="data")
app.command()(train.train)
app.command()(train.promote)
app.command()(train.retrain)
app.command()(train.demo)
app.command()(tune.tune)
app.command()(review.review)
app.command()(review.rollback)
app.command()(review.history)
app.command()(predict.predict)
app.command()(monitor.monitor)
app.command()(feed.feed)
app.command(help="Serve the champion (and challenger) over REST + WebSocket with hot reload.")(serve.serve)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
