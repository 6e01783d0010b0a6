"""The `whale` task (the `000_*` seed): the probability of a whale event in the next 15 candles.

An **event minute** m is defined by the task config (`options.label`):
- `trade_size` (needs trades: the trade-minute columns of `pipelines.sources.trades`): the minute's
  largest taker order (trades with one timestamp and side summed, in quote units) exceeds
  `trade_multiple` x the 99.9th percentile of order sizes over the trailing 24 h before the minute
  (`max_order_quote > trade_multiple * order_p999_24h`). Candle features never see order sizes, so the
  label is not a function of the model's own inputs. Undefined (NaN) until 24 h of trades precede it.
- `volume_spike` (kline-only symbols): volume[m] > `volume_multiple` x the mean volume of the
  `volume_window` candles before m. Plainly: this label IS a function of candle volumes, the same
  inputs whale19 and the volume-spike rule read, so detecting an event at its own minute is trivial;
  only the *next-15-minute* forecast is a real question, and a high score mostly says "a spike just
  happened, more may follow".

Label at candle t, horizon h: 1 when some event minute lies in (t, t+h], else 0; NaN when any minute of
that range is undefined or past the end. Only h = 15 is the seed's; other horizons work the same way.

Naive baselines (candles <= t only; thresholds fitted on the training rows, by F1):
- `volume_spike`: volume / SMA20(volume) (the current candle included) above k;
- `return_spike`: |ln(close[t]/close[t-1])| above k;
- `base_rate`: the training rows' positive rate for every row (the climatology; PR-AUC = base rate).
A rule's probability (for Brier and log loss) is the training hit rate of its call (above / below k).

Metrics: precision, recall, F1 (the model's alarm threshold `options.model_threshold`, set by the trainer
from training rows, by F1), ROC-AUC, PR-AUC (average precision: the honest one at a low base rate),
Brier score, log loss, base rate. Promotion and tuning use PR-AUC; the A/B review compares Brier.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from pipelines.tasks.base import Column, Task, TaskError

EPS = 1e-6  # probabilities are clipped to [EPS, 1-EPS] for the log loss


def _as_frame_column(frame: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(frame[name], dtype=np.float64)
    except KeyError:
        raise TaskError(
            f"task whale needs the column {name!r}; "
            + (
                "the trade_size label reads trade minutes: ingest trades (kairos ingest trades ...) "
                "or set options.label: volume_spike in configs/tasks/whale.yaml"
                if name in ("max_order_quote", "order_p999_24h")
                else "pass a candle frame"
            )
        ) from None


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class only."""
    s, y = np.asarray(score, float), np.asarray(y, float) > 0.5
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    from scipy.stats import rankdata

    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(score: np.ndarray, y: np.ndarray) -> float:
    """PR-AUC as average precision (sklearn's definition; tied scores form one step); NaN without positives."""
    s, y = np.asarray(score, float), np.asarray(y, float) > 0.5
    if not y.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # the end of each run of tied scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(call: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of boolean calls against 0/1 outcomes (NaN where undefined)."""
    c, y = np.asarray(call, bool), np.asarray(y, float) > 0.5
    tp = float((c & y).sum())
    prec = tp / c.sum() if c.any() else math.nan
    rec = tp / y.sum() if y.any() else math.nan
    f1 = 2 * tp / (c.sum() + y.sum()) if (c.sum() + y.sum()) else math.nan
    return {"precision": prec, "recall": rec, "f1": f1, "alarm_rate": float(c.mean()) if c.size else math.nan}


def best_f1_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """The score threshold k (call = score > k) with the highest F1 on these rows (training rows only)."""
    s, y = np.asarray(score, float), np.asarray(y, float) > 0.5
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    if not y.any() or s.size == 0:
        return math.inf
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last]
    f1 = 2 * tp / ((last + 1) + y.sum())
    i = int(np.argmax(f1))
    # call = score > k: k halfway to the next lower distinct score keeps row last[i] called
    nxt = s[last[i] + 1] if last[i] + 1 < s.size else s[last[i]] - 1.0
    return float((s[last[i]] + nxt) / 2)


def prob_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p, y = np.asarray(p, float), np.asarray(y, float)
    if not p.size:
        return {"brier": math.nan, "log_loss": math.nan}
    q = np.clip(p, EPS, 1 - EPS)
    return {
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))),
    }


class WhaleTask(Task):
    name: ClassVar[str] = "whale"
    output_name: ClassVar[str] = "whale_probability"
    output_meaning: ClassVar[str] = (
        "probability that a whale event minute (options.label) falls in the next h candles (t, t+h]"
    )
    label_prefix: ClassVar[str] = "whale"
    baselines: ClassVar[tuple[str, ...]] = ("volume_spike", "return_spike", "base_rate")
    columns: ClassVar[tuple[Column, ...]] = (
        Column("rows", "n", "{:,.0f}"),
        Column("base rate", "base_rate", "{:.3%}"),
        Column("precision", "precision", "{:.3f}"),
        Column("recall", "recall", "{:.3f}"),
        Column("F1", "f1", "{:.3f}"),
        Column("ROC-AUC", "roc_auc", "{:.3f}"),
        Column("PR-AUC", "pr_auc", "{:.3f}"),
        Column("Brier", "brier", "{:.4f}"),
    )
    review_loss: ClassVar[str] = "brier"
    promotion_metric: ClassVar[str] = "pr_auc"
    higher_is_better: ClassVar[bool] = True
    tuning_metrics: ClassVar[tuple[str, ...]] = ("pr_auc", "roc_auc", "neg_brier")
    objective: ClassVar[str] = "binary"
    directional: ClassVar[bool] = False
    pooled: ClassVar[bool] = True

    # ------------------------------------------------------------------ options
    @property
    def label_kind(self) -> str:
        kind = str(self.options.get("label", "trade_size"))
        if kind not in ("trade_size", "volume_spike"):
            raise TaskError(f"whale: options.label must be trade_size or volume_spike, got {kind!r}")
        return kind

    def _positive(self, key: str, default: float) -> float:
        v = float(self.options.get(key, default))
        if not v > 0:
            raise TaskError(f"whale: options.{key} must be > 0, got {v}")
        return v

    @property
    def model_threshold(self) -> float:
        """The model's alarm threshold on its probability (call = p > threshold), set from training rows."""
        return float(self.options.get("model_threshold", 0.5))

    @property
    def warmup(self) -> int:
        return 21  # SMA20 of volume over the candles <= t, and one return

    # ------------------------------------------------------------------ labels
    def event_minutes(self, frame: Any) -> np.ndarray:
        """(N,) float: 1 for an event minute, 0 for none, NaN where the definition is undefined."""
        if self.label_kind == "trade_size":
            big = _as_frame_column(frame, "max_order_quote")
            thr = _as_frame_column(frame, "order_p999_24h")
            k = self._positive("trade_multiple", 2.0)
            ev = np.where(np.isfinite(thr) & np.isfinite(big), (big > k * thr).astype(float), np.nan)
            return ev
        v = _as_frame_column(frame, "volume")
        w = int(self._positive("volume_window", 60))
        k = self._positive("volume_multiple", 10.0)
        ev = np.full(v.shape, np.nan)
        if v.size > w:
            past = np.lib.stride_tricks.sliding_window_view(v[:-1], w).mean(axis=1)  # candles m-w..m-1
            ev[w:] = np.where(past > 0, v[w:] > k * past, v[w:] > 0).astype(float)
        return ev

    def frame_labels(self, frame: Any) -> np.ndarray:
        ev = self.event_minutes(frame)
        n = ev.size
        out = np.full((n, len(self.horizons)), np.nan)
        for j, h in enumerate(self.horizons):
            if h < n:
                win = np.lib.stride_tricks.sliding_window_view(ev[1:], h)  # row t: minutes t+1..t+h
                out[: n - h, j] = np.where(np.isnan(win).any(axis=1), np.nan, win.max(axis=1))
        return out

    def labels(self, close: np.ndarray) -> np.ndarray:
        raise TaskError(
            "task whale labels need volumes or trade minutes, not closes alone; call frame_labels(candles)"
        )

    # ------------------------------------------------------------------ baselines
    def frame_baseline_inputs(self, frame: Any) -> np.ndarray:
        """(N, 2): volume / SMA20(volume) (1 when the SMA is 0), |1-candle log return|."""
        v = _as_frame_column(frame, "volume")
        c = _as_frame_column(frame, "close")
        out = np.full((v.size, 2), np.nan)
        if v.size >= 20:
            sma = np.lib.stride_tricks.sliding_window_view(v, 20).mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[19:, 0] = np.where(sma > 0, v[19:] / sma, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[1:, 1] = np.abs(np.log(c[1:] / c[:-1]))
        return out

    def baseline_inputs(self, close: np.ndarray) -> np.ndarray:
        raise TaskError("task whale baselines read volumes; call frame_baseline_inputs(candles)")

    def fit_baselines(self, A: np.ndarray, Y: np.ndarray) -> Any:
        """Per horizon: each rule's F1-best threshold and its hit rates above/below it; the base rate."""
        A, Y = np.asarray(A, float), np.asarray(Y, float)
        state = []
        for j in range(len(self.horizons)):
            y = Y[:, j]
            ok = np.isfinite(y)
            rules = {}
            for i, who in enumerate(("volume_spike", "return_spike")):
                s = A[ok, i]
                k = best_f1_threshold(s, y[ok])
                call = s > k
                rules[who] = (
                    k,
                    float(y[ok][call].mean()) if call.any() else 0.0,
                    float(y[ok][~call].mean()) if (~call).any() else 0.0,
                )
            state.append({"rules": rules, "base_rate": float(y[ok].mean()) if ok.any() else 0.0})
        return state

    def baseline_forecasts(self, state: Any, A: np.ndarray) -> dict[str, np.ndarray]:
        """Each rule's forecast is (n, H, 3): [..., 0] its score, [..., 1] its probability (the training hit
        rate of its call), [..., 2] its call (1 above its threshold); base_rate: the constant, never calls."""
        A = np.asarray(A, float)
        n, H = len(A), len(self.horizons)
        out = {w: np.zeros((n, H, 3)) for w in self.baselines}
        for j, st in enumerate(state):
            for i, who in enumerate(("volume_spike", "return_spike")):
                k, p_hi, p_lo = st["rules"][who]
                call = A[:, i] > k
                out[who][:, j, 0] = A[:, i]
                out[who][:, j, 1] = np.where(call, p_hi, p_lo)
                out[who][:, j, 2] = call
            out["base_rate"][:, j, :2] = st["base_rate"]
        return out

    def baseline_column(self, forecast: np.ndarray, j: int, metric: str) -> np.ndarray:
        f = np.asarray(forecast)
        return f[:, j, 1] if metric in ("brier", "log_loss", "neg_brier") else f[:, j, 0]

    # ------------------------------------------------------------------ judging
    def metrics(
        self, score: np.ndarray, prob: np.ndarray, call: np.ndarray, y: np.ndarray
    ) -> dict[str, float]:
        y = np.asarray(y, float)
        return {
            "n": float(y.size),
            "base_rate": float(y.mean()) if y.size else math.nan,
            **binary_metrics(call, y),
            "roc_auc": roc_auc(score, y),
            "pr_auc": average_precision(score, y),
            **prob_metrics(prob, y),
        }

    def evaluate(self, pred, actual, baselines, *, interval, cfg, segments=None) -> dict[str, float]:
        pred, actual = self.check(pred, actual)
        out: dict[str, float] = {}
        for j, h in enumerate(self.horizons):
            y = actual[:, j]
            m = self.metrics(pred[:, j], pred[:, j], pred[:, j] > self.model_threshold, y)
            out.update({f"model.h{h}.{k}": v for k, v in m.items()})
            for who in self.baselines:
                f = np.asarray(baselines[who])[:, j]
                m = self.metrics(f[:, 0], f[:, 1], f[:, 2] > 0.5, y)
                out.update({f"{who}.h{h}.{k}": v for k, v in m.items()})
        return out

    def score(self, pred, actual, metric, horizon, *, interval, cfg) -> float:
        p, y = np.asarray(pred, float).ravel(), np.asarray(actual, float).ravel()
        ok = np.isfinite(p) & np.isfinite(y)
        m = self.metrics(p[ok], p[ok], p[ok] > self.model_threshold, y[ok])
        if metric in m:
            return m[metric]
        if metric == "neg_brier":
            return -m["brier"]
        raise TaskError(f"task whale has no metric {metric!r}; expected one of {sorted(m)} or neg_brier")

    def calibration(self, pred: np.ndarray, actual: np.ndarray, bins: int = 10) -> dict[str, Any]:
        """Reliability curve (mean probability vs event frequency per decile of the probability), with the
        Brier score and the expected calibration error over those bins."""
        cal = super().calibration(pred, actual, bins)
        n = max(float(np.sum(cal["count"])), 1.0)
        cal["brier"] = prob_metrics(pred, actual)["brier"]
        cal["ece"] = float(np.sum(cal["count"] / n * np.abs(cal["x"] - cal["y"])))
        cal["xlabel"], cal["ylabel"] = "mean predicted probability", "observed event frequency"
        return cal

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        return ("max_order_quote", "order_p999_24h") if self.label_kind == "trade_size" else ("volume",)

    @property
    def outcome_lookback(self) -> int:
        return 0 if self.label_kind == "trade_size" else int(self._positive("volume_window", 60))

    def realised_grid(self, grid: Any, base: np.ndarray, horizon: int) -> np.ndarray:
        """1 when an event minute lies in (t, t+h] on the candle grid, 0 when none, NaN when a minute of
        that range is missing or undefined (the A/B review joins the log with these)."""
        ev = self.event_minutes(grid)
        base = np.asarray(base, np.int64)
        out = np.full(base.size, np.nan)
        ok = (base >= 0) & (base + horizon < ev.size)
        if ok.any():
            win = ev[base[ok, None] + np.arange(1, horizon + 1)[None, :]]
            out[ok] = np.where(
                np.isnan(win).any(axis=1), np.nan, np.nanmax(np.nan_to_num(win, nan=0.0), axis=1)
            )
        return out

    def realised(self, close: np.ndarray, base: np.ndarray, horizon: int) -> np.ndarray:
        raise TaskError(
            "task whale: live outcomes read event minutes (trade minutes or volumes), not closes; "
            "use realised_grid with the task's outcome_columns"
        )

    def row_loss(self, pred: np.ndarray, realised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, y = np.asarray(pred, float), np.asarray(realised, float)
        keep = np.isfinite(p) & np.isfinite(y)
        return (p[keep] - y[keep]) ** 2, keep


TASK = WhaleTask
