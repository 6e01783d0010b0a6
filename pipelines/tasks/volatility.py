"""The `volatility` task: log realised variance over the next h candles (the `001_*` seed's risk side).

Label at candle t, horizon h (candles after t only):

    RV_h(t) = sum_{k=1..h} r_{t+k}^2,   r_k = ln(close[k] / close[k-1])
    label   = ln(RV_h(t) + h * floor)

`floor` (per candle, `options.floor_per_candle`, default 1e-10 = (0.1 bp)^2) keeps a run of flat candles
(RV = 0, common at 1m) finite; it sits far below any real minute's variance. Realised volatility is
sqrt(RV); the model predicts its log square.

Naive baselines, each a log-variance forecast from candles <= t:
- `persistence`: the last window's RV, ln(RV over candles t-h+1..t + floor);
- `ewma`: RiskMetrics (J.P. Morgan 1996): s2_t = lambda * s2_{t-1} + (1 - lambda) * r_t^2 on 1-candle
  returns, lambda = 0.94; forecast ln(h * s2_t + floor);
- `har_rv`: Corsi (2009) HAR-RV in logs: OLS of the label on ln of the past RV over 1, 5 and 22 windows
  of h candles (averaged per window), fitted on the training fold only.

Metrics (beside the baselines, same rows): QLIKE on the variance scale (Patton 2011: RV/v - ln(RV/v) - 1,
v = exp(forecast), 0 for a perfect forecast; robust to noise in RV as a volatility proxy), MSE on log
variance, and the Mincer-Zarnowitz R^2 of label on forecast. A log-regression's exp(forecast) is a
geometric-mean forecast, so QLIKE holds it (model, HAR-RV) slightly below EWMA/persistence, which forecast
the variance level; MSE and MZ R^2 on the log scale do not have that bias.
Promotion and the A/B review compare QLIKE (lower is better).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pipelines.tasks.base import Column, Task, TaskError
from pipelines.training import metrics as M


def qlike(log_forecast: np.ndarray, log_realised: np.ndarray) -> np.ndarray:
    """Per-row QLIKE loss RV/v - ln(RV/v) - 1 of log-variance forecasts against log realised variance."""
    d = np.asarray(log_realised, float) - np.asarray(log_forecast, float)  # ln(RV / v)
    return np.exp(d) - d - 1.0


def _squared_returns(close: np.ndarray) -> np.ndarray:
    """(N,) r_t^2 with r_t = ln(close[t]/close[t-1]); NaN at row 0 and next to a missing (NaN) close."""
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise TaskError(f"close must be 1-D (N,), got shape {c.shape}")
    r2 = np.full(c.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2[1:] = np.log(c[1:] / c[:-1]) ** 2
    return r2


def _window_sums(r2: np.ndarray, m: int) -> np.ndarray:
    """(N,) sum of r2 over rows t-m+1..t (NaN when any of them is NaN or t < m-1).

    Summed window by window (not as a difference of prefix sums), so a value depends on its own m rows
    only, bit for bit.
    """
    out = np.full(r2.shape, np.nan)
    if m <= r2.size:
        out[m - 1 :] = np.lib.stride_tricks.sliding_window_view(r2, m).sum(axis=1)
    return out


class VolatilityTask(Task):
    name: ClassVar[str] = "volatility"
    output_name: ClassVar[str] = "log_variance"
    output_meaning: ClassVar[str] = (
        "predicted log realised variance ln(sum_{k=1..h} r_{t+k}^2 + h*floor), r = 1-candle log return"
    )
    label_prefix: ClassVar[str] = "lrv"
    baselines: ClassVar[tuple[str, ...]] = ("persistence", "ewma", "har_rv")
    columns: ClassVar[tuple[Column, ...]] = (
        Column("rows", "n", "{:,.0f}"),
        Column("QLIKE", "qlike", "{:.4f}"),
        Column("MSE (log var)", "mse", "{:.4f}"),
        Column("MZ R²", "mz_r2", "{:.4f}"),
        Column("mean forecast", "mean_forecast", "{:+.3f}"),
    )
    review_loss: ClassVar[str] = "qlike"
    promotion_metric: ClassVar[str] = "qlike"
    higher_is_better: ClassVar[bool] = False
    tuning_metrics: ClassVar[tuple[str, ...]] = ("neg_qlike", "neg_mse", "mz_r2")

    @property
    def floor(self) -> float:
        return float(self.options.get("floor_per_candle", 1e-10))

    @property
    def ewma_lambda(self) -> float:
        lam = float(self.options.get("ewma_lambda", 0.94))
        if not 0 < lam < 1:
            raise TaskError(f"volatility: ewma_lambda must be in (0, 1), got {lam}")
        return lam

    @property
    def har_windows(self) -> tuple[int, ...]:
        ws = tuple(int(w) for w in self.options.get("har_windows", (1, 5, 22)))
        if not ws or any(w < 1 for w in ws):
            raise TaskError(f"volatility: har_windows must be positive window counts, got {ws}")
        return ws

    @property
    def warmup(self) -> int:
        # the longest HAR window, and EWMA's start-up (lambda^k < 1e-8 after k candles) forgotten
        burn = int(np.ceil(np.log(1e-8) / np.log(self.ewma_lambda)))
        return max(max(self.har_windows) * max(self.horizons), burn) + 1

    # ------------------------------------------------------------------ labels
    def labels(self, close: np.ndarray) -> np.ndarray:
        c = np.asarray(close, dtype=np.float64)
        bad = ~np.isfinite(c) | (c <= 0)
        if c.ndim == 1 and bad.any():
            i = int(np.argmax(bad))
            raise TaskError(
                f"close[{i}] = {c[i]}; labels need finite prices > 0 (validate the candles first)"
            )
        return self.realised(c, np.arange(c.size), None)

    def realised(self, close: np.ndarray, base: np.ndarray, horizon: int | None) -> np.ndarray:
        """ln(RV over candles base+1..base+h + h*floor); (n,) for one horizon, (n, H) when horizon is None."""
        r2 = _squared_returns(close)
        base = np.asarray(base, np.int64)
        hs = self.horizons if horizon is None else (int(horizon),)
        out = np.full((base.size, len(hs)), np.nan)
        for j, h in enumerate(hs):
            fwd = _window_sums(r2, h)  # fwd[t+h] = sum of r2 over t+1..t+h
            ok = (base >= 0) & (base + h < r2.size)
            out[ok, j] = np.log(fwd[base[ok] + h] + h * self.floor)
        return out if horizon is None else out[:, 0]

    def target(self, Y: np.ndarray) -> np.ndarray:
        return Y

    # ------------------------------------------------------------------ baselines
    def baseline_inputs(self, close: np.ndarray) -> np.ndarray:
        """(N, H * (len(har_windows) + 1)): per horizon, ln past RV averaged per h-window over each HAR
        window (the first, 1 window, is persistence), then the EWMA forecast ln(h * s2_t + h * floor)."""
        r2 = _squared_returns(close)
        cols = []
        s2 = self._ewma(r2)
        for h in self.horizons:
            for w in self.har_windows:
                cols.append(np.log(_window_sums(r2, w * h) / w + h * self.floor))
            cols.append(np.log(h * s2 + h * self.floor))
        return np.column_stack(cols)

    def _ewma(self, r2: np.ndarray) -> np.ndarray:
        """RiskMetrics variance s2_t after seeing r_t (started at the first squared return)."""
        lam = self.ewma_lambda
        out = np.full(r2.shape, np.nan)
        if r2.size < 2:
            return out
        from scipy.signal import lfilter

        x = np.where(np.isfinite(r2), r2, 0.0)[1:]
        # s2_t = lam * s2_{t-1} + (1 - lam) * x_t, with s2 before the first return = x_1
        y, _ = lfilter([1 - lam], [1, -lam], x, zi=[lam * x[0]])
        out[1:] = y
        return out

    def _split(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A → (HAR inputs (n, H, W), EWMA (n, H))."""
        k = len(self.har_windows) + 1
        A = np.asarray(A, float).reshape(len(A), len(self.horizons), k)
        return A[:, :, :-1], A[:, :, -1]

    def fit_baselines(self, A: np.ndarray, Y: np.ndarray) -> Any:
        """HAR-RV coefficients per horizon, (H, 1 + W), by OLS on the training fold's finite rows."""
        har, _ = self._split(A)
        Y = np.asarray(Y, float)
        coefs = []
        for j in range(len(self.horizons)):
            X = np.column_stack([np.ones(len(har)), har[:, j, :]])
            ok = np.isfinite(X).all(axis=1) & np.isfinite(Y[:, j])
            if ok.sum() <= X.shape[1]:
                raise TaskError(f"volatility: {int(ok.sum())} training rows are too few to fit HAR-RV")
            coefs.append(np.linalg.lstsq(X[ok], Y[ok, j], rcond=None)[0])
        return np.asarray(coefs)

    def baseline_forecasts(self, state: Any, A: np.ndarray) -> dict[str, np.ndarray]:
        har, ewma = self._split(A)
        coefs = np.asarray(state)  # (H, 1 + W)
        fitted = coefs[None, :, 0] + np.einsum("nhw,hw->nh", har, coefs[:, 1:])
        return {"persistence": har[:, :, 0].copy(), "ewma": ewma.copy(), "har_rv": fitted}

    # ------------------------------------------------------------------ judging
    def _metrics(self, pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
        return {
            "n": float(actual.size),
            "qlike": float(np.mean(qlike(pred, actual))) if actual.size else float("nan"),
            "mse": float(np.mean((pred - actual) ** 2)) if actual.size else float("nan"),
            "mz_r2": M.mincer_zarnowitz_r2(pred, actual),
            "mean_forecast": float(np.mean(pred)) if actual.size else float("nan"),
        }

    def evaluate(self, pred, actual, baselines, *, interval, cfg, segments=None) -> dict[str, float]:
        pred, actual = self.check(pred, actual)
        out: dict[str, float] = {}
        for j, h in enumerate(self.horizons):
            for who, fc in (("model", pred), *((w, baselines[w]) for w in self.baselines)):
                out.update({f"{who}.h{h}.{k}": v for k, v in self._metrics(fc[:, j], actual[:, j]).items()})
        return out

    def score(self, pred, actual, metric, horizon, *, interval, cfg) -> float:
        pred, actual = np.asarray(pred, float).ravel(), np.asarray(actual, float).ravel()
        ok = np.isfinite(pred) & np.isfinite(actual)
        m = self._metrics(pred[ok], actual[ok])
        if metric in m:
            return m[metric]
        if metric in ("neg_qlike", "neg_mse"):
            return -m[metric.removeprefix("neg_")]
        raise TaskError(
            f"task volatility has no metric {metric!r}; expected one of {sorted(m)} or neg_qlike/neg_mse"
        )

    def row_loss(self, pred: np.ndarray, realised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, realised = np.asarray(pred, float), np.asarray(realised, float)
        keep = np.isfinite(pred) & np.isfinite(realised)
        return qlike(pred[keep], realised[keep]), keep


TASK = VolatilityTask
