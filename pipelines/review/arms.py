"""One arm of an A/B experiment: its outcome-joined predictions and its per-arm metrics.

An arm is one model version serving one horizon: arrays of (prediction, realised return, time) for
the requests whose outcome is already known. Everything here is pure numpy/scipy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.contracts.errors import KairosError
from pipelines.review.hac import effective_sample_size
from pipelines.training.metrics import direction_hits, fee_aware_pnl, spearman_ic, trade_rows, wilson_interval


class ABDataError(KairosError):
    """Arm data given to the A/B statistics is malformed (shapes, NaNs, order, pairing)."""


@dataclass(frozen=True)
class ArmData:
    """Outcome-joined predictions of one arm at one horizon, in serving order.

    Attributes:
        name: label for reports, e.g. "champion v3".
        prediction: predicted log return, float (n,).
        realised: realised log return over the same horizon, float (n,).
        time: request time, int64 epoch ms (n,), non-decreasing.
        horizon: candles ahead the prediction is for (>= 1); sets the minimum HAC lag (h - 1).
    """

    name: str
    prediction: np.ndarray
    realised: np.ndarray
    time: np.ndarray
    horizon: int = 1

    def __post_init__(self) -> None:
        pred = np.asarray(self.prediction, dtype=np.float64)
        real = np.asarray(self.realised, dtype=np.float64)
        time = np.asarray(self.time, dtype=np.int64)
        if pred.ndim != 1 or pred.shape != real.shape or pred.shape != time.shape:
            raise ABDataError(
                f"arm {self.name!r}: prediction, realised and time must be 1-D of equal length, got "
                f"{pred.shape}, {real.shape}, {time.shape}; pass one horizon's column per arm"
            )
        if not (np.isfinite(pred).all() and np.isfinite(real).all()):
            raise ABDataError(
                f"arm {self.name!r}: prediction/realised contain NaN or inf; drop rows whose outcome "
                "is not known yet before calling the statistics"
            )
        if time.size and np.any(np.diff(time) < 0):
            raise ABDataError(f"arm {self.name!r}: time is not sorted; sort the rows by request time")
        if self.horizon < 1:
            raise ABDataError(f"arm {self.name!r}: horizon must be >= 1 candle, got {self.horizon}")
        # frozen dataclass: normalise the arrays once so every consumer sees float64/int64
        object.__setattr__(self, "prediction", pred)
        object.__setattr__(self, "realised", real)
        object.__setattr__(self, "time", time)

    def __len__(self) -> int:
        return int(self.prediction.size)

    def upto(self, cutoff_ms: int) -> ArmData:
        """The rows with time <= cutoff_ms (what a review at that time could see)."""
        k = int(np.searchsorted(self.time, cutoff_ms, side="right"))
        return ArmData(self.name, self.prediction[:k], self.realised[:k], self.time[:k], self.horizon)


@dataclass(frozen=True)
class ArmMetrics:
    """Per-arm, per-horizon figures. Accuracy excludes rows whose realised return is exactly 0."""

    n: int  # rows with known outcome
    n_direction: int  # rows with realised != 0 (the accuracy denominator)
    accuracy: float  # share of correct signs, in [0, 1]
    accuracy_ci: tuple[float, float]  # Wilson interval on the autocorrelation-adjusted sample size
    accuracy_n_eff: float  # effective sample size used for that interval (HAC)
    ic: float  # Spearman rank correlation of prediction vs realised
    mse: float  # mean squared error, (log return)^2
    pnl_total: float  # sum of net per-trade log P&L (every h-th request is a trade)
    pnl_total_return: float  # exp(pnl_total) - 1, as `pipelines.training.metrics.sign_pnl` reports it
    pnl_mean_bps: float  # mean net P&L per trade, basis points
    turnover: float  # sum of |position change| over trades, positions in {-1, 0, 1}

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat floats for MLflow `log_metrics` (keys like f"{prefix}accuracy")."""
        return {
            f"{prefix}n": float(self.n),
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}accuracy_ci_low": self.accuracy_ci[0],
            f"{prefix}accuracy_ci_high": self.accuracy_ci[1],
            f"{prefix}accuracy_n_eff": self.accuracy_n_eff,
            f"{prefix}ic": self.ic,
            f"{prefix}mse": self.mse,
            f"{prefix}pnl_total": self.pnl_total,
            f"{prefix}pnl_total_return": self.pnl_total_return,
            f"{prefix}pnl_mean_bps": self.pnl_mean_bps,
            f"{prefix}turnover": self.turnover,
        }


def sign_positions(prediction: np.ndarray) -> np.ndarray:
    """The traded position per request: sign of the prediction, in {-1, 0, +1}, float (n,)."""
    return np.sign(prediction).astype(np.float64)


def arm_metrics(arm: ArmData, *, fee_bps: float, confidence: float = 0.95) -> ArmMetrics:
    """Direction accuracy (with an autocorrelation-aware Wilson CI), IC, MSE and fee-aware P&L.

    The Wilson interval uses the effective sample size n_eff = n * var / long-run var of the hit
    series (Newey-West), because per-minute hits are autocorrelated and the iid interval is
    too narrow then. n_eff is capped at n (negative autocorrelation does not narrow it).
    """
    n = len(arm)
    hits = direction_hits(arm.prediction, arm.realised)
    m = hits.size
    acc = float(hits.mean()) if m else float("nan")
    n_eff = effective_sample_size(hits, min_lag=arm.horizon - 1) if m > 1 else float(m)
    ci = wilson_interval(acc * n_eff, n_eff, confidence) if m else (float("nan"), float("nan"))
    ic = spearman_ic(arm.prediction, arm.realised) if n > 2 else float("nan")  # NaN for a constant column
    rows = trade_rows(n, arm.horizon)
    pnl = fee_aware_pnl(arm.prediction[rows], arm.realised[rows], fee_bps)
    pos = sign_positions(arm.prediction[rows])
    return ArmMetrics(
        n=n,
        n_direction=m,
        accuracy=acc,
        accuracy_ci=ci,
        accuracy_n_eff=float(n_eff),
        ic=ic,
        mse=float(np.mean((arm.prediction - arm.realised) ** 2)) if n else float("nan"),
        pnl_total=float(pnl.sum()),
        pnl_total_return=float(np.expm1(pnl.sum())),
        pnl_mean_bps=float(pnl.mean() * 1e4) if n else float("nan"),
        turnover=float(np.abs(np.diff(pos, prepend=0.0)).sum()),
    )


def per_request_loss(arm: ArmData, loss: str | Callable, fee_bps: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-request loss the tests compare, and the row mask it was computed on.

    Args:
        arm: the arm.
        loss: "direction" (1 - hit; rows with realised == 0 dropped), "squared" (squared error),
            "pnl" (minus the net fee-aware P&L per trade, in basis points; every h-th row), or a task's
            `row_loss(prediction, realised) -> (loss, keep)`.
        fee_bps: fee per unit turnover, for "pnl".

    Returns:
        (loss (m,), keep mask (n,)): lower loss is better.
    """
    if callable(loss):
        values, keep = loss(arm.prediction, arm.realised)
        return np.asarray(values, np.float64), np.asarray(keep, bool)
    if loss == "direction":
        keep = arm.realised != 0
        return 1.0 - direction_hits(arm.prediction, arm.realised), keep
    keep = np.ones(len(arm), dtype=bool)
    if loss == "squared":
        return (arm.prediction - arm.realised) ** 2, keep
    if loss == "pnl":  # one loss per trade: every h-th request, so holding periods do not overlap
        keep = np.zeros(len(arm), dtype=bool)
        keep[trade_rows(len(arm), arm.horizon)] = True
        return -fee_aware_pnl(arm.prediction[keep], arm.realised[keep], fee_bps) * 1e4, keep
    raise ABDataError(f"unknown loss {loss!r}; use one of 'direction', 'squared', 'pnl'")
