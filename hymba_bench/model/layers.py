"""Small shared layers: RMSNorm, rotary embeddings, SwiGLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.model.context import Context


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class Rotary(nn.Module):
    """RoPE with optional NTK-aware base scaling (theta * s^(d/(d-2))) for longer contexts. The
    cos/sin tables are built once per forward pass (every layer's are the same: memoized in the
    Context) and applied by `ops.rotary`."""

    inv_freq: Tensor  # a buffer: (d/2,) angular frequencies

    def __init__(self, dim: int, theta: float = 10000.0, scaling: float = 1.0,
                 enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled  # False: no positional encoding (Jamba relies on its Mamba layers)
        base = theta * scaling ** (dim / (dim - 2)) if scaling != 1.0 else theta
        self.key = ("rotary", dim, base)
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (L,) -> cos, sin (L, d), each angle repeated over both halves."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # (L, d/2)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        """x: (B, L, heads, d) -> x rotated by its absolute positions `ctx.positions`; where d is
        wider than the table's dim (partial rotary), its first dim channels, the rest as they are."""
        if not self.enabled:
            return x
        if self.key not in ctx.memo:
            ctx.memo[self.key] = self.tables(ctx.positions)
        dim = self.inv_freq.shape[0] * 2
        if x.shape[-1] > dim:
            return torch.cat((ops.rotary(x[..., :dim], *ctx.memo[self.key]), x[..., dim:]), -1)
        return ops.rotary(x, *ctx.memo[self.key])


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
