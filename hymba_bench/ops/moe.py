"""Mixture-of-experts combine: each token's output is the gate-weighted sum of its top-k experts.

`moe_combine` gathers each expert's tokens and runs the expert once on them (the work is
k/E of a dense pass); `moe_combine_ref` runs every expert on every token and multiplies by a
dense gate matrix that is zero outside the top-k, the definition written out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Expert = Callable[[Tensor], Tensor]


def moe_combine(x: Tensor, weights: Tensor, chosen: Tensor, experts: Sequence[Expert]) -> Tensor:
    """x: (T, D); weights, chosen: (T, k) gate values and expert indices -> (T, D)."""
    out = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        token, slot = torch.nonzero(chosen == e, as_tuple=True)
        if token.numel():
            out.index_add_(0, token, expert(x[token]) * weights[token, slot, None].to(x.dtype))
    return out


def moe_combine_ref(x: Tensor, weights: Tensor, chosen: Tensor, experts: Sequence[Expert]) -> Tensor:
    gates = torch.zeros(x.shape[0], len(experts), dtype=x.dtype, device=x.device)  # (T, E)
    gates.scatter_add_(1, chosen, weights.to(x.dtype))
    every = torch.stack([expert(x) for expert in experts], dim=1)  # (T, E, D)
    return (gates[..., None] * every).sum(1)
