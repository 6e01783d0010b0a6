"""Candle batch validation with Great Expectations 1.x, gap reporting and quarantine.

`validate_candles` runs the `kairos_candles` suite over a candle frame (the contract of
`pipelines.contracts.schema`, possibly broken: NaN where a source could not parse a number, duplicates,
out-of-order rows, several symbols) through a GX Checkpoint whose `UpdateDataDocsAction` writes
Data Docs HTML for every validation. Gaps (missing candles) are reported, never failed.
`check_or_quarantine` is what the ingest flow calls: a failed batch is written to the quarantine
folder with its report, then `ValidationFailed` is raised; nothing reaches the store.

GX has no per-group expectation, so row-wise facts that need neighbours are computed in pandas
first as helper columns (prefixed `_`) and checked with plain GX expectations:
    _open_time_increasing  bool   open_time > previous open_time of the same (symbol, interval),
                                  in the batch's row order (first row of a group: True)
    _oc_max, _oc_min       float  max/min(open, close), so one expectation checks each OHLC bound
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.contracts.errors import ValidationFailed
from pipelines.contracts.schema import CANDLE_COLUMNS, INTERVALS, PRICE_COLUMNS, VOLUME_COLUMNS
from validation.gx_context import ExpectationOutcome, run_suite

if TYPE_CHECKING:  # pragma: no cover - typing only
    from great_expectations.expectations import Expectation

SUITE_NAME = "kairos_candles"
FLOAT_MAX = sys.float_info.max  # `between(…, FLOAT_MAX)` rejects +inf; nulls are left to not_null
# GX pandas type names (GX compares `dtype.type`): StringDtype.type is str; DatetimeTZDtype.type
# is pd.Timestamp, so a tz-naive datetime64 column (np.datetime64) fails; numpy dtypes by name.
GX_TYPES: dict[str, str] = {
    "symbol": "str",
    "interval": "str",
    "open_time": "Timestamp",
    **{c: "float64" for c in [*PRICE_COLUMNS, *VOLUME_COLUMNS, "spread_bps", "taker_buy_ratio"]},
    "number_of_trades": "int64",  # a NaN trade count turns the column float64: fails here
}
NULLABLE = {"spread_bps"}


@dataclass(frozen=True)
class GapSummary:
    """Missing candles of one (symbol, interval) series.

    A gap is a step between consecutive distinct open_times longer than the interval. Its span is
    that step: open_time of the first candle after the gap minus open_time of the last one before
    it, so one removed hour of 1m candles is a 61 min span with 60 missing candles.
    """

    symbol: str
    interval: str
    gaps: int
    missing_candles: int
    longest_span: pd.Timedelta  # 0 when there is no gap
    longest_after: pd.Timestamp | None  # open_time of the last candle before the longest gap


@dataclass
class CandleReport:
    """What one validation found; `success` requires at least one evaluated expectation."""

    batch_name: str
    suite_name: str
    success: bool
    evaluated_expectations: int
    results: list[ExpectationOutcome]
    gaps: list[GapSummary]
    rows: int
    data_docs: Path  # the site's index.html
    validation_page: Path | None = None  # this validation's HTML page
    elapsed_s: float = 0.0
    quarantined_to: Path | None = field(default=None)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    @property
    def total_gaps(self) -> int:
        return sum(g.gaps for g in self.gaps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths and times as strings)."""
        out = asdict(self)
        out["results"] = [asdict(r) | {"columns": list(r.columns)} for r in self.results]
        out["gaps"] = [
            asdict(g)
            | {
                "longest_span": str(g.longest_span),
                "longest_span_s": g.longest_span.total_seconds(),
                "longest_after": None if g.longest_after is None else g.longest_after.isoformat(),
            }
            for g in self.gaps
        ]
        for key in ("data_docs", "validation_page", "quarantined_to"):
            out[key] = None if out[key] is None else str(out[key])
        return out

    def to_markdown(self) -> str:
        """A short human report: verdict, failed expectations with row counts, gaps, links."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"# Candle validation {verdict}: {self.batch_name}",
            "",
            f"- suite: `{self.suite_name}`, {self.evaluated_expectations} expectations evaluated, "
            f"{len(self.failed)} failed",
            f"- rows: {self.rows}",
            f"- data docs: {self.validation_page or self.data_docs}",
            "",
            "## Failed expectations",
            "",
        ]
        if not self.failed:
            lines.append("none")
        else:
            lines += ["| expectation | columns | rows | check |", "|---|---|---|---|"]
            for r in self.failed:
                rows = "n/a" if r.unexpected_count is None else str(r.unexpected_count)
                check = r.description + (f" (error: {r.error})" if r.error else "")
                lines.append(f"| {r.expectation} | {', '.join(r.columns)} | {rows} | {check} |")
        lines += [
            "",
            "## Gaps (reported, not failed)",
            "",
            "| symbol | interval | gaps | missing candles | longest span | longest after |",
            "|---|---|---|---|---|---|",
        ]
        for g in self.gaps:
            lines.append(
                f"| {g.symbol} | {g.interval} | {g.gaps} | {g.missing_candles} | {g.longest_span} "
                f"| {g.longest_after} |"
            )
        return "\n".join(lines) + "\n"


def candle_expectations() -> list[Expectation]:
    """The expectations of the `kairos_candles` suite, in evaluation order.

    Column-map expectations skip nulls in GX, so each number is checked once for presence
    (not_null) and once for range (between, whose FLOAT_MAX bound also rejects inf); a NaN price is
    then reported by exactly one expectation.
    """
    import great_expectations.expectations as gxe

    def meta(*cols: str) -> dict[str, Any]:
        return {"columns": list(cols)}

    exps: list[Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the batch has rows"),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(CANDLE_COLUMNS), exact_match=False, description="all candle columns are present"
        ),
    ]
    exps += [
        gxe.ExpectColumnValuesToBeOfType(column=c, type_=t, description=f"{c} has type {t}")
        for c, t in GX_TYPES.items()
    ]
    exps += [
        gxe.ExpectColumnValuesToNotBeNull(column=c, description=f"{c} is present (not null/NaN)")
        for c in CANDLE_COLUMNS
        if c not in NULLABLE
    ]
    exps.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="interval", value_set=sorted(INTERVALS), description="interval is a known candle length"
        )
    )
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column=c, min_value=0, max_value=FLOAT_MAX, strict_min=True, description=f"{c} is finite and > 0"
        )
        for c in PRICE_COLUMNS
    ]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column=c, min_value=0, max_value=FLOAT_MAX, description=f"{c} is finite and >= 0"
        )
        for c in [*VOLUME_COLUMNS, "spread_bps"]
    ]
    exps.append(
        gxe.ExpectColumnValuesToBeBetween(
            column="taker_buy_ratio", min_value=0, max_value=1, description="taker_buy_ratio is in [0, 1]"
        )
    )
    exps.append(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["symbol", "interval", "open_time"],
            description="one row per (symbol, interval, open_time)",
        )
    )
    exps.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="_open_time_increasing",
            value_set=[True],
            meta=meta("symbol", "interval", "open_time"),
            description="open_time strictly increases within each (symbol, interval)",
        )
    )
    pairs = [
        ("high", "_oc_max", ("high", "open", "close"), "high >= max(open, close)"),
        ("_oc_min", "low", ("low", "open", "close"), "low <= min(open, close)"),
        ("volume", "taker_buy_base_asset_volume", None, "taker buy volume <= volume"),
        (
            "quote_asset_volume",
            "taker_buy_quote_asset_volume",
            None,
            "taker buy quote volume <= quote volume",
        ),
    ]
    for a, b, cols, text in pairs:
        exps.append(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=a,
                column_B=b,
                or_equal=True,
                ignore_row_if="either_value_is_missing",
                meta=meta(*(cols or (a, b))),
                description=text,
            )
        )
    return exps


def with_helper_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` plus the `_`-prefixed helper columns the suite checks (input untouched; no deep copy).

    Robust to the broken frames validation exists for: a missing or non-numeric column gives NaN
    helpers (skipped by the pair expectations) and its own type/presence expectation fails.
    """
    n = len(df)

    def num(col: str) -> np.ndarray:
        if col not in df:
            return np.full(n, np.nan)
        return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    o, c = num("open"), num("close")
    return df.assign(
        _open_time_increasing=_increasing_flags(df),
        _oc_max=np.maximum(o, c),  # NaN propagates: such rows are left to the not_null checks
        _oc_min=np.minimum(o, c),
    )


def _open_times(df: pd.DataFrame) -> pd.Series:
    """open_time as UTC datetimes (NaT where unparseable), whatever the column held."""
    t = df["open_time"]
    if isinstance(t.dtype, pd.DatetimeTZDtype):
        return t
    return pd.to_datetime(t, utc=True, errors="coerce")


def _group_keys(df: pd.DataFrame) -> list[str]:
    return [k for k in ("symbol", "interval") if k in df]


def _increasing_flags(df: pd.DataFrame) -> np.ndarray:
    """bool (n,): open_time > the previous row's of the same (symbol, interval), in row order."""
    if "open_time" not in df or len(df) == 0:
        return np.ones(len(df), dtype=bool)
    t = _open_times(df).reset_index(drop=True)  # positional: the batch's index may repeat labels
    keys = [df[k].to_numpy() for k in _group_keys(df)]
    diff = t.groupby(keys, sort=False, dropna=False).diff() if keys else t.diff()
    # NaT diff: first row of a group, or a NaT open_time (reported by not_null instead)
    return (diff.isna() | (diff > pd.Timedelta(0))).to_numpy(dtype=bool)


def find_gaps(df: pd.DataFrame) -> list[GapSummary]:
    """Gaps per (symbol, interval), one summary per series (gaps=0 when complete).

    Duplicates and row order do not matter (distinct open_times are sorted first); series with an
    unknown interval or no open_time are skipped (the suite fails them).
    """
    if not {"symbol", "interval", "open_time"} <= set(df.columns) or len(df) == 0:
        return []
    ns = _open_times(df).array.asi8  # int64 ns since epoch, NaT as min int64
    groups = df[["symbol", "interval"]].groupby(["symbol", "interval"], sort=True, dropna=False).indices
    out: list[GapSummary] = []
    for (symbol, interval), idx in groups.items():
        if not isinstance(interval, str) or interval not in INTERVALS:
            continue
        step = INTERVALS[interval].value
        times = np.sort(ns[idx])  # sort + neighbour compare: ~100x faster than np.unique here
        times = times[np.concatenate(([True], times[1:] != times[:-1]))]
        times = times[times != np.iinfo(np.int64).min]
        d = np.diff(times)  # (m-1,) ns between consecutive distinct candles
        is_gap = d > step
        longest = int(d.max()) if is_gap.any() else 0
        after = pd.Timestamp(int(times[np.argmax(d)]), tz="UTC") if is_gap.any() else None
        out.append(
            GapSummary(
                symbol=str(symbol),
                interval=interval,
                gaps=int(is_gap.sum()),
                missing_candles=int(((d[is_gap] + step - 1) // step - 1).sum()),
                longest_span=pd.Timedelta(longest, unit="ns"),
                longest_after=after,
            )
        )
    return out


def validate_candles(df: pd.DataFrame, *, data_docs_dir: Path, batch_name: str) -> CandleReport:
    """Run the `kairos_candles` suite over `df` and write Data Docs for this validation.

    Args:
        df: candle frame (pipelines.contracts.schema contract), any number of symbols/intervals, any order.
        data_docs_dir: Data Docs site root (index.html) and validation results store.
        batch_name: names the run in Data Docs and reports, e.g. "FILUSDT-1m-20231101".

    Returns:
        CandleReport; `success` is False if any expectation failed or none was evaluated.
    """
    started = time.perf_counter()
    run = run_suite(
        with_helper_columns(df),
        suite_name=SUITE_NAME,
        expectations=candle_expectations(),
        data_docs_dir=data_docs_dir,
        run_name=_safe_name(batch_name),  # GX file stores refuse "/" in keys; the report keeps the name
    )
    return CandleReport(
        batch_name=batch_name,
        suite_name=SUITE_NAME,
        success=run.success,
        evaluated_expectations=run.evaluated,
        results=run.outcomes,
        gaps=find_gaps(df),
        rows=len(df),
        data_docs=run.index_page,
        validation_page=run.validation_page,
        elapsed_s=time.perf_counter() - started,
    )


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "batch"


def quarantine(df: pd.DataFrame, report: CandleReport, quarantine_dir: Path) -> Path:
    """Write the rejected batch and its report to `quarantine_dir/<UTC timestamp>-<batch_name>/`.

    Files: `candles.parquet` (the batch as received), `report.json`, `report.md`. Columns that
    parquet cannot hold as-is (e.g. a price column of mixed strings and floats) are stored as
    strings, and report.json lists them under `stringified_columns`.

    Returns:
        The folder written; also set as `report.quarantined_to`.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = Path(quarantine_dir).expanduser().resolve() / f"{stamp}-{_safe_name(report.batch_name)}"
    folder.mkdir(parents=True, exist_ok=False)
    stringified: list[str] = []
    try:
        df.to_parquet(folder / "candles.parquet", index=False)
    except (TypeError, ValueError):  # pyarrow's ArrowTypeError / ArrowInvalid subclass these
        stringified = [c for c in df.columns if df[c].dtype == object]
        df.astype({c: "string" for c in stringified}).to_parquet(folder / "candles.parquet", index=False)
    report.quarantined_to = folder
    payload = report.to_dict() | {"stringified_columns": stringified}
    (folder / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    (folder / "report.md").write_text(report.to_markdown())
    return folder


def failure_message(report: CandleReport) -> str:
    """One line: batch, each failed expectation with its row count, where the evidence is."""
    parts = []
    for r in report.failed:
        n = r.unexpected_count
        what = "error" if r.error else ("failed" if n is None else f"{n} row{'' if n == 1 else 's'}")
        parts.append(f"{r.label}: {what}")
    if report.evaluated_expectations == 0:
        parts.append("no expectation was evaluated")
    where = f"; quarantined to {report.quarantined_to} (report.md inside)" if report.quarantined_to else ""
    return (
        f"candle batch {report.batch_name!r} failed validation ({len(report.failed)} of "
        f"{report.evaluated_expectations} expectations): {'; '.join(parts)}{where}; "
        f"data docs: {report.validation_page or report.data_docs}; fix the source rows and re-ingest"
    )


def check_or_quarantine(
    df: pd.DataFrame, *, data_docs_dir: Path, quarantine_dir: Path, batch_name: str
) -> CandleReport:
    """Validate `df`; return the report if it passed, else quarantine it and raise.

    Raises:
        ValidationFailed: the batch failed; message names each failed expectation, its row count,
            and the quarantine folder (which holds the data and report).
    """
    report = validate_candles(df, data_docs_dir=data_docs_dir, batch_name=batch_name)
    if report.success:
        return report
    quarantine(df, report, quarantine_dir)
    raise ValidationFailed(failure_message(report))
