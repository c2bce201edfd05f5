"""RMSNorm with a hand-written backward (torch ops, and the compiled CPU kernel), and its
reference twin.

x: (..., d), weight: (d,) -> x / sqrt(mean(x^2) + eps) * weight, computed in float32 and returned
in x's dtype.

Why a hand-written backward: a tiny model's training step runs ~60 of these per forward, and
autograd through the formula records seven nodes each (pow, mean, add, rsqrt and three products);
one node that keeps the normalised x and 1/rms does the backward in eight passes instead of about
fifteen. The compiled kernel does each direction in one pass over the rows: a tiny B training
step 259 -> 243 ms against this torch path (`python scripts/train_step_ab.py b-parallel --torch
rms_norm`, 2-core CPU, 1 thread, arms interleaved).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hymba_bench.ops import cpu_kernel


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor,
                eps: float) -> Tensor:
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)  # (..., 1)
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx: Any, dy: Tensor
                 ) -> tuple[Tensor, Tensor, None]:
        xhat, rstd, weight = ctx.saved_tensors
        g = dy * weight
        # d/dx of x * rstd: rstd (g - xhat mean(g xhat)), as mean(x^2) depends on every x
        dx = (g - xhat * (g * xhat).mean(-1, keepdim=True)) * rstd
        dw = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        return dx, dw, None


def rms_norm_torch(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _RMSNorm.apply(x.float(), weight.float(), eps).to(x.dtype)


def rms_norm_cpu(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The compiled CPU kernel (`csrc/rms_norm.cpp`), in float32: one pass each way."""
    return cpu_kernel.RMSNormCPU.apply(x.float().contiguous(), weight.float().contiguous(),
                                       eps).to(x.dtype)


def gated_rms_norm(x: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int,
                   norm_before_gate: bool = False) -> Tensor:
    """The gated output norm over each group of `group_size` channels; x, z: (..., d), weight
    (d,); float32 inside.

    Mamba-2 gates first, RMSNorm(x * silu(z)) * weight (mamba-ssm's `RMSNormGated`, groups of
    B/C); the gated delta rule normalises first, RMSNorm(x) * weight * silu(z) (fla's
    `FusedRMSNormGated`, Qwen3-Next's `RMSNormGated`; a group is a head).
    """
    shape = x.shape
    gate = F.silu(z.float())
    g = x.float() if norm_before_gate else x.float() * gate
    g = g.view(*shape[:-1], shape[-1] // group_size, group_size)
    g = (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)).view(shape) * weight.float()
    return (g * gate if norm_before_gate else g).to(x.dtype)
