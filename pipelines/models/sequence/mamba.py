"""Mamba: a selective state-space model (002 seed) in plain PyTorch, so it trains on CPU and exports.

Per block: x → LayerNorm → in_proj → (u, z); u → causal depthwise conv → SiLU; input-dependent
Δ, B, C from u ("selective"); scan h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t, y_t = C_t · h_t + D u_t;
y ⊙ SiLU(z) → out_proj, residual. The scan is a Python loop over the fixed T (60): the ONNX
exporter unrolls it into T small steps of standard ops. A closed form with cumsum/exp would
overflow float32 (exp of -Σ Δ A reaches e^90 over 60 steps), so the loop is also the stable choice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipelines.config import SequenceModelConfig
from pipelines.models.sequence.spec import sequence_spec


def selective_scan(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, Dp: Tensor) -> Tensor:
    """y (B, T, E) from u, dt (B, T, E), A (E, N), Bm, Cm (B, T, N), Dp (E,)."""
    dA = torch.exp(dt.unsqueeze(-1) * A).unbind(1)  # T x (B, E, N) decay per step, in (0, 1)
    # unbind once instead of indexing [:, t] per step: the backward of T separate slices would
    # zero-fill a full (B, T, E, N) gradient per step (O(T^2) memory traffic); unbind's is one stack.
    dBu = (dt.unsqueeze(-1) * Bm.unsqueeze(2) * u.unsqueeze(-1)).unbind(1)  # T x (B, E, N)
    C = Cm.unsqueeze(2).unbind(1)  # T x (B, 1, N)
    h = dBu[0]  # (B, E, N): h_{-1} = 0
    ys = [(h * C[0]).sum(-1)]
    for t in range(1, len(dBu)):
        h = dA[t] * h + dBu[t]
        ys.append((h * C[t]).sum(-1))  # (B, E)
    return torch.stack(ys, dim=1) + u * Dp  # (B, T, E)


class MambaBlock(nn.Module):
    def __init__(self, d: int, d_state: int, d_conv: int, expand: int, dropout: float) -> None:
        super().__init__()
        e = expand * d
        self.dt_rank = math.ceil(d / 16)
        self.d_state, self.d_conv = d_state, d_conv
        self.norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, 2 * e)
        self.conv = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e)
        # Δ starts in [1e-3, 1e-1] (Mamba's init): softplus^-1 of a log-uniform sample.
        dt0 = torch.exp(torch.rand(e) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt0 + torch.log(-torch.expm1(-dt0)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(e, 1)
        )  # (E, N)
        self.Dp = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        u, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, T, E) each
        u = self.conv(u.transpose(1, 2))  # (B, E, T + d_conv - 1): left context only after the slice
        if self.d_conv > 1:
            u = u[..., : -(self.d_conv - 1)]
        u = F.silu(u.transpose(1, 2))  # (B, T, E)
        dt, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # (B, T, E) > 0
        y = selective_scan(u, dt, -torch.exp(self.A_log), Bm, Cm, self.Dp)
        return x + self.drop(self.out_proj(y * F.silu(z)))


class MambaEncoder(nn.Module):
    def __init__(self, cfg: SequenceModelConfig, n_features: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.inp = nn.Linear(n_features, d)
        self.blocks = nn.ModuleList(
            MambaBlock(d, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)  # (B, T, d)
        for block in self.blocks:
            h = block(h)
        return self.norm(h[:, -1])  # (B, d): the state after the newest candle


def build_encoder(cfg: SequenceModelConfig, n_features: int) -> nn.Module:
    return MambaEncoder(cfg, n_features)


SPEC = sequence_spec("mamba")
