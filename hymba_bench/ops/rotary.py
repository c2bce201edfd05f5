"""Rotary position embedding with a hand-written backward, and its reference twin.

x: (..., L, H, d) heads in time-major order, cos, sin: (L, d) as transformers' Llama rotary
embedding builds them (angles repeated over both halves) -> x rotated by its positions, with the
half-split pairing (x_i, x_{i + d/2}) of Llama and the released Hymba, so their weights load as-is:

    rotary(x) = x * cos + rotate_half(x) * sin,    rotate_half([x1, x2]) = [-x2, x1]

Why a hand-written backward: a tiny model's training step rotates q and k in every layer, and
autograd through the formula records a node per product, sum and concatenation, each of them
broadcasting the tables over strided halves again in the backward. One node keeps the tables and
does each direction in four passes over whole rows: the transpose of rotate_half is
[y1, y2] -> [y2, -y1], so dx = g * cos + rotate_half^T(g * sin).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_ref(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    cos, sin = cos[:, None], sin[:, None]  # (L, 1, d): one angle per position, every head
    return x * cos + _rotate_half(x) * sin


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor,
                sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return torch.addcmul(x * cos, _rotate_half(x), sin)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        y1, y2 = (g * sin).chunk(2, dim=-1)
        return torch.cat((y2, -y1), dim=-1).add_(g * cos), None, None


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The tables' gradient is not computed (they are functions of the positions only)."""
    return _Rotary.apply(x, cos[:, None].to(x.dtype), sin[:, None].to(x.dtype))
