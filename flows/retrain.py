"""The daily retraining loop (the 03:00 UTC deployment): ingest → validate → train → register → promote.

Flows only wire steps. Retries are declared on I/O tasks (sources, store, MLflow) and only for
transient errors (`flows.runtime.is_transient`); validation, training and policy decisions never retry.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.ingest import ingest
from flows.promote import promote
from flows.train import train
from pipelines.contracts.faults import checkpoint


@flow(name="daily_retrain")
def daily_retrain(
    symbol: str = "SYNTHUSDT",
    interval: str = "1m",
    source: str = "synthetic",
    options: dict[str, Any] | None = None,
    model_type: str = "lightgbm",
    task: str = "returns",
) -> dict[str, Any]:
    """ingest → validate → train → register → promote, for one symbol and task (the 03:00 UTC deployment)."""
    ingested = ingest(source, symbol, interval, options or {"days": 1})
    checkpoint("after-ingest")  # crash tests only (pipelines.contracts.faults); a no-op otherwise
    trained = train(symbol, interval, model_type, None, task)
    promoted = promote(symbol, interval, task)
    return {"ingest": ingested, **trained, "promote": promoted}
