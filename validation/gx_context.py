"""A quiet, self-contained Great Expectations 1.x context for one validation run.

Why ephemeral: the suite, data source and checkpoint are rebuilt from code on every call (the code is
the source of truth, nothing to drift on disk, no file locks between concurrent flows). Only two
things persist, both under the caller's `data_docs_dir`:

- the Data Docs site (HTML, `index.html` at the root), and
- the validation results store (`_results/`, JSON), so that the Data Docs index lists past
  validations (the newest `INDEX_LIMIT`), not only the latest one.

Great Expectations is imported lazily: importing `validation.candles` must stay cheap and free of
side effects (GX takes seconds to import), and serving must never import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation

SITE_NAME = "kairos_site"
RESULTS_SUBDIR = "_results"
INDEX_LIMIT = 200  # validations listed in index.html, newest first


@dataclass(frozen=True)
class ExpectationOutcome:
    """One evaluated expectation: GX type name, the columns it concerns, and its verdict."""

    expectation: str  # e.g. "expect_column_values_to_not_be_null"
    columns: tuple[str, ...]
    success: bool
    unexpected_count: int | None  # rows that broke it; None for table/type-level expectations
    description: str
    error: str | None = None  # set when GX raised instead of evaluating (e.g. a missing column)

    @property
    def label(self) -> str:
        return f"{self.expectation}({', '.join(self.columns)})"


def _error_text(info: dict[str, Any]) -> str | None:
    """First exception message in a GX exception_info: flat, or keyed by metric id when a metric failed."""
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for item in infos:
        if item.get("raised_exception"):
            text = str(item.get("exception_message") or "error").strip()
            return (text.splitlines() or ["error"])[0][:200]
    return None


def _outcome(res: Any) -> ExpectationOutcome:
    """Our summary of one GX ExpectationValidationResult."""
    cfg = res.expectation_config
    kw = cfg.kwargs
    cols = (
        (cfg.meta or {}).get("columns")
        or kw.get("column_list")
        or [kw[k] for k in ("column", "column_A", "column_B") if k in kw]
    )
    missing = ((res.result or {}).get("details") or {}).get("mismatched", {}).get("missing")
    if missing:  # expect_table_columns_to_match_set: name the absent columns
        cols = list(missing)
    err = _error_text(res.exception_info or {})
    count = (res.result or {}).get("unexpected_count")
    return ExpectationOutcome(
        expectation=cfg.type,
        columns=tuple(str(c) for c in cols),
        success=bool(res.success),
        unexpected_count=None if count is None else int(count),
        description=cfg.description or "",
        error=err,
    )


@dataclass(frozen=True)
class SuiteRun:
    """The outcome of one `run_suite` call."""

    success: bool  # every expectation passed AND at least one was evaluated
    evaluated: int
    outcomes: list[ExpectationOutcome]
    index_page: Path  # the Data Docs site's index.html
    validation_page: Path | None  # this validation's HTML page


def build_context(data_docs_dir: Path) -> AbstractDataContext:
    """An ephemeral GX context whose Data Docs and validation results live in `data_docs_dir`.

    Progress bars and analytics are off so that a daily flow's log stays readable.

    Args:
        data_docs_dir: directory of the Data Docs site; created if missing.

    Returns:
        An `EphemeralDataContext` with one Data Docs site named `SITE_NAME`.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    docs = Path(data_docs_dir).expanduser().resolve()
    docs.mkdir(parents=True, exist_ok=True)
    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    stores: dict[str, Any] = dict(defaults.stores)
    stores[defaults.validation_results_store_name] = {
        "class_name": "ValidationResultsStore",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs / RESULTS_SUBDIR),
        },
    }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        stores=stores,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        data_docs_sites={
            SITE_NAME: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
                # the index loads every listed result (O(n) JSON reads per build): list the newest only;
                # older validation pages stay on disk
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "validation_results_limit": INDEX_LIMIT,
                },
            }
        },
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def validation_page(context: AbstractDataContext, result_identifier: Any) -> Path | None:
    """The local HTML page Data Docs wrote for one validation result, or None if it is not there."""
    for site in context.get_docs_sites_urls(resource_identifier=result_identifier, site_names=[SITE_NAME]):
        url = site.get("site_url") or ""
        if url.startswith("file://"):
            path = Path(url.removeprefix("file://"))
            if path.exists():
                return path
    return None


def run_suite(
    frame: pd.DataFrame,
    *,
    suite_name: str,
    expectations: list[Expectation],
    data_docs_dir: Path,
    run_name: str,
) -> SuiteRun:
    """Validate `frame` against `expectations` through a Checkpoint that updates Data Docs.

    Args:
        frame: the whole batch, helper columns included.
        suite_name: names the suite in Data Docs (one page per suite).
        expectations: fresh Expectation objects (a suite takes ownership of them).
        data_docs_dir: Data Docs site root and validation results store.
        run_name: groups this validation in Data Docs; no "/" or "\\" (GX file keys).

    Returns:
        SuiteRun. GX calls a suite that evaluated zero expectations a success; `success` does not.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    context = build_context(data_docs_dir)
    batch_def = (
        context.data_sources.add_pandas("kairos")
        .add_dataframe_asset(name=suite_name)
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_definition", data=batch_def, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_name}_checkpoint",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE_NAME])],
            result_format="SUMMARY",  # counts + a few example rows; COMPLETE would list every bad row
        )
    )
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
    ((identifier, suite_result),) = result.run_results.items()

    outcomes = [_outcome(r) for r in suite_result.results]
    evaluated = int(suite_result.statistics["evaluated_expectations"])
    return SuiteRun(
        success=bool(suite_result.success) and evaluated > 0 and all(o.success for o in outcomes),
        evaluated=evaluated,
        outcomes=outcomes,
        index_page=Path(data_docs_dir).expanduser().resolve() / "index.html",
        validation_page=validation_page(context, identifier),
    )
