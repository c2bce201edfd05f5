"""Mixture-of-experts FFN: a linear router, softmax over experts, the top-k experts per token.

Jamba uses the top-k softmax probabilities as they are; Mixtral, Granite-4.0 and Qwen3-Next
renormalise them over the k (`normalize`). Granite and Qwen3-Next also send every token through a
shared expert, a SwiGLU added to the routed mixture (Qwen3-Next scales it by a sigmoid gate).
In training, `aux_loss` holds the Switch-Transformer load-balancing term of the last forward
pass, E * sum_e f_e P_e (f_e: share of routed slots, P_e: mean router probability), which the
trainer adds with weight `moe_aux_loss` so that experts are not left idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.model.layers import SwiGLU

if TYPE_CHECKING:
    from hymba_bench.ops.moe import Expert


class MoE(nn.Module):
    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int,
                 normalize: bool = False, shared: int = 0, shared_gate: bool = False) -> None:
        super().__init__()
        self.top_k, self.normalize = top_k, normalize
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, hidden) for _ in range(n_experts))
        self.shared_expert = SwiGLU(d_model, shared) if shared else None
        self.shared_expert_gate = nn.Linear(d_model, 1, bias=False) if shared_gate else None
        self.aux_loss: Tensor | None = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (T, D) -> top-k weights (T, k), expert indices (T, k), all probabilities (T, E)."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights, chosen, probs

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        flat = x.reshape(-1, d)  # (T, D)
        weights, chosen, probs = self.route(flat)
        if self.training:
            n_experts = probs.shape[-1]
            share = F.one_hot(chosen, n_experts).float().sum(1).mean(0) / self.top_k  # (E,)
            self.aux_loss = n_experts * (share * probs.mean(0)).sum()
        # A decode step needs static shapes (compiled or captured); the gathered form's per-expert
        # token lists are data-dependent, so one-token steps run every expert on every row.
        combine = ops.moe_combine_ref if length == 1 else ops.moe_combine
        out = combine(flat, weights, chosen, cast("Sequence[Expert]", self.experts))  # (T, D)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared
        return out.view(b, length, d)
