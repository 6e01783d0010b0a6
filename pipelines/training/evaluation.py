"""Out-of-sample metrics for return forecasts, always beside naive baselines on the same rows.

Pure numpy/scipy. At minute horizons direction accuracy alone misleads (bid-ask bounce hands a
naive "reversal" rule 51-53 %), so every report shows the model next to:

- `always_up`: always long; its value forecast is 0 (for RMSE) and it has no IC (constant);
- `persistence`: the value of the last 1-candle log return ln(close[t]/close[t-1]) and the sign of
  the last non-zero one (flat candles carry the previous move);
- `reversal`: the negative of persistence;

plus a fee-aware P&L of trading the predicted sign, with Wilson confidence intervals on accuracy.

Flat keys are `{who}.h{h}.{metric}`; `nested_report` turns them into `{who: {"h1": {metric: v}}}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from pipelines.config import EvaluationConfig
from pipelines.contracts.errors import KairosError
from pipelines.contracts.schema import interval_delta

WHO = ("model", "always_up", "persistence", "reversal")
METRICS = (
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "n",
    "n_flat",
    "ic",
    "rmse",
    "pnl_total_return",
    "pnl_sharpe",
    "pnl_max_drawdown",
)
_YEAR = 365.25 * 24 * 3600.0  # seconds; periods per year = _YEAR / (h * interval seconds)


class EvaluationError(KairosError):
    """Predictions and realised returns do not line up (shape, NaN)."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def direction_accuracy(pred: np.ndarray, actual: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Share of rows whose predicted sign equals the realised sign, flat realised rows excluded.

    A zero prediction on a non-flat row counts as wrong (it called no direction).
    Returns accuracy, its Wilson interval (accuracy_lo/hi), n (rows judged) and n_flat (excluded).
    """
    moved = actual != 0.0
    n = int(moved.sum())
    hits = int((np.sign(pred[moved]) == np.sign(actual[moved])).sum())
    lo, hi = wilson_interval(hits, n, confidence)
    return {
        "accuracy": hits / n if n else math.nan,
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "n": float(n),
        "n_flat": float(actual.size - n),
    }


def spearman_ic(pred: np.ndarray, actual: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant (no ranking to judge)."""
    if pred.size < 2 or np.all(pred == pred[0]) or np.all(actual == actual[0]):
        return math.nan
    return float(stats.spearmanr(pred, actual).statistic)


def rmse(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - actual) ** 2)))


def trade_rows(n_rows: int, horizon: int, segments: Sequence[int] | None = None) -> np.ndarray:
    """Indices of the rows traded at `horizon`: every h-th row, restarting at each segment.

    `segments` are lengths of contiguous blocks (e.g. pooled fold test windows) summing to
    `n_rows`; holding periods never straddle two blocks' first rows.
    """
    lengths = [n_rows] if segments is None else list(segments)
    if sum(lengths) != n_rows:
        raise EvaluationError(f"segment lengths sum to {sum(lengths)} but there are {n_rows} rows")
    starts = np.cumsum([0] + lengths[:-1])
    return np.concatenate([s + np.arange(0, ln, horizon) for s, ln in zip(starts, lengths)]).astype(np.int64)


def sign_pnl(
    pred: np.ndarray, actual: np.ndarray, horizon: int, *, fee_bps: float, periods_per_year: float,
    segments: Sequence[int] | None = None,
) -> dict[str, float]:
    """P&L of holding sign(pred) for `horizon` candles, trading every h-th row (no overlap).

    Per trade: log P&L = position × realised log return − fee_bps/1e4 × |Δposition|, starting flat
    (a flip long→short costs 2 × fee). Returns total return exp(Σ) − 1, Sharpe of the per-trade log
    P&L annualised by `periods_per_year` (h-candle periods), and the max drawdown of the equity
    curve exp(cumsum), starting at 1, as a positive fraction.
    """
    idx = trade_rows(pred.size, horizon, segments)
    pos = np.sign(pred[idx])
    turnover = np.abs(np.diff(pos, prepend=0.0))
    pnl = pos * actual[idx] - fee_bps / 1e4 * turnover
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


def evaluate_forecast(
    pred: np.ndarray, actual: np.ndarray, horizon: int, *, interval: str, cfg: EvaluationConfig,
    segments: Sequence[int] | None = None, value_forecast: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one forecaster at one horizon.

    Args:
        pred: (n,) forecasts whose sign is traded and judged.
        actual: (n,) realised log returns ln(close[t+h]/close[t]).
        horizon: h in candles (trade spacing and Sharpe annualisation).
        interval: candle interval, e.g. "1m".
        cfg: fee and confidence level.
        segments: contiguous block lengths (see `trade_rows`).
        value_forecast: (n,) forecast used for RMSE/IC when it differs from `pred` (always_up: 0).
    """
    values = pred if value_forecast is None else value_forecast
    out = direction_accuracy(pred, actual, cfg.confidence)
    out["ic"] = spearman_ic(values, actual)
    out["rmse"] = rmse(values, actual)
    out.update(
        sign_pnl(pred, actual, horizon, fee_bps=cfg.fee_bps,
                 periods_per_year=periods_per_year(interval, horizon), segments=segments)
    )
    return out


def last_move_sign(last_return: np.ndarray) -> np.ndarray:
    """Sign of the most recent non-zero 1-candle return at each row (0 before any move).

    At 1m many candles close unchanged (a price tick is coarse); a rule that called no direction
    there would be scored wrong on those rows and look far weaker than the bid-ask-bounce effect
    it stands for, so the naive rules carry the last price move through flat candles.
    """
    s = np.sign(last_return)
    last = np.maximum.accumulate(np.where(s != 0, np.arange(s.size), 0))  # index of the latest move
    return s[last]


def baseline_forecasts(last_return: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Naive forecasters as `{who: (sign forecast, value forecast)}` from the last 1-candle return (n,).

    persistence: sign of the last price move (see `last_move_sign`), value = the last return;
    reversal: their negatives; always_up: +1, value 0.
    """
    move = last_move_sign(last_return)
    return {
        "always_up": (np.ones_like(last_return), np.zeros_like(last_return)),
        "persistence": (move, last_return),
        "reversal": (-move, -last_return),
    }


def evaluate_all(
    pred: np.ndarray, actual: np.ndarray, last_return: np.ndarray, horizons: Sequence[int], *,
    interval: str, cfg: EvaluationConfig, segments: Sequence[int] | None = None,
) -> dict[str, float]:
    """Model and the three baselines, per horizon, on exactly the same rows.

    Args:
        pred: (n, H) model forecasts of ln(close[t+h]/close[t]).
        actual: (n, H) realised log returns, finite.
        last_return: (n,) ln(close[t]/close[t-1]) at each row (the log_return_1m feature).
        horizons: the H horizons, in candles.
        interval: candle interval.
        cfg: evaluation config.
        segments: contiguous block lengths when rows are pooled from several test windows.

    Returns:
        Flat `{who}.h{h}.{metric}` floats.
    """
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    last_return = np.asarray(last_return, float).reshape(-1)
    n_h = len(horizons)
    if pred.ndim != 2 or pred.shape != actual.shape or pred.shape[1] != n_h or last_return.size != pred.shape[0]:
        raise EvaluationError(
            f"shapes disagree: pred {pred.shape}, actual {actual.shape}, last_return {last_return.shape}, "
            f"{n_h} horizons; expected (n, H), (n, H), (n,)"
        )
    for name, arr in (("pred", pred), ("actual", actual), ("last_return", last_return)):
        if not np.isfinite(arr).all():
            raise EvaluationError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite values; drop those rows first")
    out: dict[str, float] = {}
    forecasts = {"model": None, **baseline_forecasts(last_return)}
    for j, h in enumerate(horizons):
        for who, fc in forecasts.items():
            sign_fc, value_fc = (pred[:, j], None) if fc is None else fc
            metrics = evaluate_forecast(sign_fc, actual[:, j], h, interval=interval, cfg=cfg,
                                        segments=segments, value_forecast=value_fc)
            out.update({f"{who}.h{h}.{k}": v for k, v in metrics.items()})
    return out


def nested_report(flat: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """`{who}.h{h}.{metric}` → `{who: {"h{h}": {metric: value}}}` (for tables)."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in flat.items():
        who, h, metric = key.split(".", 2)
        report.setdefault(who, {}).setdefault(h, {})[metric] = value
    return report


def best_baseline_accuracy(flat: dict[str, float], horizon: int) -> tuple[str, float]:
    """The naive baseline with the highest direction accuracy at `horizon`, and that accuracy."""
    scores = {who: flat[f"{who}.h{horizon}.accuracy"] for who in WHO[1:]}
    who = max(scores, key=lambda w: -math.inf if math.isnan(scores[w]) else scores[w])
    return who, scores[who]
