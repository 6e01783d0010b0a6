"""`kairos feed`: follow an exchange's closed candles into the store, and on to serving.

    kairos feed --exchange binance --symbols FILUSDT,NEARUSDT [--interval 1m] [--since 2024-01-01]
                [--serve-url http://127.0.0.1:8000] [--api-key KEY] [--mode auto|ws|rest] [--once | --until T]

The loop is `pipelines.live` (no Prefect: a flow run per candle would cost more than the candle's work);
this module only wires it: the store and folders from settings, the candle suite (a bad batch goes to
the quarantine folder), serving's client, SIGINT/SIGTERM → a clean stop, and a summary table at the end.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import typer

from flows.cli._common import IntervalOpt, console, errors, prepare


def candle_validator(data_docs_dir, quarantine_dir) -> Callable[[Any, str], Any]:
    """The ingest flow's check (candle suite; a bad batch is quarantined and raises ValidationFailed).

    Data Docs go to one sub-site per UTC hour: GX rebuilds a site's index on every validation, which
    grows with the validations it holds, and a feed validates every minute."""
    from validation.candles import check_or_quarantine

    def validate(df, batch_name: str):
        hour = datetime.now(UTC).strftime("%Y%m%dT%H")
        return check_or_quarantine(
            df,
            data_docs_dir=data_docs_dir / "feed" / hour,
            quarantine_dir=quarantine_dir,
            batch_name=batch_name,
        )

    return validate


def build_feeder(cfg, serve_url: str | None = None, api_key: str | None = None, **kwargs: Any):
    """A LiveFeeder on the settings' store, quarantine and Data Docs folders; `kwargs` go to LiveFeeder
    (rest, clock, sleep: tests pass the fake exchange's)."""
    from flows.runtime import Runtime
    from pipelines.live import LiveFeeder, ServingClient

    rt = Runtime.from_env()
    s = rt.settings
    serving = ServingClient(serve_url, api_key) if serve_url else None
    return LiveFeeder(cfg, rt.store(), candle_validator(s.data_docs_dir, s.quarantine_dir), serving, **kwargs)


def _log_to_stderr(verbose: bool) -> None:
    log = logging.getLogger("kairos.feed")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def feed(
    symbols: str = typer.Option(
        ..., "--symbols", help="Comma-separated symbols as stored, e.g. FILUSDT,NEARUSDT."
    ),
    exchange: str = typer.Option("binance", help="ccxt exchange id."),
    interval: str = IntervalOpt,
    serve_url: str | None = typer.Option(
        None, envvar="KAIROS_SERVE_URL", help="Serving base URL to push candles to; none: store only."
    ),
    api_key: str | None = typer.Option(
        None,
        envvar="KAIROS_FEED_API_KEY",
        help="Serving API key with the `stream` scope (or env KAIROS_FEED_API_KEY).",
    ),
    mode: str = typer.Option("auto", help="auto (websocket where ccxt.pro has it, else REST), ws or rest."),
    since: str | None = typer.Option(
        None, help="First backfill start (ISO, UTC) for a symbol the store lacks."
    ),
    until: str | None = typer.Option(
        None, help="Stop once every candle opened before this (ISO, UTC) is stored."
    ),
    once: bool = typer.Option(False, "--once", help="Catch up to now (backfill + push) and exit."),
    no_prime: bool = typer.Option(
        False,
        "--no-prime",
        help="Do not reset and warm serving's streams from the store before the first push.",
    ),
    exchange_config: str | None = typer.Option(
        None, help='ccxt exchange constructor options as JSON, e.g. \'{"options": {"defaultType": "spot"}}\'.'
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug log lines."),
) -> None:
    """Follow closed candles from an exchange (websocket or REST), store them and push them to serving.

    Gaps (a dropped connection, a missed message, a restart) are backfilled from the newest stored candle;
    a bad batch is quarantined and skipped; serving being down keeps the candles in the store until it
    answers. Ctrl-C or SIGTERM stops cleanly and prints what was done."""
    prepare()
    with errors():
        import json

        from pipelines.live import FeedConfig

        if once and until:
            raise ValueError("pass --once or --until, not both")
        try:
            ex_config = json.loads(exchange_config) if exchange_config else None
        except json.JSONDecodeError as e:
            raise ValueError(f"--exchange-config is not valid JSON: {e}") from None
        cfg = FeedConfig(
            exchange=exchange,
            symbols=tuple(s.strip() for s in symbols.split(",") if s.strip()),
            interval=interval,
            exchange_config=ex_config,
            mode=mode,  # type: ignore[arg-type]  (FeedConfig names the allowed ones)
            since=since,
            until=until,
            once=once,
            prime=not no_prime,
        )
        _log_to_stderr(verbose)
        feeder = build_feeder(cfg, serve_url, api_key)
        if serve_url is None:
            logging.getLogger("kairos.feed").info("no --serve-url: candles are stored, not pushed")

        def on_signal(signum: int, _frame: Any) -> None:
            logging.getLogger("kairos.feed").info(
                "%s: stopping after the step in progress", signal.Signals(signum).name
            )
            feeder.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            feeder.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if feeder.serving is not None:
                feeder.serving.close()
        _print_summary(feeder)


def _print_summary(feeder) -> None:
    from rich.table import Table

    table = Table(title=f"kairos feed: {feeder.cfg.exchange} {feeder.cfg.interval}")
    df = feeder.summary()
    for c in df.columns:
        table.add_column(c, justify="right" if df[c].dtype.kind in "iu" else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    st = feeder.stats
    pusher = feeder.pusher
    extra = f", serving outages {pusher.outages}, stream re-syncs {pusher.resyncs}" if pusher else ""
    console.print(f"{st.passes} passes, {st.reconnects} reconnects{extra}")
