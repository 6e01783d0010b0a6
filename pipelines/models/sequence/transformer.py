"""Transformer encoder (000 seed: 6 layers, 8 heads, width 256, feed-forward x4, dropout 0.1, T=60).

Pre-norm blocks written out (nanoGPT style) rather than nn.TransformerEncoder, whose inference
fast path is a fused kernel that exports poorly; attention is plain matmul + softmax so the graph
uses only standard ONNX ops. Learned positional embedding; the newest step's output is the summary.

Inference (eval mode, hence the ONNX export) runs the last block for the newest step only: its keys
and values still come from every step, but its query, output projection and feed-forward are computed
for one row instead of T, which is all the summary reads (the same numbers up to float rounding;
~14 % fewer multiply-adds for seed000, ~40 % for the 2-layer presets). Training runs every block in
full, so training itself (dropout masks included) is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipelines.config import SequenceModelConfig
from pipelines.models.sequence.spec import sequence_spec


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, T, D)
        q, k, v = (
            t.reshape(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, h, T, dh)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)  # (B, h, T, T)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(B, T, D)
        return self.out(y)

    def forward_last(self, x: Tensor) -> Tensor:
        """Attention output for the newest step only, (B, 1, D): query from x[:, -1], keys/values from all."""
        B, T, D = x.shape
        w, b = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,): rows [q | k | v]
        q = nn.functional.linear(x[:, -1:], w[:D], b[:D])  # (B, 1, D)
        k, v = nn.functional.linear(x, w[D:], b[D:]).split(D, dim=-1)  # 2 x (B, T, D)
        q = q.reshape(B, 1, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, 1, dh)
        k, v = (t.reshape(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)  # (B, h, 1, T)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(B, 1, D)
        return self.out(y)


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiHeadSelfAttention(d, n_heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ff(self.ln2(x)))

    def forward_last(self, x: Tensor) -> Tensor:
        """The block's output at the newest step only, (B, 1, D) (== forward(x)[:, -1:])."""
        y = x[:, -1:] + self.drop(self.attn.forward_last(self.ln1(x)))
        return y + self.drop(self.ff(self.ln2(y)))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: SequenceModelConfig, n_features: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.inp = nn.Linear(n_features, d)
        self.pos = nn.Parameter(torch.randn(cfg.sequence_length, d) * 0.02)  # (T, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(d, cfg.n_heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(d)
        # Inference runs the last block for the newest step only (module docstring); False = every
        # block in full, as exported before (benchmarks/bench_deep_inference.py compares the two).
        self.newest_only = True

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(self.inp(x) + self.pos)  # (B, T, d)
        if self.training or not self.newest_only:
            for block in self.blocks:
                h = block(h)
            return self.norm(h[:, -1])  # (B, d)
        for block in self.blocks[:-1]:
            h = block(h)
        return self.norm(self.blocks[-1].forward_last(h)[:, -1])  # (B, d): the newest step only


def build_encoder(cfg: SequenceModelConfig, n_features: int) -> nn.Module:
    return TransformerEncoder(cfg, n_features)


SPEC = sequence_spec("transformer")
