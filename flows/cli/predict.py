"""`kairos predict`: score stored candles through a registered model's bundle, in batch, to CSV/Parquet."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli._common import SymbolOpt, console, errors, prepare


def predict(
    model: str = typer.Option(..., "--model", "-m", help="Registered model name, e.g. returns-FILUSDT-1m."),
    alias: str | None = typer.Option(
        None, "--alias", help="Version by alias, e.g. champion, challenger (default: champion)."
    ),
    version: int | None = typer.Option(None, "--version", help="Version number (instead of --alias)."),
    symbol: str = SymbolOpt,
    interval: str | None = typer.Option(
        None, "--interval", "-i", help="Candle interval; must be the model's (default: the model's)."
    ),
    start: str | None = typer.Option(
        None, "--start", help="First open time scored, ISO, UTC if no zone (default: first stored)."
    ),
    end: str | None = typer.Option(
        None, "--end", help="Last open time scored, ISO, UTC if no zone (default: last stored)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: FILE.csv or FILE.parquet (replaced)."),
) -> None:
    """Score the stored candles of a symbol through a registered model's bundle; write CSV or Parquet.

    One row per stored candle in [--start, --end]: symbol, open_time (UTC; ISO text in CSV), scored,
    and every output of the model's ONNX graph: <output>_h<h> per horizon, <output> for a single
    value, <output>_<i> otherwise. History before --start is loaded for the feature warm-up (and the
    window of sequence models); rows still inside warm-up, or with non-finite features, are KEPT with
    empty outputs and scored=false (their count is printed). Works for any task; a symbol other than
    the model's is scored with a note.
    """
    prepare()
    with errors():
        from flows.predict import batch_predict

        res = batch_predict(
            model,
            symbol,
            out,
            alias=alias,
            version=None if version is None else str(version),
            interval=interval,
            start=start,
            end=end,
        )
    if res["note"]:
        console.print(res["note"], highlight=False, soft_wrap=True)
    unscored = res["rows"] - res["scored"]
    console.print(
        f"{res['model']} v{res['version']} on {res['symbol']} {res['interval']} "
        f"{res['start']:%Y-%m-%dT%H:%M}Z .. {res['end']:%Y-%m-%dT%H:%M}Z: wrote {res['rows']:,} rows "
        f"({res['scored']:,} scored, {unscored:,} not scored: warm-up or non-finite features) to {res['out']}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"columns: {', '.join(res['columns'])}", highlight=False, soft_wrap=True)
