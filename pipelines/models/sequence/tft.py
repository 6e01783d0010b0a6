"""Temporal Fusion Transformer (004 seed), the parts that apply to windows of past observed inputs.

Variable selection network (per-step softmax weights over the F features, each feature embedded
separately) → LSTM encoder → gated skip + LayerNorm → interpretable multi-head attention (heads
share the value projection and are averaged, as in Lim et al. 2021) from the newest step →
gated skip → position-wise GRN → (B, d_model). The quantile head (p10/p50/p90, monotone by
construction) is the shared head in net.py; training uses the pinball loss.
Not included: static covariates and known-future inputs (the feature windows have neither).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipelines.config import SequenceModelConfig
from pipelines.models.sequence.spec import sequence_spec


class GLU(nn.Module):
    """Gated linear unit: the TFT's learned "how much of this path to let through"."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))


class GatedResidualNetwork(nn.Module):
    """GRN(x) = LayerNorm(skip(x) + GLU(dropout(W2 · ELU(W1 · x))))."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_hidden)
        self.drop = nn.Dropout(dropout)
        self.glu = GLU(d_hidden, d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(F.elu(self.fc1(x)))
        return self.norm(self.skip(x) + self.glu(self.drop(h)))


class VariableSelection(nn.Module):
    """(B, T, F) → (B, T, d): softmax-weighted sum of per-feature embeddings."""

    def __init__(self, n_features: int, d: int, dropout: float) -> None:
        super().__init__()
        self.emb_w = nn.Parameter(torch.randn(n_features, d) * 0.1)  # per-feature Linear(1, d)
        self.emb_b = nn.Parameter(torch.zeros(n_features, d))
        self.weights = GatedResidualNetwork(n_features, d, n_features, dropout)
        self.feature_grn = GatedResidualNetwork(d, d, d, dropout)  # shared across features

    def forward(self, x: Tensor) -> Tensor:
        emb = self.feature_grn(x.unsqueeze(-1) * self.emb_w + self.emb_b)  # (B, T, F, d)
        w = torch.softmax(self.weights(x), dim=-1)  # (B, T, F)
        return (w.unsqueeze(-1) * emb).sum(dim=2)  # (B, T, d)


class InterpretableAttention(nn.Module):
    """Newest step (query) over all steps; per-head q/k, one shared v, heads averaged."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d // n_heads
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)
        self.v = nn.Linear(d, self.d_head)
        self.out = nn.Linear(self.d_head, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        B, T, D = h.shape
        q = self.q(h[:, -1:]).reshape(B, 1, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, 1, dh)
        k = self.k(h).reshape(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, T, dh)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)  # (B, h, 1, T)
        att = self.drop(att.mean(dim=1))  # (B, 1, T): one interpretable weight per past step
        return self.out(att @ self.v(h)).squeeze(1)  # (B, d)


class TFTEncoder(nn.Module):
    def __init__(self, cfg: SequenceModelConfig, n_features: int) -> None:
        super().__init__()
        d, p = cfg.d_model, cfg.dropout
        self.select = VariableSelection(n_features, d, p)
        self.lstm = nn.LSTM(
            d, d, num_layers=cfg.n_layers, batch_first=True, dropout=p if cfg.n_layers > 1 else 0.0
        )
        self.lstm_gate, self.lstm_norm = GLU(d, d), nn.LayerNorm(d)
        self.attn = InterpretableAttention(d, cfg.n_heads, p)
        self.attn_gate, self.attn_norm = GLU(d, d), nn.LayerNorm(d)
        self.ff = GatedResidualNetwork(d, d, d, p)
        self.drop = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        v = self.select(x)  # (B, T, d)
        h, _ = self.lstm(v)
        h = self.lstm_norm(v + self.lstm_gate(self.drop(h)))  # (B, T, d)
        a = self.attn(h)  # (B, d)
        z = self.attn_norm(h[:, -1] + self.attn_gate(self.drop(a)))
        return self.ff(z)  # (B, d)


def build_encoder(cfg: SequenceModelConfig, n_features: int) -> nn.Module:
    return TFTEncoder(cfg, n_features)


SPEC = sequence_spec("tft", ("l2", "quantile"))  # pinball loss over p10/p50/p90: serves the median
