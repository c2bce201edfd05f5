"""Grouped-query attention over fresh, cached or another layer's K/V.

`attend` is shared by plain attention layers and the attention heads of hybrid layers. K/V
producers publish what they attend over in `ctx.shared` (keyed by layer index) so that consumer
layers (`kv: shared:<i>`) reuse it in the same forward pass, with or without a cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig
from hymba_bench.design.masks import visible
from hymba_bench.model.context import Context
from hymba_bench.model.layers import RMSNorm, Rotary


def time_major_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads*d) -> (B, L, heads, d), a view: the layout rotary embeddings take."""
    b, length, _ = x.shape
    return x.view(b, length, heads, -1)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads*d) -> (B, heads, L, d), a view: the layout attention takes."""
    return time_major_heads(x, heads).transpose(1, 2)


def attend(q: Tensor, k: Tensor | None, v: Tensor | None, spec: LayerSpec, n_meta: int,
           ctx: Context) -> Tensor:
    """q: (B, Hq, L, d_qk), k/v: (B, Hkv, L, d) rotated, None for consumers -> (B, L, Hq*d_v)."""
    length = q.shape[2]
    positions = ctx.positions
    if spec.owns_kv:
        assert k is not None and v is not None
        k_pos = positions
        if ctx.decode:  # the cache writes the new token; attend over its whole buffer, masked
            assert ctx.cache is not None
            k, v, k_pos = ctx.cache.update_kv(spec, k, v)
        elif ctx.cache is not None:
            ctx.cache.write_prefill(spec, k, v)
        ctx.shared[spec.index] = (k, v, k_pos)
    else:
        k, v, k_pos = ctx.shared[spec.kv_source]  # type: ignore[index]
    if ctx.decode:
        out = ops.attention(q, k, v, visible(positions, k_pos, spec.window, n_meta))
    elif spec.attention == "sliding":  # fresh sequence, local attention
        assert spec.window is not None
        out = ops.sliding_attention(q, k, v, positions, spec.window, n_meta)
    else:  # fresh sequence, global: the mask is exactly causal
        out = ops.attention(q, k, v, causal=True)
    b = out.shape[0]
    return out.transpose(1, 2).reshape(b, length, -1)


@dataclass(frozen=True)
class AttentionOptions:
    # a sigmoid gate per head and channel on the output, from a second half of q_proj
    # (Qwen3-Next's full-attention layers: q_proj gives [q_h, gate_h] per head)
    output_gate: bool = False
    # biases on the query, key and value projections (Qwen2's layers)
    qkv_bias: bool = False
    # the channels of each head that rotary positions turn, the first ones (partial rotary:
    # Bamba's half, Qwen3-Next's quarter); null: all d_qk
    rope_dim: int | None = None
    # an RMSNorm over each head's channels of q and of k, before rotary (Qwen3-Next's, OLMo's)
    qk_norm: bool = False

    def validate(self, cfg: ModelConfig) -> None:
        if self.rope_dim is not None and (self.rope_dim % 2 or self.rope_dim > cfg.d_qk):
            raise ConfigError(f"rope_dim: expected an even number of channels up to d_qk = "
                              f"{cfg.d_qk}, got {self.rope_dim}")


class Attention(nn.Module):
    """A plain attention layer (Llama naming: q_proj, k_proj, v_proj, o_proj), optionally with an
    output gate (`attention: {output_gate: true}`)."""

    Options = AttentionOptions
    has_attention = True

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.cfg = cfg
        opts = cfg.options("attention")
        self.gated, bias = opts.output_gate, opts.qkv_bias
        gate = cfg.d_v if self.gated else 0
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * (cfg.d_qk + gate), bias=bias)
        if spec.owns_kv:  # KV consumers have no K/V projection at all
            self.k_proj = nn.Linear(cfg.d_model, spec.n_kv_heads * cfg.d_qk, bias=bias)
            self.v_proj = nn.Linear(cfg.d_model, spec.n_kv_heads * cfg.d_v, bias=bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_v, cfg.d_model, bias=False)
        self.rotary = Rotary(opts.rope_dim or cfg.d_qk, cfg.rope_theta, cfg.rope_scaling,
                             enabled=cfg.rope)
        if opts.qk_norm:
            self.q_norm = RMSNorm(cfg.d_qk, cfg.norm_eps)
            if spec.owns_kv:
                self.k_norm = RMSNorm(cfg.d_qk, cfg.norm_eps)
        self.qk_norm = opts.qk_norm

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        """No recurrent state: K/V slots follow the layer plan (own, shared, ring) and are the
        cache's own (`InferenceCache`), since a consumer layer reads its producer's."""
        return {}

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        return 0

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        q = time_major_heads(self.q_proj(x), self.cfg.n_heads)  # (B, L, H, d_qk [+ d_v])
        gate = None
        if self.gated:
            q, gate = q.split([self.cfg.d_qk, self.cfg.d_v], dim=-1)
            gate = gate.reshape(*x.shape[:2], -1)  # (B, L, H d_v)
        if self.qk_norm:
            q = self.q_norm(q)
        q = self.rotary(q, ctx).transpose(1, 2)
        k = v = None
        if self.spec.owns_kv:
            k = time_major_heads(self.k_proj(x), self.spec.n_kv_heads)
            if self.qk_norm:
                k = self.k_norm(k)
            k = self.rotary(k, ctx).transpose(1, 2)
            v = split_heads(self.v_proj(x), self.spec.n_kv_heads)
        out = attend(q, k, v, self.spec, self.cfg.meta_tokens, ctx)  # (B, L, H d_v)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        return self.o_proj(out)


def qkv_widths(cfg: ModelConfig, spec: LayerSpec) -> tuple[int, int, int]:
    kv = spec.owns_kv
    return (cfg.n_heads * cfg.d_qk,
            spec.n_kv_heads * cfg.d_qk if kv else 0,
            spec.n_kv_heads * cfg.d_v if kv else 0)


