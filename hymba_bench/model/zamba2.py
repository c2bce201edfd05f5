"""Zamba2's hybrid layer: a shared attention+MLP block feeding a Mamba-2 mixer.

    t = MLP(RMSNorm(attention(RMSNorm(x ‖ e))))      the shared block; e: the token embeddings
    out = Mamba-2(RMSNorm(x + linear(t)))             the layer adds out to x

Zamba2 (Glorioso et al., 2024; transformers' `Zamba2HybridLayer`) applies a few blocks along the
depth, in turn (`mem_blocks`): one set of attention and MLP weights serves several layers, each
application with its own low-rank adapters on q, k, v and on the MLP's gate and up projections,
its own `linear`, its own Mamba-2 mixer and its own K/V. The block reads the residual stream
concatenated with the model's input embeddings (width 2 d_model), its attention scores are
scaled by (d_qk / 2)^-1/2, and its output enters the Mamba-2 layer's input, not the stream: the
mixer takes the stream un-normed (`takes_stream`) and owns the Mamba-2 layer's norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig
from hymba_bench.model.attention import attend, split_heads, time_major_heads
from hymba_bench.model.context import Context
from hymba_bench.model.layers import RMSNorm, Rotary
from hymba_bench.model.mamba2 import Mamba2

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"gelu": F.gelu, "silu": F.silu}


@dataclass(frozen=True)
class Zamba2Options:
    mem_blocks: int = 1  # shared blocks, applied in turn by the zamba2 layers (num_mem_blocks)
    adapter_rank: int = field(default=128, metadata={"min": 0})  # the adapters' rank; 0: none
    attention_adapters: bool = True  # adapters on q, k, v too (use_shared_attention_adapter)
    activation: str = field(default="gelu", metadata={"choices": tuple(_ACTIVATIONS)})

    def validate(self, cfg: ModelConfig) -> None:
        if self.attention_adapters and not self.adapter_rank:
            raise ConfigError("attention_adapters: needs adapter_rank > 0")


def _adapter(d_in: int, rank: int, d_out: int) -> nn.Sequential:
    """A low-rank adapter, transformers' names: `0` down to the rank, `1` back up."""
    return nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))


class SharedBlock(nn.Module):
    """The weights every application of one block shares."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        d2 = 2 * cfg.d_model
        self.input_layernorm = RMSNorm(d2, cfg.norm_eps)
        self.q_proj = nn.Linear(d2, cfg.n_heads * cfg.d_qk, bias=False)
        self.k_proj = nn.Linear(d2, spec.n_kv_heads * cfg.d_qk, bias=False)
        self.v_proj = nn.Linear(d2, spec.n_kv_heads * cfg.d_v, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_v, cfg.d_model, bias=False)
        self.pre_ff_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.d_model, bias=False)


class Zamba2Hybrid(nn.Module):
    Options = Zamba2Options
    has_attention = True
    takes_stream = True  # the layer hands it x itself: its norms sit inside

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        if not spec.owns_kv:
            raise ConfigError(f"layer {spec.index}: a zamba2 layer cannot share another layer's "
                              "K/V (kv_share)")
        o: Zamba2Options = cfg.options("zamba2")
        self.cfg, self.spec = cfg, spec
        self.act = _ACTIVATIONS[o.activation]
        self.shared = SharedBlock(cfg, spec)
        d2, rank = 2 * cfg.d_model, o.adapter_rank
        self.q_adapter = self.k_adapter = self.v_adapter = self.gate_up_adapter = None
        if o.attention_adapters:
            self.q_adapter = _adapter(d2, rank, self.shared.q_proj.out_features)
            self.k_adapter = _adapter(d2, rank, self.shared.k_proj.out_features)
            self.v_adapter = _adapter(d2, rank, self.shared.v_proj.out_features)
        if rank:
            self.gate_up_adapter = _adapter(cfg.d_model, rank, 2 * cfg.intermediate_size)
        self.linear = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)  # the Mamba-2 layer's input norm
        self.mamba = Mamba2(cfg, spec)
        self.rotary = Rotary(cfg.d_qk, cfg.rope_theta, cfg.rope_scaling, enabled=cfg.rope)
        self.q_scale = math.sqrt(2.0)  # scores scaled by (d_qk / 2)^-1/2, not d_qk^-1/2

    @staticmethod
    def tied_layers(cfg: ModelConfig, indices: list[int]) -> dict[int, int]:
        """The j-th zamba2 layer applies block j % mem_blocks, whose weights the first of its
        applications holds: {layer: the layer whose block it applies}."""
        blocks = cfg.options("zamba2").mem_blocks
        return {i: indices[j % blocks] for j, i in enumerate(indices) if j >= blocks}

    def tie_to(self, source: Zamba2Hybrid) -> None:
        self.shared = source.shared

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        """The Mamba-2 mixer's state (the block's K/V are the cache's, by the layer plan)."""
        return Mamba2.state_shapes(cfg, spec, batch)

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        return Mamba2.state_elements(cfg, spec)

    def _block(self, x: Tensor, ctx: Context) -> Tensor:
        """The shared block with this application's adapters: (B, L, D) -> (B, L, D)."""
        cfg, s = self.cfg, self.shared
        assert ctx.embeddings is not None
        a = s.input_layernorm(torch.cat([x, ctx.embeddings], dim=-1))  # (B, L, 2D)
        q, k, v = s.q_proj(a), s.k_proj(a), s.v_proj(a)
        if self.q_adapter is not None:
            assert self.k_adapter is not None and self.v_adapter is not None
            q, k, v = q + self.q_adapter(a), k + self.k_adapter(a), v + self.v_adapter(a)
        q = self.rotary(time_major_heads(q * self.q_scale, cfg.n_heads), ctx).transpose(1, 2)
        kh = self.rotary(time_major_heads(k, self.spec.n_kv_heads), ctx).transpose(1, 2)
        attn = attend(q, kh, split_heads(v, self.spec.n_kv_heads), self.spec, cfg.meta_tokens, ctx)
        t = s.pre_ff_layernorm(s.o_proj(attn))
        gate_up = s.gate_up_proj(t)
        if self.gate_up_adapter is not None:
            gate_up = gate_up + self.gate_up_adapter(t)
        gate, up = gate_up.chunk(2, dim=-1)
        return s.down_proj(self.act(gate) * up)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        """x: the residual stream (B, L, D) -> what the layer adds to it (B, L, D)."""
        return self.mamba(self.norm(x + self.linear(self._block(x, ctx))), ctx)
