"""LightGBM returns model: one gradient-boosted regressor per horizon (the `002_*` seed's lgbm_horizon_h).

Uses the native `lightgbm.train` API with explicit `num_threads` (OpenMP's default threading is
pathological on small shared machines) and `deterministic=True` so a seed reproduces a model.
Prediction on few rows (the serving-like path) uses one thread: thread start-up costs more than it saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import lightgbm as lgb
import numpy as np

from pipelines.config import LightGBMConfig
from pipelines.models.base import check_fitted, check_X, check_Y

SMALL_BATCH = 1024  # rows at or below which predict runs single-threaded


class LightGBMReturns:
    """One LightGBM booster per horizon; implements `pipelines.models.base.ReturnsModel`.

    Args:
        cfg: LightGBM hyperparameters (and thread count, seed).
        horizons: the horizons, in candles; output column j predicts ln(close[t+h_j]/close[t]).
        target_opset: ONNX opset for export (onnxmltools converts LightGBM only at <= 15).
    """

    model_type = "lightgbm"
    input_kind: Literal["tabular", "sequence"] = "tabular"
    sequence_length: int | None = None
    parity_tolerance = 1e-5

    def __init__(self, cfg: LightGBMConfig, horizons: Sequence[int], target_opset: int = 15) -> None:
        self.cfg = cfg
        self.horizons = list(horizons)
        self.target_opset = target_opset
        self.boosters_: list[lgb.Booster] | None = None
        self.n_features_: int | None = None

    def booster_params(self) -> dict[str, Any]:
        """Native LightGBM parameters derived from the config (sklearn-style names mapped)."""
        c = self.cfg
        return {
            "objective": "regression",
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
        self, X: np.ndarray, Y: np.ndarray, *, X_val: np.ndarray | None = None, Y_val: np.ndarray | None = None
    ) -> Self:
        """Fit one booster per horizon on X float32 [N, F], Y float64 [N, H].

        `X_val`/`Y_val` are accepted for the protocol but unused: the tree count is a fixed
        hyperparameter (tuned by Optuna), so early stopping would only add variance.
        """
        X = check_X(X, n_dims=2, who="LightGBMReturns.fit")
        Y = check_Y(Y, X.shape[0], len(self.horizons), who="LightGBMReturns.fit")
        params = self.booster_params()
        # One Dataset (bins computed once) reused for every horizon; only the label changes.
        # Binning params (min_data_in_leaf, feature_pre_filter) must match the boosters' params.
        data = lgb.Dataset(X, label=Y[:, 0], params=params, free_raw_data=False).construct()
        boosters = []
        for j in range(Y.shape[1]):
            data.set_label(Y[:, j])
            boosters.append(lgb.train(params, data, num_boost_round=self.cfg.n_estimators))
        self.boosters_ = boosters
        self.n_features_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float64 [N, H] predicted log returns."""
        check_fitted(self, "boosters_")
        X = check_X(X, n_dims=2, n_features=self.n_features_, who="LightGBMReturns.predict")
        threads = 1 if X.shape[0] <= SMALL_BATCH else self.cfg.num_threads
        cols = [b.predict(X, num_threads=threads) for b in self.boosters_]
        return np.column_stack(cols).astype(np.float64)

    def to_onnx(self) -> bytes:
        """One self-contained ONNX graph: "features" float32 [N, F] → "returns" float32 [N, H]."""
        from pipelines.training.export import lightgbm_to_onnx  # onnxmltools is only needed when exporting

        check_fitted(self, "boosters_")
        return lightgbm_to_onnx(self.boosters_, self.n_features_, target_opset=self.target_opset)

    def get_params(self) -> dict[str, Any]:
        """Flat hyperparameters (config fields + horizons), for MLflow."""
        return {**self.cfg.model_dump(), "horizons": ",".join(map(str, self.horizons)), "model_type": self.model_type}


def build(cfg: Any, n_features: int, horizons: Sequence[int]) -> LightGBMReturns:
    """`make_model` factory: `cfg` is the whole TrainingConfig."""
    return LightGBMReturns(cfg.lightgbm, horizons, target_opset=cfg.export.target_opset)
