"""Batch scoring (`kairos predict`): a registered version's bundle on the candles stored for a symbol,
written to CSV or Parquet.

A plain function, not a Prefect flow: it reads the registry and the store and writes one file, so a
command-line run does not wait for Prefect's temporary server. It wires, nothing more: the bundle
comes from `registry.bundles`, the candles from the store, the scores from
`pipelines.training.predict.score_candles`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from flows.runtime import Runtime

FORMATS = (".csv", ".parquet")


def output_format(path: Path) -> str:
    """ ".csv" or ".parquet" from the file name; ValueError naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out {path}: write a .csv or a .parquet file (got {suffix or 'no suffix'!r})")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(
                f"--out {path}: writing Parquet needs pyarrow; install it or write .csv"
            ) from None
    return suffix


def parse_time(value: str | None, option: str) -> pd.Timestamp | None:
    """An ISO date/time (UTC if it names no zone) or None; ValueError naming the option otherwise."""
    if value is None:
        return None
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError):
        t = pd.NaT
    if t is pd.NaT:
        raise ValueError(f"{option} {value!r} is not an ISO date/time, e.g. 2023-08-01 or 2023-08-01T12:00Z")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def write_scores(frame: pd.DataFrame, path: Path) -> None:
    """CSV (open_time as UTC ISO text, empty cells where not scored) or Parquet, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if output_format(path) == ".csv":
            text = frame.assign(open_time=frame["open_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
            text.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def batch_predict(
    model: str,
    symbol: str,
    out: Path,
    *,
    alias: str | None = None,
    version: str | None = None,
    interval: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    """Score the stored candles of `symbol` in [start, end] through `model` at `alias`/`version`.

    Args:
        model: registered model name, e.g. "returns-FILUSDT-1m".
        symbol: the candles scored; may differ from the model's symbol (a note says so).
        out: .csv or .parquet file (replaced).
        alias, version: which version (default: the `champion` alias); not both.
        interval: must be the model's; None = the model's.
        start, end: ISO open times (inclusive, UTC if naive); None = the first / last stored candle.

    Returns:
        {"model", "version", "symbol", "interval", "rows", "scored", "start", "end", "out", "columns",
        "note"} where `note` is a line for the user or None.

    Raises:
        RegistryError (unknown model, alias or version), ValueError (no candles, interval mismatch,
        bad times or file name), BundleError.
    """
    from pipelines.contracts.bundle import read_bundle
    from pipelines.contracts.schema import interval_ms
    from pipelines.training.predict import history_rows, score_candles
    from registry.bundles import download_bundle, resolve_version
    from registry.history import current_aliases

    out = Path(out)
    output_format(out)  # a bad file name fails before any work
    t0, t1 = parse_time(start, "--start"), parse_time(end, "--end")
    if t0 is not None and t1 is not None and t0 > t1:
        raise ValueError(f"--start {t0.isoformat()} is after --end {t1.isoformat()}")
    rt = Runtime.from_env()
    client = rt.mlflow
    current_aliases(client, model)  # "registered model ... does not exist"
    mv = resolve_version(client, model, version=version, alias=alias)
    tmp = rt.settings.home_abs / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{model}-v{mv.version}-", dir=tmp) as d:
        onnx_bytes, manifest = read_bundle(
            download_bundle(client, model, version=str(mv.version), dst=Path(d) / "bundle")
        )
    if interval is not None and interval != manifest.interval:
        raise ValueError(
            f"{model} v{mv.version} scores {manifest.interval} candles, not {interval}; "
            f"pass --interval {manifest.interval}"
        )
    interval = manifest.interval
    store = rt.store()
    if store.count(symbol, interval) == 0:
        stored = [i for s, i in store.symbols() if s == symbol]
        has = f" (it has {', '.join(stored)})" if stored else ""
        raise ValueError(
            f"no {interval} candles stored for {symbol}{has}; ingest them first (kairos ingest ...)"
        )
    lo = (
        None if t0 is None else t0 - pd.Timedelta(milliseconds=interval_ms(interval) * history_rows(manifest))
    )
    candles = store.load(symbol, interval, start=lo, end=t1)
    scores = score_candles(candles, onnx_bytes, manifest, start=t0, end=t1)
    if scores.empty:
        st = store.status().set_index(["symbol", "interval"]).loc[(symbol, interval)]
        raise ValueError(
            f"no stored {symbol} {interval} candles in [{start or 'first'}, {end or 'last'}]; "
            f"stored: {st['first']:%Y-%m-%dT%H:%M}Z .. {st['last']:%Y-%m-%dT%H:%M}Z"
        )
    write_scores(scores, out)
    note = None
    if symbol != manifest.symbol:
        note = f"note: {model} was trained on {manifest.symbol}; scoring {symbol} candles with it"
    return {
        "model": model,
        "version": str(mv.version),
        "symbol": symbol,
        "interval": interval,
        "rows": len(scores),
        "scored": int(scores["scored"].sum()),
        "start": scores["open_time"].iloc[0],
        "end": scores["open_time"].iloc[-1],
        "out": out,
        "columns": [c for c in scores.columns if c not in ("symbol", "open_time", "scored")],
        "note": note,
    }
