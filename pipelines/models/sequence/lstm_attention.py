"""Multi-layer LSTM with attention (004 seed): the newest step attends over the whole window.

(B, T, F) → Linear → LSTM (n_layers, optionally bidirectional: the window is all past data) →
multi-head attention with the last step as query → residual + LayerNorm → (B, d_model).
"""

from __future__ import annotations

from torch import Tensor, nn

from pipelines.config import SequenceModelConfig
from pipelines.models.sequence.spec import sequence_spec


class LSTMAttentionEncoder(nn.Module):
    def __init__(self, cfg: SequenceModelConfig, n_features: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.inp = nn.Linear(n_features, d)
        self.lstm = nn.LSTM(
            d,
            d,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
            bidirectional=cfg.bidirectional,
        )
        self.proj = nn.Linear(d * (2 if cfg.bidirectional else 1), d)
        self.attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(self.inp(x))  # (B, T, d or 2d)
        h = self.proj(h)  # (B, T, d)
        q = h[:, -1:, :]  # (B, 1, d): the newest step asks which past steps matter
        ctx, _ = self.attn(q, h, h, need_weights=False)  # (B, 1, d)
        return self.norm(q + ctx).squeeze(1)  # (B, d)


def build_encoder(cfg: SequenceModelConfig, n_features: int) -> nn.Module:
    return LSTMAttentionEncoder(cfg, n_features)


SPEC = sequence_spec("lstm_attention")
