"""Training losses for the sequence models, chosen by `SequenceModelConfig.loss`.

All losses see labels already divided by the training-fold RMS per horizon (sign preserved, so
"direction" and "sharpe" are unchanged by the scaling): predictions and targets are O(1).
Point losses take `pred`, `y` of shape (B, H); the quantile loss takes `pred` (B, H, Q).
The binary losses of `classifier.SequenceClassifier` (`weighted_bce_loss`, `focal_loss`) take
logits and 0/1 labels of shape (B, 1); they are not selected by `cfg.loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.config import SequenceModelConfig

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse_loss(pred: Tensor, y: Tensor) -> Tensor:
    """Mean squared error over batch and horizons."""
    return F.mse_loss(pred, y)


def huber_loss(pred: Tensor, y: Tensor, delta: float = 1.0) -> Tensor:
    """Huber: quadratic within `delta` label-stds, linear outside (robust to fat-tailed minutes)."""
    return F.huber_loss(pred, y, delta=delta)


def direction_loss(pred: Tensor, y: Tensor, weight: float = 0.5) -> Tensor:
    """MSE + weight * mean(softplus(-pred * y)).

    The softplus term is a smooth hinge on sign disagreement: ~0 when pred and y agree strongly,
    grows linearly with |pred * y| when they disagree, so wrong-sign predictions cost more than
    right-sign predictions of the same squared error.
    """
    return F.mse_loss(pred, y) + weight * F.softplus(-pred * y).mean()


def sharpe_loss(pred: Tensor, y: Tensor, k: float = 5.0, eps: float = 1e-6) -> Tensor:
    """Negative Sharpe ratio of the position tanh(k * pred) held over each label, per horizon.

    The batch is the sample: pnl (B, H) = tanh(k * pred) * y; loss = -mean_H(mean_B(pnl) / std_B(pnl)).
    The prediction's scale is then arbitrary (only tanh(k * pred) matters): with this loss the
    exported "returns" are positions in return units' sign, not calibrated return forecasts.
    """
    pnl = torch.tanh(k * pred) * y
    sharpe = pnl.mean(dim=0) / (pnl.std(dim=0) + eps)
    return -sharpe.mean()


def quantile_loss(pred: Tensor, y: Tensor, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> Tensor:
    """Pinball loss summed over quantiles, averaged over batch and horizons.

    Args:
        pred: (B, H, Q) predicted quantiles, Q = len(quantiles).
        y: (B, H) labels.
    """
    q = torch.tensor(quantiles, dtype=pred.dtype, device=pred.device)  # (Q,)
    err = y.unsqueeze(-1) - pred  # (B, H, Q)
    return torch.maximum(q * err, (q - 1) * err).sum(-1).mean()


def weighted_bce_loss(logit: Tensor, y: Tensor, pos_weight: float = 1.0) -> Tensor:
    """Binary cross-entropy on logits (B, 1) against 0/1 labels (B, 1), positives weighted `pos_weight`.

    -mean[pos_weight * y * log σ(z) + (1 - y) * log(1 - σ(z))], computed stably from the logit.
    """
    w = torch.tensor(pos_weight, dtype=logit.dtype, device=logit.device)
    return F.binary_cross_entropy_with_logits(logit, y, pos_weight=w)


def focal_loss(logit: Tensor, y: Tensor, gamma: float = 2.0, pos_weight: float = 1.0) -> Tensor:
    """Focal loss (Lin et al. 2017) on logits (B, 1) against 0/1 labels (B, 1).

    -mean[pos_weight * y * (1 - p)^γ log p + (1 - y) * p^γ log(1 - p)], p = σ(z): well-classified
    windows (most of the negatives) are down-weighted by (1 - p_true)^γ; γ = 0 is `weighted_bce_loss`.
    `pos_weight` plays the role of the paper's α (class balance), as a ratio instead of α / (1 - α).
    """
    log_p, log_q = F.logsigmoid(logit), F.logsigmoid(-logit)  # log p, log(1 - p), stable
    p = torch.sigmoid(logit)
    pos = pos_weight * y * (1.0 - p).pow(gamma) * log_p
    neg = (1.0 - y) * p.pow(gamma) * log_q
    return -(pos + neg).mean()


def make_loss(cfg: SequenceModelConfig) -> LossFn:
    """The loss named by `cfg.loss`, with its parameters bound from the config."""
    if cfg.loss == "mse":
        return mse_loss
    if cfg.loss == "huber":
        return lambda p, y: huber_loss(p, y, cfg.huber_delta)
    if cfg.loss == "direction":
        return lambda p, y: direction_loss(p, y, cfg.direction_weight)
    if cfg.loss == "sharpe":
        return lambda p, y: sharpe_loss(p, y, cfg.sharpe_k)
    return lambda p, y: quantile_loss(p, y, cfg.quantiles)
