"""The Mamba-2 mixer (SSD), and its core: the SSM branch of hybrid heads (`hybrid: {ssm: mamba2}`).

    in_proj(u) = [z | x B C | dt]                       mamba-ssm's order and names
    x, B, C = silu(causal_conv1d(x B C))                 one depthwise conv over all three
    y = SSD(x, softplus(dt + dt_bias), A = -exp(A_log), B, C) + D x      (`ops.ssd`)
    out = out_proj(RMSNorm(y * silu(z)))                 gated, per group of B/C (`norm`)

A head's decay is one scalar (Mamba-1's is per channel and state), which is what lets a chunk be
computed as matmuls. The decode state is the conv's last d_conv - 1 inputs of x‖B‖C (mamba-ssm and
transformers keep d_conv; the extra column is never read) and the SSM state (H, P, N), in the
cache's dtype.
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
class Mamba2Options:
    d_state: int = 64  # N
    d_conv: int = 4
    expand: int = 2  # d_ssm = expand * d_model
    head_dim: int = 64  # P; heads H = d_ssm / P
    n_groups: int = 1  # G: groups of heads sharing B and C
    chunk_size: int = 64  # Q of the chunked scan (the CPU's best; mamba-ssm's kernels use 256)
    norm_eps: float = 1e-5
    # H set directly (then d_ssm = H P, whatever expand says), as Nemotron-H's mamba_num_heads
    n_heads: int | None = None
    # dt clamped from below after its softplus (mamba-ssm's dt_limit[0]; Nemotron-H's time_step_min)
    dt_min: float = field(default=0.0, metadata={"min": 0.0})
    # the output's norm: RMSNorm(y * silu(z)) (mamba-ssm), RMSNorm(y) * silu(z) (`before_gate`),
    # or y * silu(z) alone (`none`: Falcon-H1's default, `mamba_rms_norm: false`)
    norm: str = field(default="gated", metadata={"choices": ("gated", "before_gate", "none")})

    def d_ssm(self, cfg: ModelConfig) -> int:
        return self.n_heads * self.head_dim if self.n_heads else self.expand * cfg.d_model

    def heads(self, cfg: ModelConfig) -> int:
        return self.d_ssm(cfg) // self.head_dim

    def validate(self, cfg: ModelConfig) -> None:
        d_ssm = self.d_ssm(cfg)
        if d_ssm % self.head_dim:
            raise ConfigError(f"head_dim: must divide d_ssm = expand * d_model = {d_ssm}, "
                              f"got {self.head_dim}")
        if self.heads(cfg) % self.n_groups:
            raise ConfigError(f"n_groups: must divide the {self.heads(cfg)} heads, "
                              f"got {self.n_groups}")


class Mamba2Core(nn.Module):
    """Everything of a Mamba-2 mixer between in_proj and out_proj (conv, SSD, gated norm)."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec | None = None) -> None:
        super().__init__()
        o: Mamba2Options = cfg.options("mamba2")
        self.opts = o
        self.d_ssm, self.heads = o.d_ssm(cfg), o.heads(cfg)
        self.bc = o.n_groups * o.d_state
        conv = self.d_ssm + 2 * self.bc
        self.in_width = 2 * self.d_ssm + 2 * self.bc + self.heads  # z, x B C, dt
        self.conv1d = nn.Conv1d(conv, conv, o.d_conv, groups=conv, padding=o.d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(self.heads))
        self.A_log = nn.Parameter(torch.empty(self.heads))
        self.D = nn.Parameter(torch.ones(self.heads))
        if o.norm != "none":
            self.norm = _GatedNormWeight(self.d_ssm)
        self.reset_mixer_parameters()

    @staticmethod
    def out_width(cfg: ModelConfig) -> int:
        return cfg.options("mamba2").d_ssm(cfg)

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        o: Mamba2Options = cfg.options("mamba2")
        conv = o.d_ssm(cfg) + 2 * o.n_groups * o.d_state
        return {"conv": (batch, conv, o.d_conv - 1),
                "ssm": (batch, o.heads(cfg), o.head_dim, o.d_state)}

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        """Per sequence: d_conv - 1 past inputs of each of the conv's d_ssm + 2 G N channels, and
        H P N = d_ssm N SSM values (the spec's (d_ssm + 2GN) x K and H x P x N, with K - 1)."""
        o: Mamba2Options = cfg.options("mamba2")
        d_ssm = o.n_heads * o.head_dim if o.n_heads else o.expand * cfg.d_model
        return (d_ssm + 2 * o.n_groups * o.d_state) * (o.d_conv - 1) + d_ssm * o.d_state

    @torch.no_grad()
    def reset_mixer_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """mamba-ssm's Mamba2 initialisation: A uniform in [1, 16], dt log-uniform in
        [dt_min, dt_max] through an inverse softplus, D = 1."""
        self.A_log.copy_(torch.log(torch.empty(self.heads).uniform_(1.0, 16.0)))
        dt = torch.exp(torch.rand(self.heads) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.D.fill_(1.0)

    def branch(self, proj: Tensor, cache: LayerCache | None, decode: bool) -> Tensor:
        """proj (B, L, in_width), in_proj's output -> (B, L, d_ssm), normed, before out_proj."""
        o = self.opts
        z, xbc, dt = proj.split([self.d_ssm, self.d_ssm + 2 * self.bc, self.heads], dim=-1)
        A = -torch.exp(self.A_log.float())  # (H,)
        dt_bias: Tensor | None = self.dt_bias
        if o.dt_min > 0.0:  # the clamp after the softplus, so both are done here
            dt, dt_bias = F.softplus(dt.float() + self.dt_bias.float()).clamp(min=o.dt_min), None
        softplus = dt_bias is not None
        weight = self.conv1d.weight.squeeze(1)  # (C, K)
        batch, length = proj.shape[:2]
        if decode:
            assert cache is not None
            xbc = ops.causal_conv1d_update(xbc[:, 0], cache.state["conv"], weight,
                                           self.conv1d.bias, "silu")  # (B, C)
            x, b, c = xbc.split([self.d_ssm, self.bc, self.bc], dim=-1)
            y = ops.ssd_state_update(cache.state["ssm"], x.view(batch, self.heads, o.head_dim),
                                     dt[:, 0], A, b.view(batch, o.n_groups, o.d_state),
                                     c.view(batch, o.n_groups, o.d_state), self.D,
                                     dt_bias, dt_softplus=softplus)
            y = y.reshape(batch, 1, self.d_ssm)
        else:
            raw = xbc.transpose(1, 2)  # (B, C, L)
            xbc = ops.causal_conv1d(raw, weight, self.conv1d.bias, "silu").transpose(1, 2)
            x, b, c = xbc.split([self.d_ssm, self.bc, self.bc], dim=-1)
            y, last = ops.ssd(x.reshape(batch, length, self.heads, o.head_dim), dt, A,
                              b.reshape(batch, length, o.n_groups, o.d_state),
                              c.reshape(batch, length, o.n_groups, o.d_state), self.D,
                              dt_bias, dt_softplus=softplus, chunk_size=o.chunk_size)
            y = y.reshape(batch, length, self.d_ssm)
            if cache is not None:
                cache.state["conv"].copy_(ops.conv_state_from_prefix(raw, weight.shape[1]))
                cache.state["ssm"].copy_(last)
        if o.norm == "none":
            return (y.float() * F.silu(z.float())).to(y.dtype)
        return ops.gated_rms_norm(y, z, self.norm.weight, o.norm_eps, self.d_ssm // o.n_groups,
                                  norm_before_gate=o.norm == "before_gate")


class _GatedNormWeight(nn.Module):
    """Holds the gated norm's weight as `norm.weight`, mamba-ssm's name for it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Mamba2(Mamba2Core):
    """A pure Mamba-2 mixer: in_proj -> conv, SSD, gated norm -> out_proj."""

    Options = Mamba2Options
    Branch = Mamba2Core
    has_attention = False

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__(cfg, spec)
        self.spec = spec
        self.in_proj = nn.Linear(cfg.d_model, self.in_width, bias=False)
        self.out_proj = nn.Linear(self.d_ssm, cfg.d_model, bias=False)

    def forward(self, u: Tensor, ctx: Context) -> Tensor:
        """u: (B, L, D) -> (B, L, D)."""
        return self.out_proj(self.branch(self.in_proj(u), ctx.state(self.spec.index), ctx.decode))
