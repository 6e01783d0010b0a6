"""The prediction-log contract: where records live, their schema, and the reader the A/B review uses.

The writer is `serving.predlog.PredictionLog` (a batched, fsynced JSON Lines writer off the request
path); the review (`flows/review.py`) and `kairos history` read the log with `read_prediction_log`.
Neither side imports the other: both import this module.

Layout: `<directory>/<model name>/<YYYY-MM-DD>.jsonl` (UTC date of the record's `time`), one JSON
object per line. `<directory>` is `prediction_log.directory` of `configs/serving.yaml`, by default
`$KAIROS_HOME/predictions` (`default_log_dir`).

Record schema (version 1):

| field        | type            | meaning                                                             |
|--------------|-----------------|---------------------------------------------------------------------|
| `v`          | int             | schema version (1)                                                  |
| `request_id` | str             | id of the request (shared by both arms of one shadow request)       |
| `time`       | str             | ISO-8601 UTC time the prediction was made (microseconds)            |
| `symbol`     | str             | e.g. "FILUSDT"                                                      |
| `interval`   | str             | e.g. "1m"                                                           |
| `open_time`  | int             | epoch ms of the candle the prediction was made at (its last input)  |
| `arm`        | str             | "champion" or "challenger"                                          |
| `served`     | bool            | true if this answer was returned to the client (false: shadow)      |
| `mode`       | str             | routing mode: "split", "shadow" or "champion_only"                  |
| `routing_key`| str             | the key hashed for the split (client id header or symbol)           |
| `model`      | str             | registered model name, e.g. "returns-FILUSDT-1m"                    |
| `version`    | str             | registered model version (or "local" for a bundle directory)        |
| `horizons`   | list[int]       | candles ahead, e.g. [1, 2, 3, 4, 5]                                 |
| `predictions`| list[float]     | the model's first output per horizon (returns: ln(close[t+h]/close[t])) |
| `confidence` | list[float]/null| per-horizon confidence if the model outputs one                     |
| `latency_us` | float           | features + model time of this arm, microseconds                     |

pandas is imported inside the reader only: the serving process imports this module for the schema
and never loads pandas.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.contracts.yamlio import read_yaml

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
# fmt: skip below: the 16 names packed in two lines read as the table above; one per line would not.
FIELDS = [
    "v", "request_id", "time", "symbol", "interval", "open_time", "arm", "served", "mode",
    "routing_key", "model", "version", "horizons", "predictions", "confidence", "latency_us",
]  # fmt: skip
# Written only by bundles that have them (whale: extra outputs, top features, the alert raised); None
# in the frame for records without them.
OPTIONAL_FIELDS = ["extras", "top_features", "alert"]
DEFAULT_SUBDIR = "predictions"  # under $KAIROS_HOME when serving.yaml names no directory


def now_iso() -> str:
    """The current time as a record's `time` (ISO-8601 UTC, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def iso_from_epoch(t: float) -> str:
    """`time.time()` seconds → the record's ISO-8601 UTC `time` (microseconds), as `now_iso` writes it."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def default_log_dir(configs_dir: Path, home: Path) -> Path:
    """Where `kairos serve` writes the log: `prediction_log.directory` of `<configs_dir>/serving.yaml`,
    else `<home>/predictions` (the same default as `serving.config.PredLogConfig`)."""
    path = Path(configs_dir) / "serving.yaml"
    section = read_yaml(path).get("prediction_log") if path.exists() else None
    directory = section.get("directory") if isinstance(section, dict) else None
    return Path(directory) if directory else Path(home) / DEFAULT_SUBDIR


def read_prediction_log(directory: Path, model: str) -> pd.DataFrame:
    """All records of `model` under `directory`, oldest file first, as a DataFrame with `FIELDS` (+ the
    `OPTIONAL_FIELDS` that any record has).

    `time` becomes datetime64[ns, UTC]; `open_time` stays int epoch ms; a torn last line (kill -9
    mid-write) is skipped. Returns an empty frame with `FIELDS` when there is no log.
    """
    import pandas as pd

    rows = []
    for path in sorted((Path(directory) / model).glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # torn tail of a killed writer
    extra = [c for c in OPTIONAL_FIELDS if any(c in r for r in rows)]
    df = pd.DataFrame(rows, columns=FIELDS + extra) if rows else pd.DataFrame({c: [] for c in FIELDS})
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601")
    return df
