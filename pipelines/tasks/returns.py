"""The `returns` task: log return ln(close[t+h] / close[t]) at horizons 1..5 (the `002_*` seed).

Judged by direction accuracy (with Wilson CI), Spearman IC, RMSE and the fee-aware P&L of trading the
predicted sign, always beside three naive rules on the same rows. At minute horizons direction
accuracy alone misleads (bid-ask bounce hands the reversal rule 51-53 %), hence the baselines:

- `always_up`: always long; its value forecast is 0 (for RMSE) and it has no IC (constant);
- `persistence`: the last 1-candle log return as value, the sign of the last non-zero one as call
  (at 1m many candles close unchanged; flat candles carry the previous move);
- `reversal`: the negative of persistence.

The A/B review compares the direction loss (1 - hit) per request; promotion decides on accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipelines.tasks.base import Column, Task, TaskError
from pipelines.training import metrics as M


def make_labels(close: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """float64 (N, H): [t, j] = ln(close[t + h_j] / close[t]); NaN where t + h_j >= N.

    Raises:
        TaskError: close not 1-D, or a close <= 0 / non-finite (NaN labels mean "beyond the end").
    """
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise TaskError(f"close must be 1-D (N,), got shape {c.shape}")
    bad = ~np.isfinite(c) | (c <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise TaskError(f"close[{i}] = {c[i]}; labels need finite prices > 0 (validate the candles first)")
    n = c.size
    out = np.full((n, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        if h < n:
            # ln of the ratio (not a difference of logs): exact to ~1 ulp of the return itself
            out[: n - h, j] = np.log(c[h:] / c[: n - h])
    return out


def last_move_sign(last_return: np.ndarray) -> np.ndarray:
    """Sign of the most recent non-zero 1-candle return at each row (0 before any move)."""
    s = np.sign(last_return)
    last = np.maximum.accumulate(np.where(s != 0, np.arange(s.size), 0))  # index of the latest move
    return s[last]


def evaluate_forecast(
    pred: np.ndarray,
    actual: np.ndarray,
    horizon: int,
    *,
    interval: str,
    cfg: Any,
    segments: Sequence[int] | None = None,
    value_forecast: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one forecaster at one horizon.

    Args:
        pred: (n,) forecasts whose sign is traded and judged.
        actual: (n,) realised log returns.
        horizon: h in candles (trade spacing and Sharpe annualisation).
        interval: candle interval, e.g. "1m"; cfg: `EvaluationConfig` (fee, confidence).
        segments: contiguous block lengths (see `metrics.trade_rows`).
        value_forecast: (n,) forecast for RMSE/IC when it differs from `pred` (always_up: 0); its size
            is the confidence the coverage metrics rank rows by (`metrics.coverage_metrics`).
    """
    values = pred if value_forecast is None else value_forecast
    out = M.direction_accuracy(pred, actual, cfg.confidence)
    out["ic"] = M.spearman_ic(values, actual)
    out["rmse"] = M.rmse(values, actual)
    out.update(
        M.sign_pnl(
            pred,
            actual,
            horizon,
            fee_bps=cfg.fee_bps,
            periods_per_year=M.periods_per_year(interval, horizon),
            segments=segments,
        )
    )
    out.update(
        M.coverage_metrics(
            pred,
            actual,
            np.abs(values),
            horizon,
            fee_bps=cfg.fee_bps,
            periods_per_year=M.periods_per_year(interval, horizon),
            segments=segments,
        )
    )
    return out


@dataclass(frozen=True)
class ReturnsTask(Task):
    name: ClassVar[str] = "returns"
    output_meaning: ClassVar[str] = (
        "predicted log return ln(close[t+h]/close[t])"  # objective l2/huber/quantile
    )
    label_prefix: ClassVar[str] = "ret"
    baselines: ClassVar[tuple[str, ...]] = ("always_up", "persistence", "reversal")
    columns: ClassVar[tuple[Column, ...]] = (
        Column("rows", "n", "{:,.0f}"),
        Column("dir. accuracy [95% CI]", "accuracy", "{:.2%}", ci=("accuracy_lo", "accuracy_hi")),
        Column("IC", "ic", "{:+.4f}"),
        Column("RMSE", "rmse", "{:.2e}"),
        Column("P&L (fees)", "pnl_total_return", "{:+.2%}"),
        Column("Sharpe", "pnl_sharpe", "{:+.2f}"),
        Column("max DD", "pnl_max_drawdown", "{:.2%}"),
    )
    review_loss: ClassVar[str] = "direction"
    promotion_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    tuning_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "ic", "sharpe")
    directional: ClassVar[bool] = True

    def labels(self, close: np.ndarray) -> np.ndarray:
        return make_labels(close, self.horizons)

    @property
    def output_name(self) -> str:  # type: ignore[override]
        """ "returns" for the regression objectives; the direction classifier's log-odds are not returns."""
        return "direction_logit" if self.training_objective == "direction" else "returns"

    @property
    def meaning(self) -> str:
        """The output's meaning under this task's training objective (it goes into the manifest)."""
        if self.training_objective == "direction":
            return "log-odds that ln(close[t+h]/close[t]) > 0: the sign is the call, sigmoid(value) = P(up)"
        return self.output_meaning

    def baseline_inputs(self, close: np.ndarray) -> np.ndarray:
        """(N, 1): the last 1-candle log return ln(close[t]/close[t-1]) (NaN at row 0)."""
        c = np.asarray(close, dtype=np.float64)
        out = np.full((c.size, 1), np.nan)
        out[1:, 0] = np.log(c[1:] / c[:-1])
        return out

    def baseline_forecasts(self, state: Any, A: np.ndarray) -> dict[str, np.ndarray]:
        """`{who: (n, 2)}`: column 0 the sign called, column 1 the value forecast (same for every horizon)."""
        last = np.asarray(A, float)[:, 0]
        move = last_move_sign(last)
        return {
            "always_up": np.column_stack([np.ones_like(last), np.zeros_like(last)]),
            "persistence": np.column_stack([move, last]),
            "reversal": np.column_stack([-move, -last]),
        }

    def evaluate(self, pred, actual, baselines, *, interval, cfg, segments=None) -> dict[str, float]:
        pred, actual = self.check(pred, actual)
        out: dict[str, float] = {}
        for j, h in enumerate(self.horizons):
            out.update(
                {
                    f"model.h{h}.{k}": v
                    for k, v in evaluate_forecast(
                        pred[:, j], actual[:, j], h, interval=interval, cfg=cfg, segments=segments
                    ).items()
                }
            )
            if self.training_objective == "direction":  # the output is a log-odds: judge it as P(up)
                moved = actual[:, j] != 0
                cal = M.reliability(1.0 / (1.0 + np.exp(-pred[moved, j])), actual[moved, j] > 0)
                out[f"model.h{h}.brier"], out[f"model.h{h}.ece"] = cal["brier"], cal["ece"]
            for who in self.baselines:
                b = baselines[who]
                out.update(
                    {
                        f"{who}.h{h}.{k}": v
                        for k, v in evaluate_forecast(
                            b[:, 0],
                            actual[:, j],
                            h,
                            interval=interval,
                            cfg=cfg,
                            segments=segments,
                            value_forecast=b[:, 1],
                        ).items()
                    }
                )
        return out

    def score(self, pred, actual, metric, horizon, *, interval, cfg) -> float:
        pred, actual = np.asarray(pred, float).ravel(), np.asarray(actual, float).ravel()
        if metric == "n":  # rows the promotion metric judges (flat realised rows have no direction)
            return M.direction_accuracy(pred, actual)["n"]
        if metric == "accuracy":
            return M.direction_accuracy(pred, actual)["accuracy"]
        if metric == "ic":
            return M.spearman_ic(pred, actual)
        if metric == "sharpe":
            return M.sign_pnl(
                pred,
                actual,
                horizon,
                fee_bps=cfg.fee_bps,
                periods_per_year=M.periods_per_year(interval, horizon),
            )["pnl_sharpe"]
        raise TaskError(f"task returns has no metric {metric!r}; expected accuracy, ic or sharpe")

    def calibration(self, pred: np.ndarray, actual: np.ndarray, bins: int = 10) -> dict[str, Any]:
        """The direction objective's log-odds as P(up) against the observed frequency of up (flat rows out);
        the regression objectives: mean predicted against mean realised return per forecast decile."""
        if self.training_objective != "direction":
            return super().calibration(pred, actual, bins)
        moved = np.asarray(actual) != 0
        r = M.reliability(1.0 / (1.0 + np.exp(-np.asarray(pred)[moved])), np.asarray(actual)[moved] > 0, bins)
        ok = r["count"] > 0
        return {
            "x": r["mean_p"][ok],
            "y": r["freq"][ok],
            "count": r["count"][ok],
            "xlabel": "P(up) predicted",
            "ylabel": "share up",
            "brier": r["brier"],
            "ece": r["ece"],
        }

    def baseline_column(self, forecast: np.ndarray, j: int, metric: str) -> np.ndarray:
        """Column 0 is the sign called (accuracy, P&L), column 1 the value forecast (IC, RMSE)."""
        return np.asarray(forecast)[:, 1 if metric in ("ic", "rmse") else 0]

    def row_loss(self, pred: np.ndarray, realised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Direction loss 1 - hit; rows with a flat (0) realised return have no direction and are dropped."""
        realised = np.asarray(realised, float)
        return 1.0 - M.direction_hits(pred, realised), np.isfinite(realised) & (realised != 0)

    def realised(self, close: np.ndarray, base: np.ndarray, horizon: int) -> np.ndarray:
        c = np.asarray(close, float)
        base = np.asarray(base, np.int64)
        out = np.full(base.shape, np.nan)
        ok = (base >= 0) & (base + horizon < c.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[ok] = np.log(c[base[ok] + horizon] / c[base[ok]])
        return out


def best_baseline(flat: dict[str, float], horizon: int, metric: str = "accuracy") -> tuple[str, float]:
    """The naive baseline with the highest `metric` at `horizon`, and its value."""
    scores = {who: flat[f"{who}.h{horizon}.{metric}"] for who in ReturnsTask.baselines}
    who = max(scores, key=lambda w: -math.inf if math.isnan(scores[w]) else scores[w])
    return who, scores[who]


TASK = ReturnsTask
