"""The one metrics module: forecast metrics shared by walk-forward evaluation, promotion, tuning and
the A/B review (pure numpy/scipy).

Direction metrics ignore rows whose realised value is exactly 0 (no move: neither call is right) or
not finite (not realised yet); a prediction of exactly 0 counts as a miss (it called no direction).
The P&L of a sign strategy holds sign(prediction) for h candles, trades every h-th row (holding
periods never overlap) and pays `fee_bps` per unit of turnover, starting flat.
Tasks (`pipelines.tasks`) combine these into their reports; nothing here knows a task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from pipelines.contracts.errors import KairosError
from pipelines.contracts.schema import interval_delta

_YEAR = 365.25 * 24 * 3600.0  # seconds; periods per year = _YEAR / (h * interval seconds)


class MetricError(KairosError):
    """Predictions and realised returns do not line up (shape, NaN)."""


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n <= 0.

    `successes` may be fractional when `n` is an effective sample size (autocorrelated hits).
    """
    if n <= 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def direction_hits(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """float64 1/0 hits of sign(pred) on sign(actual), on the rows that have a direction.

    Rows are kept where both values are finite and actual != 0; the result has one entry per kept row.
    """
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    keep = np.isfinite(pred) & np.isfinite(actual) & (actual != 0.0)
    return (np.sign(pred[keep]) == np.sign(actual[keep])).astype(np.float64)


def direction_accuracy(pred: np.ndarray, actual: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Direction accuracy (`direction_hits`), its Wilson interval, n (rows judged) and n_flat (excluded)."""
    hits = direction_hits(pred, actual)
    n = int(hits.size)
    lo, hi = wilson_interval(float(hits.sum()), n, confidence)
    return {
        "accuracy": float(hits.mean()) if n else math.nan,
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "n": float(n),
        "n_flat": float(np.asarray(actual).size - n),
    }


def spearman_ic(pred: np.ndarray, actual: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant (no ranking to judge)."""
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    if pred.size < 2 or np.all(pred == pred[0]) or np.all(actual == actual[0]):
        return math.nan
    return float(stats.spearmanr(pred, actual).statistic)


def rmse(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(actual, float)) ** 2)))


def mincer_zarnowitz_r2(pred: np.ndarray, actual: np.ndarray) -> float:
    """R² of the Mincer–Zarnowitz regression actual = a + b·pred + e (NaN for a constant forecast)."""
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    if pred.size < 3 or np.all(pred == pred[0]) or np.all(actual == actual[0]):
        return math.nan
    r = float(np.corrcoef(pred, actual)[0, 1])
    return r * r


def trade_rows(n_rows: int, horizon: int, segments: Sequence[int] | None = None) -> np.ndarray:
    """Indices of the rows traded at `horizon`: every h-th row, restarting at each segment.

    `segments` are lengths of contiguous blocks (e.g. pooled fold test windows) summing to
    `n_rows`; holding periods never straddle two blocks' first rows.
    """
    lengths = [n_rows] if segments is None else list(segments)
    if sum(lengths) != n_rows:
        raise MetricError(f"segment lengths sum to {sum(lengths)} but there are {n_rows} rows")
    starts = np.cumsum([0] + lengths[:-1])
    rows = [s + np.arange(0, ln, horizon) for s, ln in zip(starts, lengths)]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)


def fee_aware_pnl(pred: np.ndarray, actual: np.ndarray, fee_bps: float) -> np.ndarray:
    """Net log P&L per traded row of holding sign(pred): position × actual − fee_bps/1e4 × |Δposition|.

    Starts flat (a flip long → short costs 2 × fee). Pass only the traded rows (`trade_rows`).
    """
    pos = np.sign(np.asarray(pred, float))
    turnover = np.abs(np.diff(pos, prepend=0.0))
    return pos * np.asarray(actual, float) - fee_bps * 1e-4 * turnover


def sign_pnl(
    pred: np.ndarray,
    actual: np.ndarray,
    horizon: int,
    *,
    fee_bps: float,
    periods_per_year: float,
    segments: Sequence[int] | None = None,
) -> dict[str, float]:
    """Summary of the sign strategy (`fee_aware_pnl` on `trade_rows`).

    Returns total return exp(Σ) − 1, Sharpe of the per-trade log P&L annualised by `periods_per_year`
    (h-candle periods), and the max drawdown of the equity curve exp(cumsum), starting at 1, as a
    positive fraction.
    """
    idx = trade_rows(np.asarray(pred).size, horizon, segments)
    pnl = fee_aware_pnl(np.asarray(pred, float)[idx], np.asarray(actual, float)[idx], fee_bps)
    sd = float(pnl.std(ddof=1)) if pnl.size > 1 else 0.0
    sharpe = float(pnl.mean()) / sd * math.sqrt(periods_per_year) if sd > 0 else math.nan
    equity = np.exp(np.concatenate([[0.0], np.cumsum(pnl)]))
    drawdown = 1.0 - equity / np.maximum.accumulate(equity)
    return {
        "pnl_total_return": float(np.expm1(pnl.sum())),
        "pnl_sharpe": sharpe,
        "pnl_max_drawdown": float(drawdown.max()),
    }


def periods_per_year(interval: str, horizon: int) -> float:
    """Number of h-candle holding periods in a year (365.25 days; crypto trades around the clock)."""
    return _YEAR / (interval_delta(interval).total_seconds() * horizon)


COVERAGES = (0.10, 0.25, 0.50)  # shares of the most confident rows a desk would trade


def top_rows(confidence: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the ceil(share * n) rows with the highest `confidence` (ties: earlier rows first);
    all False when the confidence is constant (a forecaster that ranks nothing has no top rows)."""
    c = np.asarray(confidence, float)
    mask = np.zeros(c.size, dtype=bool)
    if c.size == 0 or np.all(c == c[0]):
        return mask
    k = max(1, int(np.ceil(share * c.size)))
    mask[np.argsort(-c, kind="stable")[:k]] = True
    return mask


def coverage_metrics(
    pred: np.ndarray,
    actual: np.ndarray,
    confidence: np.ndarray,
    horizon: int,
    *,
    fee_bps: float,
    periods_per_year: float,
    segments: Sequence[int] | None = None,
) -> dict[str, float]:
    """Direction accuracy and fee-aware P&L when only the most confident rows are traded.

    For each share q in `COVERAGES`: `acc_top{q}` is the accuracy on the top q of rows by `confidence`,
    `pnl_top{q}` the total return of holding sign(pred) on those rows and staying flat elsewhere. The
    cut is a rank over the rows judged (a live desk would fix the threshold on its training window).
    """
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    out: dict[str, float] = {}
    for q in COVERAGES:
        mask = top_rows(confidence, q)
        tag = f"top{round(100 * q)}"
        if not mask.any():
            out[f"acc_{tag}"] = out[f"pnl_{tag}"] = math.nan
            continue
        out[f"acc_{tag}"] = direction_accuracy(pred[mask], actual[mask])["accuracy"]
        out[f"pnl_{tag}"] = sign_pnl(
            np.where(mask, pred, 0.0),
            actual,
            horizon,
            fee_bps=fee_bps,
            periods_per_year=periods_per_year,
            segments=segments,
        )["pnl_total_return"]
    return out


def reliability(prob: np.ndarray, outcome: np.ndarray, bins: int = 10) -> dict[str, np.ndarray | float]:
    """Calibration of probabilities `prob` of binary `outcome` (0/1): Brier score, expected calibration
    error over `bins` equal-width bins, and the per-bin mean predicted / observed frequency and count."""
    p, y = np.asarray(prob, float), np.asarray(outcome, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / count
        freq = np.bincount(idx, weights=y, minlength=bins) / count
    ok = count > 0
    n = max(p.size, 1)
    return {
        "brier": float(np.mean((p - y) ** 2)) if p.size else math.nan,
        "ece": float(np.sum(count[ok] / n * np.abs(mean_p[ok] - freq[ok]))) if p.size else math.nan,
        "mean_p": mean_p,
        "freq": freq,
        "count": count,
    }
