"""The exported network: normalise → encoder → head → un-scale, plus the uncertainty outputs.

`SequenceNet` is the whole graph that goes to ONNX, so the fitted preprocessing (feature mean/std
of the training fold, label RMS per horizon) lives in it as buffers: `(x - mean) / std` are the
first ops of the graph and `* y_scale` the last. Serving needs no normalisation code.

Uncertainty, decided once for all models (documented in the manifest's output meaning):
- "returns" is always the deterministic eval-mode prediction (== `predict`), so ONNX parity and
  the walk-forward metrics are about the same number.
- "confidence" in [0, 1) is 2·Φ(|μ|/σ) − 1 = erf(|μ| / (σ√2)): how much more likely the sign is
  right than wrong under N(μ, σ). σ comes from
  * TFT: the p10–p90 interval, σ = (p90 − p10) / (z90 − z10);
  * the others: last-layer MC dropout with K masks sampled ONCE (seeded) and frozen as constants,
    σ = std over the K passes. Random masks cannot be in a deterministic ONNX graph; frozen masks
    make the graph deterministic and exactly reproducible in PyTorch (parity holds for it too).
"""

from __future__ import annotations

import importlib
import math
from statistics import NormalDist

import torch
from torch import Tensor, nn

from pipelines.config import SequenceModelConfig


def build_encoder(cfg: SequenceModelConfig, n_features: int) -> nn.Module:
    """The architecture's encoder: normalised windows (B, T, F) → representation (B, d_model).

    Each model file (`lstm_attention.py`, `transformer.py`, `tft.py`, `mamba.py`) exposes
    `build_encoder(cfg, n_features)`; imported lazily so one architecture's import cost is paid only
    when it is used.
    """
    module = importlib.import_module(f"pipelines.models.sequence.{cfg.architecture}")
    return module.build_encoder(cfg, n_features)


class SequenceNet(nn.Module):
    """Raw windows (B, T, F) → scaled predictions; see `returns_and_confidence` for the export path."""

    def __init__(self, cfg: SequenceModelConfig, n_features: int, n_horizons: int) -> None:
        super().__init__()
        self.n_horizons = n_horizons
        self.n_quantiles = 3 if cfg.architecture == "tft" else 1
        d = cfg.d_model
        # Fitted preprocessing, set by `set_scaling` from the training fold only.
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_scale", torch.ones(n_horizons))
        self.encoder = build_encoder(cfg, n_features)
        self.head_in = nn.Linear(d, d)
        self.head_act = nn.GELU()
        self.mc_p = cfg.dropout if cfg.dropout > 0 else 0.1
        self.head_drop = nn.Dropout(self.mc_p)
        self.head_out = nn.Linear(d, n_horizons * self.n_quantiles)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        keep = (torch.rand(cfg.mc_samples, d, generator=gen) >= self.mc_p).float()
        # (K, d) inverted-dropout masks, frozen: deterministic MC dropout in the exported graph.
        self.register_buffer("mc_masks", keep / (1.0 - self.mc_p))
        lo, hi = NormalDist().inv_cdf(cfg.quantiles[0]), NormalDist().inv_cdf(cfg.quantiles[2])
        self.interval_z = hi - lo  # width of [q_lo, q_hi] in standard deviations

    def set_scaling(self, x_mean: Tensor, x_std: Tensor, y_scale: Tensor) -> None:
        """Install the training-fold statistics (float32 tensors of shape (F,), (F,), (H,))."""
        self.x_mean.copy_(x_mean)
        self.x_std.copy_(x_std)
        self.y_scale.copy_(y_scale)

    def _hidden(self, x: Tensor) -> Tensor:
        xn = (x - self.x_mean) / self.x_std  # (B, T, F): the first ops of the exported graph
        return self.head_act(self.head_in(self.encoder(xn)))  # (B, d)

    def _quantiles(self, raw: Tensor) -> Tensor:
        """(B, H*3) → monotone (B, H, 3): p50 free, p10/p90 = p50 ∓ softplus(·) (no crossing)."""
        r = raw.reshape(raw.shape[0], self.n_horizons, 3)
        mid = r[..., 0]
        lo = mid - nn.functional.softplus(r[..., 1])
        hi = mid + nn.functional.softplus(r[..., 2])
        return torch.stack([lo, mid, hi], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Scaled outputs for the loss: (B, H), or (B, H, 3) quantiles for TFT. Dropout per mode."""
        raw = self.head_out(self.head_drop(self._hidden(x)))
        return self._quantiles(raw) if self.n_quantiles == 3 else raw

    def returns_and_confidence(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Export path (eval mode): returns (B, H) in log-return units, confidence (B, H) in [0, 1)."""
        z = self._hidden(x)  # (B, d)
        if self.n_quantiles == 3:
            q = self._quantiles(self.head_out(z)) * self.y_scale.unsqueeze(-1)  # (B, H, 3)
            mu = q[..., 1]
            sigma = (q[..., 2] - q[..., 0]) / self.interval_z
        else:
            mu = self.head_out(z) * self.y_scale  # (B, H)
            zk = z.unsqueeze(1) * self.mc_masks  # (B, K, d)
            samples = self.head_out(zk) * self.y_scale  # (B, K, H)
            sigma = samples.std(dim=1)
        conf = torch.erf(mu.abs() / (sigma * math.sqrt(2.0) + 1e-12))
        return mu, conf


class OnnxGraph(nn.Module):
    """What torch.onnx.export traces: input "features" → outputs "returns", "confidence"."""

    def __init__(self, net: SequenceNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.returns_and_confidence(features)
