"""Ensemble (002 seed): a sequence model and a tabular (LightGBM) model blended in ONE ONNX graph.

Input "features" float32 [N, T, F]. The sequence member reads the whole window; the tabular
member reads its last row (a Gather inside the graph), which is exactly the row a tabular model
would get for the same candle. Outputs:
- "returns" = w_s * seq + w_t * tab, with the weights from config normalised to sum to 1;
- "confidence" = |w_s a + w_t b| / (w_s |a| + w_t |b|) in [0, 1]: 1 when the members agree on the
  sign (whatever their sizes), falling towards 0 as they disagree with equal weighted strength.
The graph is composed from the members' own exports (their nodes prefixed `seq_` / `tab_`), so
the blend serves exactly what each member's parity check covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipelines.config import EnsembleConfig, TrainingConfig
from pipelines.contracts.errors import KairosError
from pipelines.models.sequence.base import SequenceRegressor
from pipelines.models.spec import ModelContext, ModelSpec

EPS = 1e-12  # keeps the agreement ratio finite when both members predict exactly 0


class EnsembleError(KairosError):
    """The members cannot be blended (wrong input kinds, mismatched horizons, bad graphs)."""


def _prefixed(model: onnx.ModelProto, prefix: str, input_as: str) -> tuple[list, list, dict[str, str]]:
    """Nodes and initializers of `model` with names prefixed; its single input renamed to `input_as`.

    Returns (nodes, initializers, {original output name: new name}).
    """
    from pipelines.training.export import ExportError, prefix_graph

    graph = model.graph
    if len(graph.input) != 1:
        raise EnsembleError(
            f"member graph has inputs {[i.name for i in graph.input]}; expected one 'features'"
        )
    try:
        return prefix_graph(graph, prefix, rename={graph.input[0].name: input_as})
    except ExportError as e:
        raise EnsembleError(f"member graph cannot be blended: {e}") from None


def compose_blend(
    seq_onnx: bytes,
    tab_onnx: bytes,
    *,
    sequence_length: int,
    n_features: int,
    n_horizons: int,
    weights: tuple[float, float],
) -> bytes:
    """One graph: features [N, T, F] → returns, confidence [N, H] (see the module docstring)."""
    seq, tab = onnx.load_from_string(seq_onnx), onnx.load_from_string(tab_onnx)
    s_nodes, s_inits, s_out = _prefixed(seq, "seq_", "features")
    t_nodes, t_inits, t_out = _prefixed(tab, "tab_", "last_row")
    if "returns" not in s_out or "returns" not in t_out:
        raise EnsembleError("both member graphs must output 'returns'")
    ws, wt = weights
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)  # noqa: E731
    consts = [
        c("blend_ws", ws),
        c("blend_wt", wt),
        c("blend_eps", EPS),
        numpy_helper.from_array(np.asarray(sequence_length - 1, dtype=np.int64), "last_index"),
    ]
    a, b = s_out["returns"], t_out["returns"]
    nodes = [
        helper.make_node("Gather", ["features", "last_index"], ["last_row"], axis=1, name="take_last_row"),
        *s_nodes,
        *t_nodes,
        helper.make_node("Mul", [a, "blend_ws"], ["blend_a"], name="weight_seq"),
        helper.make_node("Mul", [b, "blend_wt"], ["blend_b"], name="weight_tab"),
        helper.make_node("Add", ["blend_a", "blend_b"], ["returns"], name="blend"),
        helper.make_node("Abs", ["returns"], ["blend_abs"], name="abs_blend"),
        helper.make_node("Abs", ["blend_a"], ["blend_abs_a"], name="abs_a"),
        helper.make_node("Abs", ["blend_b"], ["blend_abs_b"], name="abs_b"),
        helper.make_node("Add", ["blend_abs_a", "blend_abs_b"], ["blend_den0"], name="den"),
        helper.make_node("Add", ["blend_den0", "blend_eps"], ["blend_den"], name="den_eps"),
        helper.make_node("Div", ["blend_abs", "blend_den"], ["confidence"], name="agreement"),
    ]
    opsets: dict[str, int] = {}
    for m in (seq, tab):
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    graph = helper.make_graph(
        nodes,
        "kairos_ensemble",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, sequence_length, n_features])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, n_horizons])
            for n in ("returns", "confidence")
        ],
        initializer=[*consts, *s_inits, *t_inits],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="kairos",
    )
    model.ir_version = max(seq.ir_version, tab.ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


class EnsembleRegressor:
    """Weighted blend of a sequence model and a tabular model (ReturnsModel protocol, input [N, T, F])."""

    model_type = "ensemble"
    input_kind = "sequence"

    def __init__(
        self,
        sequence: SequenceRegressor,
        tabular: Any,
        *,
        sequence_weight: float = 0.5,
        tabular_weight: float = 0.5,
        parity_tolerance: float = 1e-4,
        opset: int = 15,
    ) -> None:
        self.sequence = sequence
        self.tabular = tabular
        self.sequence_weight = sequence_weight
        self.tabular_weight = tabular_weight
        self.parity_tolerance = parity_tolerance
        self.opset = opset

    @classmethod
    def from_config(
        cls,
        cfg: EnsembleConfig,
        n_features: int,
        horizons: Sequence[int],
        *,
        training: TrainingConfig | None = None,
        configs_dir: Path | None = None,
        objective: str = "l2",
    ) -> EnsembleRegressor:
        """Members from config: the named sequence preset + LightGBM from `training.lightgbm`, both
        trained with the task's `objective`."""
        from pipelines.models import get_spec
        from pipelines.models.lightgbm import LightGBMReturns

        if configs_dir is None:
            from pipelines.contracts.settings import get_settings

            configs_dir = get_settings().configs_dir
        context = ModelContext(training or TrainingConfig(), Path(configs_dir))
        seq = get_spec(cfg.sequence_model, context.configs_dir).build(
            context,
            n_features,
            horizons,
            preset=cfg.sequence_preset,
            overrides=cfg.sequence_overrides,
            objective=objective,
        )
        tab = LightGBMReturns(
            context.training.lightgbm, horizons, target_opset=cfg.opset, objective=objective
        )
        return cls(
            seq,
            tab,
            sequence_weight=cfg.sequence_weight,
            tabular_weight=cfg.tabular_weight,
            parity_tolerance=cfg.parity_tolerance,
            opset=cfg.opset,
        )

    @property
    def sequence_length(self) -> int:
        return self.sequence.sequence_length

    @property
    def weights(self) -> tuple[float, float]:
        """(w_sequence, w_tabular), normalised to sum to 1."""
        total = self.sequence_weight + self.tabular_weight
        if total <= 0:
            raise EnsembleError("ensemble weights sum to 0; give at least one member a positive weight")
        return self.sequence_weight / total, self.tabular_weight / total

    def get_params(self) -> dict[str, Any]:
        ws, wt = self.weights
        return {
            "model_type": self.model_type,
            "sequence_weight": ws,
            "tabular_weight": wt,
            **{f"sequence.{k}": v for k, v in self.sequence.get_params().items()},
            **{f"tabular.{k}": v for k, v in self.tabular.get_params().items()},
        }

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        Y_val: np.ndarray | None = None,
    ) -> Self:
        """Fit both members on the same windows: the tabular one on each window's last row."""
        if getattr(self.tabular, "input_kind", "tabular") != "tabular":
            raise EnsembleError("the ensemble's second member must be tabular (input [N, F])")
        self.sequence.fit(X, Y, X_val=X_val, Y_val=Y_val)
        last_val = None if X_val is None else X_val[:, -1, :]
        self.tabular.fit(X[:, -1, :], Y, X_val=last_val, Y_val=Y_val)
        self.fitted_ = True
        return self

    def predict_members(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Each member and the blend side by side: {"sequence", "tabular", "ensemble"} float64 (N, H)."""
        if not getattr(self, "fitted_", False):
            raise EnsembleError("ensemble is not fitted; call fit(X, Y) first")
        a = self.sequence.predict(X)
        b = np.asarray(self.tabular.predict(X[:, -1, :]), dtype=np.float64)
        ws, wt = self.weights
        return {"sequence": a, "tabular": b, "ensemble": ws * a + wt * b}

    def predict_with_confidence(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(returns, confidence) float64 (N, H), the formulas of the exported graph."""
        m = self.predict_members(X)
        ws, wt = self.weights
        den = np.abs(ws * m["sequence"]) + np.abs(wt * m["tabular"]) + EPS
        return m["ensemble"], np.abs(m["ensemble"]) / den

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_members(X)["ensemble"]

    def to_onnx(self) -> bytes:
        """ONE self-contained graph: "features" [N, T, F] → "returns", "confidence" [N, H]."""
        if not getattr(self, "fitted_", False):
            raise EnsembleError("ensemble is not fitted; call fit(X, Y) first")
        return compose_blend(
            self.sequence.to_onnx(opset=self.opset),
            self.tabular.to_onnx(),
            sequence_length=self.sequence_length,
            n_features=self.sequence.n_features,
            n_horizons=len(self.sequence.horizons),
            weights=self.weights,
        )


def evaluate_members(
    model: EnsembleRegressor,
    X: np.ndarray,
    Y: np.ndarray,
    baselines: dict[str, np.ndarray],
    task: Any,
    *,
    interval: str,
    cfg: Any,
) -> dict[str, dict[str, float]]:
    """The walk-forward metrics of each member and of the blend, side by side, on the same rows.

    Args:
        model: a fitted ensemble; X (n, T, F) windows, Y (n, H) labels.
        baselines: the task's baseline forecasts for the same rows (`task.baseline_forecasts`).
        task: a `pipelines.tasks.Task`; cfg: `EvaluationConfig`.

    Returns:
        {"sequence" | "tabular" | "ensemble": flat `task.evaluate` metrics}.
    """
    return {
        who: task.evaluate(pred, Y, baselines, interval=interval, cfg=cfg)
        for who, pred in model.predict_members(X).items()
    }


def _build(
    cfg: EnsembleConfig, n_features: int, horizons: Sequence[int], *, objective: str, context: ModelContext
) -> EnsembleRegressor:
    return EnsembleRegressor.from_config(
        cfg,
        n_features,
        horizons,
        training=context.training,
        configs_dir=context.configs_dir,
        objective=objective,
    )


SPEC = ModelSpec(
    name="ensemble",
    factory=_build,
    config_class=EnsembleConfig,
    input_kind="sequence",
    tasks=("returns", "volatility"),
    objectives=("l2", "huber"),  # what both members honour (each checks again when built)
    untunable=frozenset(
        {"sequence_model", "sequence_preset", "sequence_overrides", "parity_tolerance", "opset"}
    ),
)
