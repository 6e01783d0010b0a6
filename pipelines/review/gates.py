"""The statistics behind the promotion gates: a paired one-sided test on the task's per-row loss, and the
naive baselines' losses on the rows an A/B review judged.

Gate (a) asks whether the challenger's loss is lower than the champion's on the same out-of-sample rows,
gate (b) whether it is lower than the best naive rule's. Per-minute losses are autocorrelated
(overlapping h-step labels, volatility clustering), so the test is Diebold-Mariano on the loss
differential d_t = loss_reference - loss_challenger with a Newey-West long-run variance
(`pipelines.review.fixed.diebold_mariano`: lag max(h - 1, floor(4 (n/100)^(2/9))), the
Harvey-Leybourne-Newbold small-sample factor, a t(n-1) reference), read one-sided: H0 E[d] <= 0.

For the returns task's direction loss (1 - hit) d_t is -1, 0 or +1: with lag 0 the statistic is
McNemar's (b - c) / sqrt(b + c) on the discordant rows (up to O(1/n) centring terms), so this is McNemar's
test with a HAC variance. Pure numpy/scipy/pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from pipelines.review.fixed import diebold_mariano, hln_factor
from pipelines.tasks import Task, TaskError

METHOD = "one-sided Diebold-Mariano, Newey-West HAC variance, HLN correction"


@dataclass(frozen=True)
class PairedTest:
    """One-sided paired test that the challenger's mean loss is below a reference's on the same rows."""

    loss: str  # the task's per-row loss (`Task.review_loss`), lower is better
    n: int  # rows where both losses are defined
    diff: float  # mean(loss_reference - loss_challenger): > 0 favours the challenger
    ci_low: float  # two-sided interval of `diff` at `confidence` = 1 - 2 alpha: its lower end is > 0
    ci_high: float  # exactly when p_value < alpha (the one-sided test at alpha)
    confidence: float
    statistic: float  # HLN-corrected DM statistic, ~ t(n - 1) under E[d] = 0
    p_value: float  # one-sided, P(T >= statistic); 1.0 when the losses never differ
    lag: int  # Newey-West truncation lag
    discordant: int  # rows whose losses differ (direction loss: McNemar's b + c)

    @property
    def in_pp(self) -> bool:
        """The direction loss difference is an accuracy difference: shown in percentage points."""
        return self.loss == "direction"

    def fmt(self, x: float) -> str:
        return f"{100 * x:+.2f} pp" if self.in_pp else f"{x:+.4g}"

    def describe(self) -> str:
        """'+4.52 pp [90% CI +3.01, +6.03], one-sided DM p=1.2e-08 (n=2,880, HAC lag 7)'."""
        lo, hi = (f"{100 * v:+.2f}" if self.in_pp else f"{v:+.4g}" for v in (self.ci_low, self.ci_high))
        what = "" if self.in_pp else f"{self.loss} loss difference "
        return (
            f"{what}{self.fmt(self.diff)} [{100 * self.confidence:.0f}% CI {lo}, {hi}], one-sided DM "
            f"p={self.p_value:.2g} (n={self.n:,}, HAC lag {self.lag})"
        )

    def as_dict(self, prefix: str) -> dict[str, float]:
        """Flat floats for MLflow metrics, keys `{prefix}.{field}`."""
        keys = ("n", "diff", "ci_low", "ci_high", "statistic", "p_value", "lag", "discordant")
        return {f"{prefix}.{k}": float(getattr(self, k)) for k in keys}


def paired_test(
    reference_loss: np.ndarray,
    challenger_loss: np.ndarray,
    *,
    horizon: int,
    alpha: float,
    loss: str = "loss",
    lag: int | None = None,
) -> PairedTest:
    """One-sided Diebold-Mariano test of E[reference_loss - challenger_loss] > 0 on paired rows.

    Args:
        reference_loss, challenger_loss: per-row losses on the same rows, (n,); rows where either is NaN
            are dropped (a loss undefined on a row, e.g. a flat realised return for the direction loss).
        horizon: forecast horizon h in candles: h-step labels overlap, so the HAC lag is at least h - 1.
        alpha: the test's level; the reported interval is two-sided at 1 - 2 alpha, so its lower end is
            above 0 exactly when the one-sided p-value is below alpha.
        loss: the loss's name, for the report.
        lag: HAC truncation lag; None = the Newey-West rule (at least h - 1).

    Returns:
        PairedTest. With fewer than 2 rows every figure is NaN (and p_value NaN: nothing to test).
    """
    a = np.asarray(reference_loss, dtype=np.float64)
    b = np.asarray(challenger_loss, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired losses must be 1-D arrays of equal length, got {a.shape} and {b.shape}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n, conf = int(a.size), 1.0 - 2.0 * alpha
    if n < 2:
        nan = math.nan
        return PairedTest(loss, n, nan, nan, nan, conf, nan, nan, 0, int(np.sum(a != b)))
    dm = diebold_mariano(a, b, horizon=horizon, lag=lag)
    discordant = int(np.sum(a != b))
    if dm.se == 0.0:  # the difference is the same on every row (often: identical forecasts)
        p = 1.0 if dm.mean_diff <= 0 else 0.0
        return PairedTest(
            loss, n, dm.mean_diff, dm.mean_diff, dm.mean_diff, conf, dm.dm_hln, p, dm.lag, discordant
        )
    se = dm.se / hln_factor(n, horizon)  # the HLN factor rescales the statistic: mean / se == dm_hln
    q = float(stats.t.ppf(1.0 - alpha, n - 1))
    p = float(stats.t.sf(dm.dm_hln, n - 1))
    return PairedTest(
        loss,
        n,
        dm.mean_diff,
        dm.mean_diff - q * se,
        dm.mean_diff + q * se,
        conf,
        dm.dm_hln,
        p,
        dm.lag,
        discordant,
    )


def row_losses(task: Task, pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """The task's per-row loss of (n,) forecasts against (n,) outcomes, NaN where it is undefined (a flat
    realised return for the direction loss, a non-finite forecast or outcome)."""
    pred, actual = np.asarray(pred, np.float64), np.asarray(actual, np.float64)
    out = np.full(pred.shape, np.nan)
    rows = np.flatnonzero(np.isfinite(pred) & np.isfinite(actual))
    values, keep = task.row_loss(pred[rows], actual[rows])
    out[rows[np.asarray(keep, bool)]] = np.asarray(values, np.float64)
    return out


def best_baseline_test(
    task: Task,
    challenger_loss: np.ndarray,
    baseline_losses: dict[str, np.ndarray],
    *,
    horizon: int,
    alpha: float,
    best: str | None = None,
) -> tuple[str, PairedTest] | None:
    """The challenger against the best naive baseline on the same rows: (its name, the paired test).

    Args:
        challenger_loss: per-row loss of the challenger, (n,), NaN where undefined.
        baseline_losses: `{who: (n,) per-row loss}` on the same rows.
        best: the baseline to test against (e.g. the best by the promotion metric); None = the one with the
            lowest mean loss on the rows where all are defined.

    Returns:
        None when there is no baseline with a defined loss.
    """
    c = np.asarray(challenger_loss, np.float64)
    usable = {w: np.asarray(v, np.float64) for w, v in baseline_losses.items() if np.isfinite(v).any()}
    if not usable:
        return None
    if best is None:
        both = np.isfinite(c) & np.all([np.isfinite(v) for v in usable.values()], axis=0)
        best = min(usable, key=lambda w: float(np.mean(usable[w][both])) if both.any() else math.inf)
    elif best not in usable:
        return None
    return best, paired_test(usable[best], c, horizon=horizon, alpha=alpha, loss=task.review_loss)


def review_baseline_losses(
    resolved: pd.DataFrame,
    log: pd.DataFrame,
    candles: pd.DataFrame,
    *,
    task: Task,
    challenger_version: str,
    horizon: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The challenger's and the naive baselines' per-row losses on the rows the A/B review resolved for the
    challenger at `horizon` (one row per request, in request-time order).

    Each baseline's forecast for a request at candle t comes from the candles <= t (the task's
    `frame_baseline_inputs` over the symbol's consecutive stored candles, so rules that carry state, such as
    the last non-zero move, see the candle sequence and not the request sequence). Rules that learn
    something (HAR-RV coefficients, spike thresholds, a base rate) are fitted on the candles of the reviewed
    span with their realised labels: in-sample for the rule, so the gate is if anything stricter than with
    a rule fitted on the past. The outcomes are the review's own (`join_outcomes`), so every forecast is
    judged against the same realised values.

    Args:
        resolved: `Outcomes.resolved` of the review.
        log: the prediction log of the pair (its `request_id` and `symbol` map rows to series).
        candles: the stored candles of the log's symbols over the reviewed span, with the task's `warmup`
            before it and its outcome columns; a `symbol` column when several symbols.
        task: the model's task; `horizon` must be one of `task.horizons`.
        challenger_version: the challenger's registry version.
        horizon: the horizon reviewed.

    Returns:
        (challenger loss (n,), {who: baseline loss (n,)}), NaN where a loss is undefined (a flat outcome for
        the direction loss, a candle missing for a rule's inputs); empty when nothing is resolved.

    Raises:
        TaskError: the horizon is not the task's, or a rule cannot be fitted (too few candles).
    """
    if horizon not in task.horizons:
        raise TaskError(f"horizon {horizon} is not among task {task.name}'s horizons {list(task.horizons)}")
    j = task.horizons.index(horizon)
    rows = resolved[(resolved["horizon"] == horizon) & (resolved["arm"] == "challenger")]
    rows = rows[rows["version"].astype(str) == str(challenger_version)]
    rows = rows.sort_values(["time_ms", "request_id"], kind="mergesort").drop_duplicates("request_id")
    realised = rows["realised"].to_numpy(np.float64)
    challenger = row_losses(task, rows["prediction"].to_numpy(np.float64), realised)
    symbol_of = dict(zip(log["request_id"].astype(str), log["symbol"].astype(str), strict=False))
    sym = rows["request_id"].astype(str).map(symbol_of).fillna("").to_numpy(str)
    open_ms = rows["open_time"].to_numpy(np.int64)
    preds = {w: np.full(len(rows), np.nan) for w in task.baselines}
    for s in np.unique(sym):
        frame = candles[candles["symbol"].astype(str) == s] if "symbol" in candles else candles
        frame = frame.sort_values("open_time", kind="mergesort").drop_duplicates("open_time", keep="last")
        if frame.empty:
            continue
        frame = frame.reset_index(drop=True)
        A, Y = task.frame_baseline_inputs(frame), task.frame_labels(frame)
        fit = np.isfinite(A).all(axis=1) & np.isfinite(Y).all(axis=1)
        forecasts = task.baseline_forecasts(task.fit_baselines(A[fit], Y[fit]), A)
        times = pd.to_datetime(frame["open_time"], utc=True).astype("datetime64[ms, UTC]").astype("int64")
        mine = np.flatnonzero(sym == s)
        pos = pd.Index(times.to_numpy()).get_indexer(open_ms[mine])
        found = pos >= 0
        for who, fc in forecasts.items():
            col = np.asarray(task.baseline_column(np.asarray(fc), j, task.review_loss), np.float64)
            preds[who][mine[found]] = col[pos[found]]
    return challenger, {w: row_losses(task, p, realised) for w, p in preds.items()}
