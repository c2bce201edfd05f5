"""The Gated DeltaNet mixer (Qwen3-Next's linear-attention layers), and its core: the SSM branch of
hybrid heads (`hybrid: {ssm: gated_deltanet}`).

    in_proj(u) = [q k v | z | b | a]
    q, k, v = silu(causal_conv1d(q k v))             one short depthwise conv over all three
    q, k = L2-normalised per head; q / sqrt(K)
    beta = sigmoid(b);  g = -exp(A_log) softplus(a + dt_bias)        per value head
    o = gated delta rule(q, k, v, g, beta)            (`ops.delta_rule`)
    out = out_proj(RMSNorm_head(o) * silu(z))

Query/key heads may be fewer than value heads (`v_heads_per_qk`, Qwen3-Next: 16 and 32): each
q/k head then serves that many value heads. The decode state is the conv's last d_conv - 1 inputs
of q‖k‖v (transformers keeps d_conv, vLLM d_conv - 1, as here) and the memory S (Hv, K, V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig
from hymba_bench.model.context import Context

if TYPE_CHECKING:
    from hymba_bench.model.cache import LayerCache


@dataclass(frozen=True)
class GatedDeltaNetOptions:
    expand: int = 2  # value width Hv * V = expand * d_model
    head_dim: int = 64  # K = V per head
    v_heads_per_qk: int = 1  # value heads per query/key head (Qwen3-Next: 2)
    d_conv: int = 4
    chunk_size: int = 64
    norm_eps: float = field(default=1e-6)

    def v_heads(self, cfg: ModelConfig) -> int:
        return self.expand * cfg.d_model // self.head_dim

    def qk_heads(self, cfg: ModelConfig) -> int:
        return self.v_heads(cfg) // self.v_heads_per_qk

    def validate(self, cfg: ModelConfig) -> None:
        width = self.expand * cfg.d_model
        if width % self.head_dim:
            raise ConfigError(f"head_dim: must divide the value width expand * d_model = {width}, "
                              f"got {self.head_dim}")
        if self.v_heads(cfg) % self.v_heads_per_qk:
            raise ConfigError(f"v_heads_per_qk: must divide the {self.v_heads(cfg)} value heads, "
                              f"got {self.v_heads_per_qk}")


class DeltaRuleCore(nn.Module):
    """Everything of a Gated DeltaNet layer between in_proj and out_proj."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec | None = None) -> None:
        super().__init__()
        o: GatedDeltaNetOptions = cfg.options("gated_deltanet")
        self.opts = o
        self.hv, self.hk, self.dh = o.v_heads(cfg), o.qk_heads(cfg), o.head_dim
        self.key_dim, self.value_dim = self.hk * self.dh, self.hv * self.dh
        conv = 2 * self.key_dim + self.value_dim
        self.widths = [conv, self.value_dim, self.hv, self.hv]  # q k v, z, b, a
        self.in_width = sum(self.widths)
        self.conv1d = nn.Conv1d(conv, conv, o.d_conv, groups=conv, padding=o.d_conv - 1, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(self.hv))
        self.A_log = nn.Parameter(torch.empty(self.hv))
        self.norm = _NormWeight(self.dh)
        self.reset_mixer_parameters()

    @staticmethod
    def out_width(cfg: ModelConfig) -> int:
        o: GatedDeltaNetOptions = cfg.options("gated_deltanet")
        return o.v_heads(cfg) * o.head_dim

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        o: GatedDeltaNetOptions = cfg.options("gated_deltanet")
        conv = (2 * o.qk_heads(cfg) + o.v_heads(cfg)) * o.head_dim
        return {"conv": (batch, conv, o.d_conv - 1),
                "memory": (batch, o.v_heads(cfg), o.head_dim, o.head_dim)}

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        """Per sequence: conv (2 Hk dk + Hv dv) x (d_conv - 1), and Hv dv dk of memory."""
        o: GatedDeltaNetOptions = cfg.options("gated_deltanet")
        dv = dk = o.head_dim
        hv = o.expand * cfg.d_model // dv
        hk = hv // o.v_heads_per_qk
        return (2 * hk * dk + hv * dv) * (o.d_conv - 1) + hv * dv * dk

    @torch.no_grad()
    def reset_mixer_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """fla's GatedDeltaNet initialisation: A uniform in [0, 16], dt log-uniform in
        [dt_min, dt_max] through an inverse softplus."""
        self.A_log.copy_(torch.log(torch.empty(self.hv).uniform_(0.0, 16.0).clamp(min=1e-4)))
        dt = torch.exp(torch.rand(self.hv) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def branch(self, proj: Tensor, cache: LayerCache | None, decode: bool) -> Tensor:
        """proj (B, L, in_width), in_proj's output -> (B, L, Hv V), normed and gated."""
        o = self.opts
        qkv, z, b, a = proj.split(self.widths, dim=-1)
        weight = self.conv1d.weight.squeeze(1)
        batch, length = proj.shape[:2]
        if decode:
            assert cache is not None
            qkv = ops.causal_conv1d_update(qkv[:, 0], cache.state["conv"], weight, None, "silu")
            qkv = qkv[:, None]
        else:
            raw = qkv.transpose(1, 2)  # (B, C, L)
            qkv = ops.causal_conv1d(raw, weight, None, "silu").transpose(1, 2)
            if cache is not None:
                cache.state["conv"].copy_(ops.conv_state_from_prefix(raw, weight.shape[1]))
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = F.normalize(q.float().view(batch, length, self.hk, self.dh), dim=-1) * self.dh ** -0.5
        k = F.normalize(k.float().view(batch, length, self.hk, self.dh), dim=-1)
        if o.v_heads_per_qk > 1:  # each q/k head serves its group of value heads
            q = q.repeat_interleave(o.v_heads_per_qk, dim=2)
            k = k.repeat_interleave(o.v_heads_per_qk, dim=2)
        v = v.view(batch, length, self.hv, self.dh)
        beta = torch.sigmoid(b.float())  # (B, L, Hv)
        g = -torch.exp(self.A_log.float()) * F.softplus(a.float() + self.dt_bias.float())
        if decode:
            assert cache is not None
            out = ops.gated_delta_rule_update(cache.state["memory"], q[:, 0], k[:, 0], v[:, 0],
                                              g[:, 0], beta[:, 0])[:, None]
        else:
            out, last = ops.gated_delta_rule(q, k, v, g, beta, chunk_size=o.chunk_size)
            if cache is not None:
                cache.state["memory"].copy_(last)
        out = ops.gated_rms_norm(out, z.view(batch, length, self.hv, self.dh),
                                 self.norm.weight, o.norm_eps, self.dh, norm_before_gate=True)
        return out.reshape(batch, length, self.value_dim).to(proj.dtype)


class _NormWeight(nn.Module):
    """The per-head gated norm's weight, as `norm.weight` (fla's and transformers' name)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class GatedDeltaNet(DeltaRuleCore):
    """A pure Gated DeltaNet mixer: in_proj -> conv, gated delta rule, gated norm -> out_proj."""

    Options = GatedDeltaNetOptions
    Branch = DeltaRuleCore
    has_attention = False

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__(cfg, spec)
        self.spec = spec
        self.in_proj = nn.Linear(cfg.d_model, self.in_width, bias=False)
        self.out_proj = nn.Linear(self.value_dim, cfg.d_model, bias=False)

    def forward(self, u: Tensor, ctx: Context) -> Tensor:
        """u: (B, L, D) -> (B, L, D)."""
        return self.out_proj(self.branch(self.in_proj(u), ctx.state(self.spec.index), ctx.decode))
