"""Binary classifiers on the sequence zoo's networks: P(event in the next candles) from a window.

`SequenceClassifier(model_type, cfg, n_features)` puts a one-logit head on the encoder of any zoo
architecture (`lstm_attention`, `transformer`, `tft`, `mamba`; `pipelines.models.sequence.net.build_encoder`)
and trains it with the zoo's loop (`base.train_network`: AdamW, warm-up + cosine, gradient clipping,
early stopping on the validation windows with the best weights restored, optional SWA, seeded).

- Loss: binary cross-entropy on the logit with positives weighted `pos_weight` (default n_neg / n_pos of
  the training windows: the class imbalance), or the focal loss (same weighting) when `focal_gamma > 0`.
  The preset's regression `loss` (mse, huber, ..., quantile for tft) is not used.
- Graph: "features" float32 [N, T, F] → (x - mean) / std (training windows, as the regressors) →
  encoder → Linear → GELU → Dropout (identity in eval) → Linear(d, 1) → − log(pos_weight) → "logit"
  float32 [N, 1]. Subtracting log(pos_weight) undoes the prior shift the weighting puts on the optimum
  of the weighted cross-entropy, so "logit" estimates the unweighted log-odds (exactly so at the BCE
  optimum; with the focal loss it is a score on the same centring, to be calibrated downstream, e.g.
  by Platt scaling as the whale detector does).
- Inputs must be finite: windows with NaN (feature warm-up, nullable features) are refused with a
  `SequenceModelError`; drop or impute them first (`pipelines.training.windows.window_dataset`).
- ONNX opset 15 by default (mergeable into a LightGBM / skl2onnx graph at opset 15); self-contained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor, nn

from pipelines.config import SEQUENCE_ARCHITECTURES, SequenceModelConfig
from pipelines.models.sequence.base import (
    PREDICT_BATCH,
    SequenceModelError,
    feature_scaling,
    torch_threads,
    train_network,
)
from pipelines.models.sequence.losses import LossFn, focal_loss, weighted_bce_loss
from pipelines.models.sequence.net import build_encoder

INPUT_NAME = "features"
OUTPUT_NAME = "logit"
DEFAULT_OPSET = 15  # = LightGBM's / skl2onnx's: the logit graph can be merged into theirs
# ONNX vs native max abs difference on the logit guaranteed by `parity_tolerance` (float32 both sides;
# measured ≤ 2e-6 for every architecture on logits up to |z| ≈ 7, 7e-7 for seed000, also under serving's
# "all" graph optimisations): a 500x margin, while a broken export is off by O(1).
LOGIT_PARITY_TOLERANCE = 1e-3
_FINITE_CHUNK = 4096  # windows per finiteness check (bounds the temporary bool array)


class LogitNet(nn.Module):
    """Raw windows (B, T, F) → logit (B, 1): fitted normalisation, a zoo encoder, a one-logit head."""

    def __init__(self, cfg: SequenceModelConfig, n_features: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("logit_offset", torch.zeros(()))  # log(pos_weight), removed on export
        self.encoder = build_encoder(cfg, n_features)
        self.head_in = nn.Linear(d, d)
        self.head_act = nn.GELU()
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head_out = nn.Linear(d, 1)

    def set_fitted(
        self, x_mean: np.ndarray, x_std: np.ndarray, pos_weight: float, prior_logit: float
    ) -> None:
        """Install the training windows' statistics and start the output bias at the weighted prior."""
        with torch.no_grad():
            self.x_mean.copy_(torch.as_tensor(x_mean, dtype=torch.float32))
            self.x_std.copy_(torch.as_tensor(x_std, dtype=torch.float32))
            self.logit_offset.fill_(math.log(pos_weight))
            self.head_out.bias.fill_(prior_logit)

    def forward(self, x: Tensor) -> Tensor:
        """The logit the (weighted) training loss sees, (B, 1); dropout per mode."""
        xn = (x - self.x_mean) / self.x_std  # the first ops of the exported graph
        return self.head_out(self.head_drop(self.head_act(self.head_in(self.encoder(xn)))))

    def logit(self, x: Tensor) -> Tensor:
        """Export path (eval mode): the unweighted log-odds estimate, (B, 1)."""
        return self.forward(x) - self.logit_offset


class _LogitGraph(nn.Module):
    """What the exporter traces: "features" → "logit"."""

    def __init__(self, net: LogitNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: Tensor) -> Tensor:
        return self.net.logit(features)


def _check_windows(W: np.ndarray, T: int, F: int, what: str) -> None:
    if not isinstance(W, np.ndarray) or W.ndim != 3 or W.shape[1:] != (T, F):
        shape = getattr(W, "shape", type(W).__name__)
        raise SequenceModelError(
            f"{what}: expected windows of shape (N, {T}, {F}) (T = the preset's sequence_length, F = "
            f"n_features), got {shape}; build them with pipelines.training.windows.sliding_windows"
        )
    for i in range(0, len(W), _FINITE_CHUNK):
        chunk = W[i : i + _FINITE_CHUNK]
        if not np.isfinite(chunk).all():
            bad = int((~np.isfinite(chunk).reshape(len(chunk), -1).all(1)).sum())
            raise SequenceModelError(
                f"{what}: windows {i}..{i + len(chunk) - 1} include {bad} with NaN/inf values; the "
                "sequence classifier takes finite windows only (drop or impute them first)"
            )


def _check_labels(y: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise SequenceModelError(f"{what}: expected labels of shape ({n},), got {y.shape}")
    yf = y.astype(np.float64)
    if not np.isin(yf, (0.0, 1.0)).all():
        raise SequenceModelError(f"{what}: labels must be 0/1 (or bool); got values {np.unique(yf)[:5]}")
    return yf


class SequenceClassifier:
    """A binary classifier on one zoo architecture; see the module docstring.

    Args:
        model_type: lstm_attention | transformer | tft | mamba; must match `cfg.architecture`.
        cfg: the preset (`load_model_preset(configs_dir, model_type, preset, overrides)` or
            `SequenceClassifier.from_preset`): network shape, T, epochs, batch size, lr, patience, SWA.
        n_features: F of the windows.
        pos_weight: weight of the positive windows in the loss; None = n_neg / n_pos of the training
            windows; 1.0 = unweighted.
        focal_gamma: > 0 trains with the focal loss of that γ instead of the cross-entropy.
        seed: torch seed (weights, dropout, batch order); replaces `cfg.seed`.
        num_threads: torch intra-op threads for fit / predict / export; replaces `cfg.num_threads`.

    Learned attributes (after `fit`): `net_`, `pos_weight_`, `n_pos_`, `n_train_`, `best_epoch_`,
    `epochs_run_`, `val_history_` (validation loss per epoch), `used_swa_`.
    """

    input_kind = "sequence"
    input_name = INPUT_NAME
    output_name = OUTPUT_NAME

    def __init__(
        self,
        model_type: str,
        cfg: SequenceModelConfig,
        n_features: int,
        *,
        pos_weight: float | None = None,
        focal_gamma: float = 0.0,
        seed: int = 42,
        num_threads: int = 1,
    ) -> None:
        if model_type not in SEQUENCE_ARCHITECTURES:
            raise SequenceModelError(
                f"no sequence classifier for model {model_type!r}; supported: {list(SEQUENCE_ARCHITECTURES)}"
            )
        if cfg.architecture != model_type:
            raise SequenceModelError(
                f"model_type {model_type!r} but the config is a {cfg.architecture!r} preset"
            )
        if int(n_features) < 1:
            raise SequenceModelError(f"n_features must be >= 1, got {n_features}")
        if pos_weight is not None and not (math.isfinite(pos_weight) and pos_weight > 0):
            raise SequenceModelError(f"pos_weight must be a positive number or None, got {pos_weight}")
        if not (math.isfinite(focal_gamma) and focal_gamma >= 0):
            raise SequenceModelError(f"focal_gamma must be >= 0, got {focal_gamma}")
        if int(num_threads) < 1:
            raise SequenceModelError(f"num_threads must be >= 1, got {num_threads}")
        self.config = cfg.model_copy(update={"seed": int(seed), "num_threads": int(num_threads)})
        self.n_features = int(n_features)
        self.pos_weight = pos_weight
        self.focal_gamma = float(focal_gamma)

    @classmethod
    def from_preset(
        cls,
        model_type: str,
        n_features: int,
        preset: str | None = None,
        *,
        overrides: dict[str, Any] | None = None,
        configs_dir: Path | None = None,
        **kwargs: Any,
    ) -> SequenceClassifier:
        """A classifier on preset `preset` of `configs/models/<model_type>.yaml` (+ flat `overrides`)."""
        from pipelines.config import load_model_preset
        from pipelines.contracts.settings import get_settings

        if model_type not in SEQUENCE_ARCHITECTURES:
            raise SequenceModelError(
                f"no sequence classifier for model {model_type!r}; supported: {list(SEQUENCE_ARCHITECTURES)}"
            )
        cfg = load_model_preset(configs_dir or get_settings().configs_dir, model_type, preset, overrides)
        return cls(model_type, cfg, n_features, **kwargs)

    # -- identity -----------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.config.architecture

    @property
    def sequence_length(self) -> int:
        return self.config.sequence_length

    @property
    def loss_name(self) -> str:
        return "focal" if self.focal_gamma > 0 else "bce"

    @property
    def parity_tolerance(self) -> float:
        """Max abs difference on "logit", ONNX vs `predict_logit`, that this model guarantees."""
        return max(LOGIT_PARITY_TOLERANCE, self.config.parity_tolerance)

    @property
    def n_weights(self) -> int:
        """Trainable weights of the fitted network (normalisation buffers excluded)."""
        return int(sum(p.numel() for p in self._require_fitted().parameters()))

    def get_params(self) -> dict[str, Any]:
        """Flat hyperparameters for MLflow; `loss` is the classification loss (the preset's is unused)."""
        p = {
            k: (",".join(map(str, v)) if isinstance(v, tuple) else v)
            for k, v in self.config.model_dump().items()
        }
        p.pop("quantiles", None)  # regression-only fields
        for k in ("huber_delta", "direction_weight", "sharpe_k"):
            p.pop(k, None)
        return {
            "model_type": self.model_type,
            "n_features": self.n_features,
            **p,
            "loss": self.loss_name,
            "focal_gamma": self.focal_gamma,
            "pos_weight": getattr(self, "pos_weight_", self.pos_weight) or "n_neg/n_pos",
        }

    # -- training -----------------------------------------------------------------------------------
    def _loss(self, pos_weight: float) -> LossFn:
        if self.focal_gamma > 0:
            gamma = self.focal_gamma
            return lambda z, y: focal_loss(z, y, gamma, pos_weight)
        return lambda z, y: weighted_bce_loss(z, y, pos_weight)

    def _holdout(self, W: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """No validation windows given: hold out the newest 10 %, purged by T windows (so no held-out
        window shares a candle with a training one when W are consecutive windows of one series)."""
        n_val = max(1, len(W) // 10)
        cut = len(W) - n_val
        gap = self.sequence_length
        return W[: max(0, cut - gap)], y[: max(0, cut - gap)], W[cut:], y[cut:]

    def fit(
        self,
        W: np.ndarray,
        y: np.ndarray,
        *,
        W_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        callbacks: Sequence[Any] = (),
    ) -> Self:
        """Train on windows W float32 (N, T, F) and 0/1 labels y (N,).

        Early stopping (patience = the preset's) watches the loss on (W_val, y_val); without them the
        newest 10 % of W is held out, purged by T windows. The best-validation weights are restored
        (or the SWA average when the preset asks for SWA and it does better on validation).
        `callbacks`: extra Lightning callbacks, e.g. Optuna pruning on "val_loss".

        Raises:
            SequenceModelError: bad shapes, non-finite windows, labels not 0/1, a single class in the
                training labels, or too few windows for the preset's batch size.
        """
        cfg, T, F = self.config, self.sequence_length, self.n_features
        _check_windows(W, T, F, "fit")
        y = _check_labels(y, len(W), "fit")
        if (W_val is None) != (y_val is None):
            raise SequenceModelError("fit: give both W_val and y_val, or neither")
        if W_val is None:
            W, y, W_val, y_val = self._holdout(W, y)
        else:
            _check_windows(W_val, T, F, "fit(validation)")
            y_val = _check_labels(y_val, len(W_val), "fit(validation)")
        if len(W_val) < 1:
            raise SequenceModelError("fit: the validation windows are empty")
        if len(W) < max(1, cfg.batch_size // 4):
            raise SequenceModelError(
                f"fit: {len(W)} training windows (after any hold-out) are too few for batch_size={cfg.batch_size}"
            )
        n_pos = int(y.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or n_neg == 0:
            raise SequenceModelError(
                f"fit: the training labels hold a single class ({n_pos} positives, {n_neg} negatives); "
                "a classifier needs both"
            )
        pw = float(self.pos_weight) if self.pos_weight is not None else n_neg / n_pos
        prior = math.log(pw * n_pos / n_neg)  # the constant logit minimising the weighted loss
        x_mean, x_std = feature_scaling(W)

        def build() -> LogitNet:
            net = LogitNet(cfg, F)
            net.set_fitted(x_mean, x_std, pw, prior)
            return net

        as_col = lambda v: np.asarray(v, dtype=np.float32).reshape(-1, 1)  # noqa: E731
        result = train_network(
            build, cfg, W, as_col(y), W_val, as_col(y_val), loss_fn=self._loss(pw), callbacks=callbacks
        )
        self.net_ = result.net
        self.pos_weight_ = pw
        self.n_pos_ = n_pos
        self.n_train_ = len(W)
        self.best_epoch_ = result.best_epoch
        self.epochs_run_ = result.epochs_run
        self.val_history_ = result.val_history
        self.used_swa_ = result.used_swa
        return self

    # -- inference ----------------------------------------------------------------------------------
    def _require_fitted(self) -> LogitNet:
        if not hasattr(self, "net_"):
            raise SequenceModelError(f"{self.model_type} classifier is not fitted; call fit(W, y) first")
        return self.net_

    def predict_logit(self, W: np.ndarray) -> np.ndarray:
        """Eval-mode log-odds, float64 (N,): what the ONNX graph's "logit" computes."""
        net = self._require_fitted()
        _check_windows(W, self.sequence_length, self.n_features, "predict_logit")
        outs: list[np.ndarray] = []
        with torch_threads(self.config.num_threads), torch.inference_mode():
            for i in range(0, len(W), PREDICT_BATCH):
                xb = torch.from_numpy(np.ascontiguousarray(W[i : i + PREDICT_BATCH], dtype=np.float32))
                outs.append(net.logit(xb)[:, 0].numpy())
        return np.concatenate(outs).astype(np.float64) if outs else np.empty(0)

    def predict_proba(self, W: np.ndarray) -> np.ndarray:
        """sigmoid(logit), float64 (N,) (uncalibrated beyond the prior correction; see module docstring)."""
        z = self.predict_logit(W)
        return np.exp(-np.logaddexp(0.0, -z))

    def to_onnx(self, opset: int = DEFAULT_OPSET) -> bytes:
        """Self-contained ONNX: "features" float32 [N, T, F] → "logit" float32 [N, 1] (opset 15 default)."""
        import onnx
        from onnx.external_data_helper import uses_external_data

        from pipelines.models.sequence.onnx_io import export_module

        onnx_bytes = export_module(
            _LogitGraph(self._require_fitted()),
            self.sequence_length,
            self.n_features,
            opset,
            (OUTPUT_NAME,),
            self.config.num_threads,
        )
        model = onnx.load_model_from_string(onnx_bytes)
        external = [t.name for t in model.graph.initializer if uses_external_data(t)]
        if external:  # cannot happen with in-memory export; guarded because serving needs one file
            raise SequenceModelError(f"ONNX export stores {len(external)} tensors externally")
        return onnx_bytes
