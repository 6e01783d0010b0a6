"""The reference profile contract: what a model saw in training, compact enough for the manifest.

Training builds one `ColumnProfile` per model input feature and per model output from the final
training window (quantile bins of the reference distribution); the monitor (over the store) and
serving (online, per candle) count live values into the same bins and compare the two histograms.

Statistics on binned counts (both sides use the same bins, so they agree bit for bit):
- PSI (population stability index) with a small floor on empty bins;
- the KS statistic evaluated at the bin edges (max |live CDF - reference CDF|), a lower bound of the
  exact two-sample KS statistic that needs only the counts.

The alarm thresholds are *calibrated* (pipelines.monitoring.drift, block permutation on no-drift
history) and stored beside the bins in `ReferenceProfile.alarm`; this module only defines the format
and the arithmetic. Pure numpy + stdlib: serving imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PROFILE_VERSION = 1
PSI_FLOOR = 1e-4  # share given to an empty bin so that PSI stays finite


@dataclass(frozen=True)
class ColumnProfile:
    """One feature or model output: interior bin edges and the reference share of each bin.

    `edges` are strictly increasing interior cut points (quantiles of the reference, duplicates
    removed), so there are len(edges) + 1 bins: bin i holds edges[i-1] < x <= edges[i]. NaN values are
    counted apart (`nan_share`), never in a bin.
    """

    name: str
    kind: str  # "feature" | "output"
    edges: list[float]
    shares: list[float]  # len(edges) + 1, sums to 1 over the non-NaN reference values
    nan_share: float
    n: int  # reference rows

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1


@dataclass(frozen=True)
class ReferenceProfile:
    """All columns of one model, plus the calibrated alarm (filled by pipelines.monitoring)."""

    columns: list[ColumnProfile]
    window: dict[str, Any] = field(default_factory=dict)  # {"start", "end", "rows"} of the reference
    alarm: dict[str, Any] = field(default_factory=dict)  # calibrated thresholds and how they were found
    version: int = PROFILE_VERSION

    def column(self, name: str) -> ColumnProfile:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"reference profile has no column {name!r}")

    def names(self, kind: str | None = None) -> list[str]:
        return [c.name for c in self.columns if kind is None or c.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceProfile:
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(f"reference profile version {d.get('version')!r} is not {PROFILE_VERSION}")
        cols = [ColumnProfile(**c) for c in d["columns"]]
        return cls(columns=cols, window=dict(d.get("window", {})), alarm=dict(d.get("alarm", {})))


def column_profile(name: str, values: np.ndarray, kind: str = "feature", bins: int = 10) -> ColumnProfile:
    """Quantile bins of `values` (NaN counted apart). A constant column gets one bin."""
    x = np.asarray(values, dtype=np.float64).ravel()
    finite = x[np.isfinite(x)]
    n = int(x.size)
    if finite.size == 0:
        return ColumnProfile(name, kind, [], [1.0], 1.0 if n else 0.0, n)
    qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(qs)
    edges = edges[edges < finite.max()]  # an edge at the max would leave an empty top bin
    counts = bin_counts(finite, edges)
    return ColumnProfile(
        name,
        kind,
        [float(e) for e in edges],
        [float(c) for c in counts / counts.sum()],
        float(1 - finite.size / n),
        n,
    )


def build_profile(
    columns: dict[str, np.ndarray],
    kinds: dict[str, str] | None = None,
    *,
    bins: int = 10,
    window: dict[str, Any] | None = None,
) -> ReferenceProfile:
    """Profile every column of `columns` (name → values); `kinds` maps a name to "output" (default "feature")."""
    kinds = kinds or {}
    cols = [column_profile(k, v, kinds.get(k, "feature"), bins) for k, v in columns.items()]
    return ReferenceProfile(columns=cols, window=dict(window or {}))


def bin_index(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Bin of each value (0 .. len(edges)); NaN values get -1."""
    x = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left")
    return np.where(np.isnan(x), -1, idx)


def bin_counts(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Counts per bin of the non-NaN `values` (length len(edges) + 1)."""
    idx = bin_index(values, edges)
    return np.bincount(idx[idx >= 0], minlength=len(edges) + 1).astype(np.float64)


def psi(ref_shares: np.ndarray | list[float], live_counts: np.ndarray) -> float:
    """Population stability index of live counts against reference shares (same bins); NaN if no live rows."""
    live = np.asarray(live_counts, dtype=np.float64)
    total = live.sum()
    if total <= 0:
        return float("nan")
    p = np.maximum(live / total, PSI_FLOOR)
    q = np.maximum(np.asarray(ref_shares, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def ks_binned(ref_shares: np.ndarray | list[float], live_counts: np.ndarray) -> float:
    """max |CDF_live - CDF_ref| at the bin edges; NaN if no live rows."""
    live = np.asarray(live_counts, dtype=np.float64)
    total = live.sum()
    if total <= 0:
        return float("nan")
    return float(
        np.max(np.abs(np.cumsum(live / total) - np.cumsum(np.asarray(ref_shares, dtype=np.float64))))
    )


STATISTICS = {"psi": psi, "ks": ks_binned}


# Row-wise forms of the statistics for many windows at once (replays, calibration): counts (E, B) →
# (E,), the same formulas as `psi` / `ks_binned` (rows with no live values give NaN).
def psi_rows(ref_shares: np.ndarray | list[float], counts: np.ndarray) -> np.ndarray:
    """PSI of each row of `counts` (E, B) against the reference shares (B,)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.maximum(c / total, PSI_FLOOR)
    q = np.maximum(np.asarray(ref_shares, dtype=np.float64), PSI_FLOOR)
    out = np.sum((p - q) * np.log(p / q), axis=1)
    return np.where(total[:, 0] > 0, out, np.nan)


def ks_rows(ref_shares: np.ndarray | list[float], counts: np.ndarray) -> np.ndarray:
    """Binned KS statistic of each row of `counts` (E, B) against the reference shares (B,)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.max(
            np.abs(np.cumsum(c / total, axis=1) - np.cumsum(np.asarray(ref_shares, np.float64))), axis=1
        )
    return np.where(total[:, 0] > 0, out, np.nan)


STATISTICS_ROWS = {"psi": psi_rows, "ks": ks_rows}
