"""LightGBM returns model: one gradient-boosted regressor per horizon (the `002_*` seed's lgbm_horizon_h).

Uses the native `lightgbm.train` API with explicit `num_threads` (OpenMP's default threading is
pathological on small shared machines) and `deterministic=True` so a seed reproduces a model.
Prediction on few rows (the serving-like path) uses one thread: thread start-up costs more than it saves.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import lightgbm as lgb
import numpy as np

from pipelines.config import LightGBMConfig
from pipelines.models.base import ModelError, check_fitted, check_X, check_Y
from pipelines.models.spec import ModelContext, ModelSpec, PruningRequest

SMALL_BATCH = 1024  # rows at or below which predict runs single-threaded
# The task's training objective → LightGBM's (`quantile` at alpha 0.5: the conditional median).
OBJECTIVES: dict[str, dict[str, Any]] = {
    "l2": {"objective": "regression"},
    # LightGBM's Huber delta is `alpha`, 0.9 by default: in label units, so at 1m log-return scale
    # (|r| ~ 1e-3) every residual sat inside it and "huber" trained bit-identically to l2. `fit` sets it
    # per horizon to the median |label| of the training rows (the scale where large moves start to count).
    "huber": {"objective": "huber"},
    "quantile": {"objective": "quantile", "alpha": 0.5},
    # sign classifier: rows whose label is exactly 0 (flat candles) get weight 0; output = raw log-odds
    "direction": {"objective": "binary"},
}


@dataclass(frozen=True)
class ValidationCallback:
    """A LightGBM callback that reads scores of the validation slice computed by `feval`.

    `fit` adds the purged validation slice as valid set "val" and scores it with `feval` (LightGBM's
    custom-metric signature `(preds, dataset) -> (name, value, higher_is_better)`) at every iteration.
    """

    callback: Callable[..., Any]
    feval: Callable[[np.ndarray, Any], tuple[str, float, bool]]


class LightGBMReturns:
    """One LightGBM booster per horizon; implements `pipelines.models.base.ReturnsModel`.

    Args:
        cfg: LightGBM hyperparameters (and thread count, seed).
        horizons: the horizons, in candles; output column j predicts ln(close[t+h_j]/close[t]).
        target_opset: ONNX opset for export (onnxmltools converts LightGBM only at <= 15).
        objective: the task's training objective, a key of `OBJECTIVES`.
    """

    model_type = "lightgbm"
    input_kind: Literal["tabular", "sequence"] = "tabular"
    sequence_length: int | None = None
    parity_tolerance = 1e-5
    accepts_nan = True  # a NaN input is "missing" (LightGBM and its ONNX graph send it down a default branch)

    def __init__(
        self,
        cfg: LightGBMConfig,
        horizons: Sequence[int],
        target_opset: int = 15,
        objective: str = "l2",
        scale_index: int | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ModelError(
                f"LightGBM cannot train with objective {objective!r}; it supports {list(OBJECTIVES)}"
            )
        self.cfg = cfg
        self.horizons = list(horizons)
        self.target_opset = target_opset
        self.objective = objective
        if cfg.scale_by is not None and scale_index is None:
            raise ModelError(f"lightgbm scale_by={cfg.scale_by!r} needs the index of that input feature")
        # the scale serves regression objectives (a sign classifier's labels have no scale)
        self.scale_index = scale_index if objective != "direction" else None
        self.boosters_: list[lgb.Booster] | None = None
        self.n_features_: int | None = None
        self.linear_: LinearBase | None = None
        self.scale_floor_: float | None = None

    def booster_params(self) -> dict[str, Any]:
        """Native LightGBM parameters derived from the config (sklearn-style names mapped)."""
        c = self.cfg
        return {
            **OBJECTIVES[self.objective],
            "num_leaves": c.num_leaves,
            "learning_rate": c.learning_rate,
            "min_data_in_leaf": c.min_child_samples,
            "bagging_fraction": c.subsample,
            "bagging_freq": c.subsample_freq,
            "feature_fraction": c.colsample_bytree,
            "lambda_l2": c.reg_lambda,
            "num_threads": c.num_threads,
            "seed": c.seed,
            "deterministic": True,
            "force_row_wise": True,  # fixed histogram layout: required for deterministic results
            "verbosity": -1,
        }

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        Y_val: np.ndarray | None = None,
        callbacks: Sequence[Any] = (),
    ) -> Self:
        """Fit one booster per horizon on X float32 [N, F], Y float64 [N, H].

        The tree count is a fixed hyperparameter (tuned by Optuna), so `X_val`/`Y_val` do not stop
        training early; they are scored only for `callbacks` (LightGBM callbacks, e.g. Optuna's pruning
        callback as a `ValidationCallback`), which every horizon's booster receives.
        """
        X = check_X(X, n_dims=2, who="LightGBMReturns.fit")
        Y = check_Y(Y, X.shape[0], len(self.horizons), who="LightGBMReturns.fit")
        if self.scale_index is not None:
            s = X[:, self.scale_index].astype(np.float64)
            finite = s[np.isfinite(s) & (s > 0)]
            if finite.size == 0:
                raise ModelError(f"scale_by feature {self.cfg.scale_by!r} has no positive value to scale by")
            self.scale_floor_ = float(np.float32(np.quantile(finite, 0.05)))
            Y = Y / self._scale(X)[:, None]
            if Y_val is not None and X_val is not None:
                Y_val = np.asarray(Y_val, np.float64) / self._scale(np.asarray(X_val))[:, None]
        params = self.booster_params()
        fevals = [cb.feval for cb in callbacks if isinstance(cb, ValidationCallback)]
        plain = [cb.callback if isinstance(cb, ValidationCallback) else cb for cb in callbacks]
        if fevals:
            params["metric"] = "None"  # only the custom metric is computed on the validation slice
        # One Dataset (bins computed once) reused for every horizon; only the label changes.
        # Binning params (min_data_in_leaf, feature_pre_filter) must match the boosters' params.
        data = lgb.Dataset(X, label=Y[:, 0], params=params, free_raw_data=False).construct()
        valid = None
        if plain and X_val is not None and Y_val is not None:
            Xv = check_X(X_val, n_dims=2, n_features=X.shape[1], who="LightGBMReturns.fit(validation)")
            Yv = check_Y(Y_val, Xv.shape[0], len(self.horizons), who="LightGBMReturns.fit(validation)")
            valid = (lgb.Dataset(Xv, label=Yv[:, 0], reference=data, free_raw_data=False).construct(), Yv)
        boosters = []
        # the ridge base serves regression objectives; a direction classifier boosts from its prior
        linear = self.cfg.linear_base and self.objective != "direction"
        self.linear_ = LinearBase.fit(X, Y, self.cfg.linear_l2) if linear else None
        base = self.linear_.predict(X) if self.linear_ is not None else None
        base_val = self.linear_.predict(Xv) if self.linear_ is not None and valid is not None else None
        for j in range(Y.shape[1]):
            if self.objective == "huber":
                resid = Y[:, j] if base is None else Y[:, j] - base[:, j]
                params["alpha"] = huber_delta(resid)
            data.set_label(self._label(Y[:, j]))
            if base is not None:
                data.set_init_score(np.ascontiguousarray(base[:, j]))
                if valid is not None:
                    valid[0].set_init_score(np.ascontiguousarray(base_val[:, j]))
            if self.objective == "direction":
                data.set_weight((Y[:, j] != 0).astype(np.float64))
            kwargs: dict[str, Any] = {}
            if plain:
                kwargs["callbacks"] = plain
                if valid is not None:
                    valid[0].set_label(self._label(valid[1][:, j]))
                    kwargs.update(valid_sets=[valid[0]], valid_names=["val"], feval=fevals or None)
            boosters.append(lgb.train(params, data, num_boost_round=self.cfg.n_estimators, **kwargs))
        self.boosters_ = boosters
        self.n_features_ = X.shape[1]
        return self

    def _label(self, y: np.ndarray) -> np.ndarray:
        return (y > 0).astype(np.float64) if self.objective == "direction" else y

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float64 [N, H]: the predicted label (`direction`: its log-odds of being > 0)."""
        check_fitted(self, "boosters_")
        X = check_X(X, n_dims=2, n_features=self.n_features_, who="LightGBMReturns.predict")
        threads = 1 if X.shape[0] <= SMALL_BATCH else self.cfg.num_threads
        raw = self.objective == "direction"  # the margin (sum of trees), which the ONNX graph computes
        cols = [b.predict(X, num_threads=threads, raw_score=raw) for b in self.boosters_]
        out = np.column_stack(cols).astype(np.float64)
        out = out if self.linear_ is None else out + self.linear_.predict(X)
        return out if self.scale_floor_ is None else out * self._scale(X)[:, None]

    def _scale(self, X: np.ndarray) -> np.ndarray:
        """(N,) s_t = max(feature, floor) in float32 arithmetic, as the ONNX graph computes it (NaN → floor)."""
        s = np.asarray(X[:, self.scale_index], np.float32)
        return np.fmax(s, np.float32(self.scale_floor_)).astype(np.float64)

    def to_onnx(self) -> bytes:
        """One self-contained ONNX graph: "features" float32 [N, F] → "returns" float32 [N, H]."""
        from pipelines.training.export import lightgbm_to_onnx  # onnxmltools is only needed when exporting

        check_fitted(self, "boosters_")
        boosters = self.boosters_
        if self.objective == "direction":  # export the margin: the same trees read as a regressor
            boosters = [_as_regressor(b) for b in boosters]
        onnx_bytes = lightgbm_to_onnx(boosters, self.n_features_, target_opset=self.target_opset)
        if self.linear_ is not None:
            from pipelines.training.export import add_linear_term

            onnx_bytes = add_linear_term(
                onnx_bytes, self.linear_.mean, self.linear_.coef, self.linear_.intercept
            )
        if self.scale_floor_ is not None:
            from pipelines.training.export import scale_output_by_input

            onnx_bytes = scale_output_by_input(onnx_bytes, self.scale_index, self.scale_floor_)
        return onnx_bytes

    def get_params(self) -> dict[str, Any]:
        """Flat hyperparameters (config fields + horizons), for MLflow."""
        params = {
            **self.cfg.model_dump(),
            "horizons": ",".join(map(str, self.horizons)),
            "model_type": self.model_type,
        }
        if self.objective != "l2":  # l2 runs stay exactly as they were logged before objectives existed
            params["objective"] = self.objective
        return params


@dataclass(frozen=True)
class LinearBase:
    """A ridge regression per horizon on standardised features: prediction = where(isnan(x), mean, x) @ coef
    + intercept (the standardisation folded into coef; a NaN feature contributes its training mean)."""

    mean: np.ndarray  # (F,) training means (NaN-ignoring; 0 where a column is all NaN)
    coef: np.ndarray  # (F, H) on raw feature units
    intercept: np.ndarray  # (H,)

    @classmethod
    def fit(cls, X: np.ndarray, Y: np.ndarray, l2: float) -> LinearBase:
        X = np.asarray(X, np.float64)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (no book feed): mean 0
            mean = np.nan_to_num(np.nanmean(X, axis=0))
            Z = np.where(np.isnan(X), 0.0, X - mean)
            sd = np.sqrt((Z * Z).mean(axis=0))
        sd = np.where(sd > 0, sd, 1.0)
        Z /= sd
        lo, hi = np.quantile(Y, [0.005, 0.995], axis=0)
        Yc = np.clip(Y, lo, hi)
        ym = Yc.mean(axis=0)
        n, f = Z.shape
        w = np.linalg.solve(Z.T @ Z + l2 * n * np.eye(f), Z.T @ (Yc - ym))  # (F, H)
        coef = w / sd[:, None]
        return cls(mean, coef, ym - mean @ coef)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        return np.where(np.isnan(X), self.mean, X) @ self.coef + self.intercept


def huber_delta(y: np.ndarray) -> float:
    """The Huber threshold for labels `y`: their median absolute value (flat labels excluded), so the
    loss is quadratic for typical moves and linear for the fat tail."""
    a = np.abs(np.asarray(y, float))
    a = a[a > 0]
    return float(np.median(a)) if a.size else 1.0


def _as_regressor(booster: lgb.Booster) -> lgb.Booster:
    """The same trees with a regression objective: its prediction is the binary booster's raw margin
    (the log-odds), which onnxmltools converts as a plain tree sum instead of a classifier graph."""
    text = booster.model_to_string()
    swap = {"objective=": "objective=regression", "[objective: ": "[objective: regression]"}
    lines = [next((v for k, v in swap.items() if ln.startswith(k)), ln) for ln in text.split("\n")]
    return lgb.Booster(model_str="\n".join(lines))


def _build(
    cfg: LightGBMConfig, n_features: int, horizons: Sequence[int], *, objective: str, context: ModelContext
) -> LightGBMReturns:
    index = None
    if cfg.scale_by is not None:
        from pipelines.features import get_feature_set

        names = list(get_feature_set(context.training.features.feature_set).names)
        if cfg.scale_by not in names:
            raise ModelError(
                f"lightgbm scale_by={cfg.scale_by!r} is not a feature of {context.training.features.feature_set} "
                f"({', '.join(names)})"
            )
        index = names.index(cfg.scale_by)
    return LightGBMReturns(
        cfg,
        horizons,
        target_opset=context.training.export.target_opset,
        objective=objective,
        scale_index=index,
    )


def _pruning(req: PruningRequest) -> list[Any]:
    """Optuna's LightGBM callback on the validation slice, scored with the tuning metric every
    `report_interval` boosting iterations."""
    from optuna_integration import LightGBMPruningCallback

    def feval(preds: np.ndarray, dataset: Any) -> tuple[str, float, bool]:
        return req.metric, req.score(preds, dataset.get_label()), True

    cb = LightGBMPruningCallback(req.trial, req.metric, valid_name="val", report_interval=req.report_interval)
    return [ValidationCallback(cb, feval)]


SPEC = ModelSpec(
    name="lightgbm",
    factory=_build,
    config_class=LightGBMConfig,
    input_kind="tabular",
    tasks=("returns", "volatility"),
    objectives=tuple(OBJECTIVES),
    # No flags: the `lightgbm:` block of defaults.yaml (a preset of configs/models/lightgbm.yaml goes on top).
    base_config=lambda ctx: ctx.training.lightgbm.model_dump(),
    threads_field="num_threads",
    untunable=frozenset({"seed"}),
    pruning=_pruning,
)
