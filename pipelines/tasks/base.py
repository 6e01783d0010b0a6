"""The task contract: what is predicted, and how it is judged.

A task owns, for one registered model:
- its **labels**, built from candles strictly after t (`labels`, (N, H), NaN where the horizon runs
  past the end) and its **outputs** (`output_name`, `output_meaning`: the first ONNX output, float32
  [N, H]);
- the **objective** its models train with (`objective`: "l2" | "huber" | "quantile"; a model family
  maps it to its own loss) and the target transform (`target` / `untarget`: identity by default);
- its **naive baselines**, computed from per-row inputs that use candles <= t only
  (`baseline_inputs`), fitted on the training fold only (`fit_baselines`) and always scored on the
  same rows as the model (`baseline_forecasts`);
- its **metrics** (`evaluate`: flat `{who}.h{h}.{metric}` floats) and the columns a report shows;
- the **per-row loss** the A/B review compares (`review_loss`, a name understood by
  `pipelines.review.arms.per_request_loss`), the **promotion metric** and its direction;
- how a live outcome is **realised** from the candle closes (`realised`), for the outcome join.

Every task is one module `pipelines/tasks/<name>.py` exposing `TASK` (a subclass of `Task`) and one
YAML `configs/tasks/<name>.yaml`. Nothing outside the task branches on its name.
Pure numpy/scipy; no torch, LightGBM, MLflow or Prefect.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipelines.contracts.errors import KairosError


class TaskError(KairosError):
    """A task is unknown, misconfigured, or given arrays that do not line up."""


@dataclass(frozen=True)
class Column:
    """One column of a report table: its title, the metric it reads and how it is printed."""

    title: str
    metric: str
    fmt: str = "{:.4f}"  # str.format spec; a tuple metric (lo, hi) uses `fmt_ci`
    ci: tuple[str, str] | None = None  # metrics holding a confidence interval, shown as [lo, hi]

    def render(self, m: dict[str, float]) -> str:
        v = m.get(self.metric, math.nan)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        text = self.fmt.format(v)
        if self.ci and all(m.get(k) is not None and m.get(k) == m.get(k) for k in self.ci):
            text += " [" + ", ".join(self.fmt.format(m[k]) for k in self.ci) + "]"
        return text


@dataclass(frozen=True)
class Task(ABC):
    """One prediction task at the horizons `horizons` (candles ahead), with `options` from its YAML."""

    horizons: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    name: ClassVar[str]
    output_name: ClassVar[str]  # the first ONNX output, float32 [N, H]
    output_meaning: ClassVar[str]
    label_prefix: ClassVar[str]  # label column names: f"{label_prefix}_h{h}"
    baselines: ClassVar[tuple[str, ...]]  # names, in report order
    columns: ClassVar[tuple[Column, ...]]  # report table, per (who, horizon)
    review_loss: ClassVar[str]  # per-row loss the A/B review compares (lower is better)
    promotion_metric: ClassVar[str]  # metric the promotion policy decides on
    higher_is_better: ClassVar[bool]
    tuning_metrics: ClassVar[tuple[str, ...]]  # metrics `kairos tune` may maximise (first = default)
    objective: ClassVar[str] = "l2"  # the models' training loss, unless the YAML sets `objective`
    directional: ClassVar[bool] = False  # outputs are signed returns: direction accuracy and sign P&L apply
    pooled: ClassVar[bool] = False  # models train pooled over event windows (pipelines.training.pooled)

    def __post_init__(self) -> None:
        hs = [int(h) for h in self.horizons]
        if not hs or any(h < 1 for h in hs) or hs != sorted(set(hs)) or hs != list(self.horizons):
            raise TaskError(
                f"task {self.name}: horizons must be strictly increasing whole candle counts >= 1, "
                f"got {list(self.horizons)}"
            )
        object.__setattr__(self, "horizons", tuple(hs))

    # ------------------------------------------------------------------ labels and training target
    @property
    def label_names(self) -> list[str]:
        return [f"{self.label_prefix}_h{h}" for h in self.horizons]

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives the task asks for, in preference order (the YAML's `objective`: one or a list)."""
        o = self.options.get("objective", self.objective)
        return tuple(str(x) for x in o) if isinstance(o, list | tuple) else (str(o),)

    @property
    def training_objective(self) -> str:
        return self.objectives[0]

    def for_family(self, supported: Sequence[str], family: str = "the model") -> Task:
        """This task with the first of its objectives that a model family supports (the family keeps
        training what the task asks; a family that cannot is told plainly)."""
        pick = next((o for o in self.objectives if o in supported), None)
        if pick is None:
            raise TaskError(
                f"{family} supports objectives {list(supported)}, none of task {self.name}'s "
                f"{list(self.objectives)}; set `objective` in configs/tasks/{self.name}.yaml"
            )
        if self.objectives == (pick,):
            return self
        return type(self)(self.horizons, {**self.options, "objective": pick})

    @property
    def meaning(self) -> str:
        """The output's meaning in the manifest (a task whose objective changes it overrides this)."""
        return self.output_meaning

    @property
    def lookahead(self) -> int:
        """Candles after t a label reads: the purge between train and test must cover it."""
        return max(self.horizons)

    @abstractmethod
    def labels(self, close: np.ndarray) -> np.ndarray:
        """float64 (N, H) from close prices (N,); NaN where the horizon runs past the end."""

    def frame_labels(self, frame: Any) -> np.ndarray:
        """float64 (N, H) from a candle frame (a task whose labels read more than closes, e.g. volumes or
        trade minutes, overrides this; the default reads `close`)."""
        return self.labels(np.asarray(frame["close"], dtype=np.float64))

    def target(self, Y: np.ndarray) -> np.ndarray:
        """What the models fit (default: the labels themselves)."""
        return Y

    # ------------------------------------------------------------------ baselines
    @property
    def warmup(self) -> int:
        """Candles of history `baseline_inputs` needs before its rows are finite."""
        return 1

    @abstractmethod
    def baseline_inputs(self, close: np.ndarray) -> np.ndarray:
        """float64 (N, K): per-row inputs of the naive baselines, from closes <= t only."""

    def frame_baseline_inputs(self, frame: Any) -> np.ndarray:
        """float64 (N, K) from a candle frame (default: `baseline_inputs` of its closes)."""
        return self.baseline_inputs(np.asarray(frame["close"], dtype=np.float64))

    def fit_baselines(self, A: np.ndarray, Y: np.ndarray) -> Any:
        """Fit whatever a baseline learns, on the training fold's rows only (default: nothing)."""
        return None

    @abstractmethod
    def baseline_forecasts(self, state: Any, A: np.ndarray) -> dict[str, np.ndarray]:
        """`{who: forecast}` for the rows of A; each forecast's first axis is the row."""

    def baseline_column(self, forecast: np.ndarray, j: int, metric: str) -> np.ndarray:
        """(n,) values of one baseline forecast at horizon index `j`, as `score(metric)` reads them."""
        return np.asarray(forecast)[:, j]

    # ------------------------------------------------------------------ judging
    @abstractmethod
    def evaluate(
        self,
        pred: np.ndarray,
        actual: np.ndarray,
        baselines: dict[str, np.ndarray],
        *,
        interval: str,
        cfg: Any,
        segments: Sequence[int] | None = None,
    ) -> dict[str, float]:
        """Model and baselines on the same rows: flat `{who}.h{h}.{metric}` floats.

        Args:
            pred: (n, H) model outputs; actual: (n, H) labels, finite.
            baselines: `baseline_forecasts` output for the same rows.
            interval: candle interval; cfg: `EvaluationConfig`.
            segments: lengths of contiguous blocks when rows are pooled from several test windows.
        """

    def below_baselines(self, summary: dict[str, float]) -> dict[int, str]:
        """Horizons at which the model's pooled walk-forward promotion metric does not beat the best of
        the task's naive baselines (point estimates, same rows), each with a one-line reason; {} when it
        beats them at every horizon. A tie counts as not beating: the rule is the cheaper model."""
        m, sign = self.promotion_metric, 1.0 if self.higher_is_better else -1.0
        out: dict[int, str] = {}
        for h in self.horizons:
            model = summary.get(f"model.h{h}.{m}", float("nan"))
            scored = [(summary.get(f"{b}.h{h}.{m}", float("nan")), b) for b in self.baselines]
            scored = [(v, b) for v, b in scored if v == v]  # drop NaN
            if not scored:
                continue
            best, who = max(scored, key=lambda vb: sign * vb[0])
            if not model == model or sign * (model - best) <= 0:
                out[h] = f"h{h}: model {m} {model:.4f} vs {who} {best:.4f}"
        return out

    @abstractmethod
    def score(
        self, pred: np.ndarray, actual: np.ndarray, metric: str, horizon: int, *, interval: str, cfg: Any
    ) -> float:
        """One metric of one horizon's (n,) forecasts, for promotion and tuning (NaN when undefined)."""

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        """Store columns (candles, or trade minutes) live outcomes are realised from (`realised_grid`)."""
        return ("close",)

    @property
    def outcome_lookback(self) -> int:
        """Candles before a prediction's candle that its outcome reads (0: from candle t on)."""
        return 0

    def realised_grid(self, grid: Any, base: np.ndarray, horizon: int) -> np.ndarray:
        """Live outcomes from `grid`: `{column: (G,) values on the regular candle grid}` (NaN where a candle is
        missing) for each of `outcome_columns`; default: `realised` of the closes."""
        return self.realised(grid["close"], base, horizon)

    @abstractmethod
    def realised(self, close: np.ndarray, base: np.ndarray, horizon: int) -> np.ndarray:
        """Live outcomes: `close` is the candle grid (NaN where a candle is missing), `base` the row index
        of each prediction's candle t; returns (n,) realised label values, NaN when any candle the label
        reads is missing."""

    @abstractmethod
    def row_loss(self, pred: np.ndarray, realised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The A/B review's per-request loss (lower is better) of (n,) predictions and realised values:
        (loss (m,), keep mask (n,)) — rows the loss is undefined on are dropped."""

    def calibration(self, pred: np.ndarray, actual: np.ndarray, bins: int = 10) -> dict[str, Any]:
        """A calibration curve of one horizon's (n,) forecasts: mean forecast against mean outcome per
        decile of the forecast (on the diagonal when the forecast is the conditional mean)."""
        pred, actual = np.asarray(pred, float), np.asarray(actual, float)
        edges = np.unique(np.quantile(pred, np.linspace(0, 1, bins + 1))) if pred.size else np.zeros(1)
        idx = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
        count = np.bincount(idx, minlength=max(len(edges) - 1, 1)).astype(float)
        ok = count > 0
        x = np.bincount(idx, weights=pred, minlength=count.size)[ok] / count[ok]
        y = np.bincount(idx, weights=actual, minlength=count.size)[ok] / count[ok]
        return {"x": x, "y": y, "count": count[ok], "xlabel": "mean forecast", "ylabel": "mean outcome"}

    def check(self, pred: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, actual = np.asarray(pred, float), np.asarray(actual, float)
        if pred.ndim != 2 or pred.shape != actual.shape or pred.shape[1] != len(self.horizons):
            raise TaskError(
                f"task {self.name}: shapes disagree: pred {pred.shape}, actual {actual.shape}; "
                f"both must be (n, {len(self.horizons)})"
            )
        for label, arr in (("pred", pred), ("actual", actual)):
            if not np.isfinite(arr).all():
                raise TaskError(
                    f"task {self.name}: {label} has {int((~np.isfinite(arr)).sum())} non-finite values; "
                    "drop those rows first"
                )
        return pred, actual


def nested_report(flat: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """`{who}.h{h}.{metric}` → `{who: {"h{h}": {metric: value}}}` (for tables)."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in flat.items():
        who, h, metric = key.split(".", 2)
        report.setdefault(who, {}).setdefault(h, {})[metric] = value
    return report
