"""The Mamba-1 mixer, and its core: the SSM branch of hybrid heads (`hybrid: {ssm: mamba}`).

Parameter names follow mamba-ssm's `Mamba` (conv1d, x_proj, dt_proj, A_log, D, in_proj, out_proj)
so weights move between the two; Hymba adds RMSNorms on dt, B and C.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.design.config import LayerSpec, ModelConfig
from hymba_bench.model.context import Context

if TYPE_CHECKING:
    from hymba_bench.model.cache import LayerCache
from hymba_bench.model.layers import RMSNorm


class SSMCore(nn.Module):
    """Everything of a Mamba-1 mixer between the input projection and the output projection.

    Its settings are ModelConfig's flat Mamba-1 fields (d_state, d_conv, expand, dt_rank,
    ssm_norms), older than the per-mixer blocks and kept so that saved configs still load.
    """

    def __init__(self, cfg: ModelConfig, spec: LayerSpec | None = None) -> None:
        super().__init__()
        self.in_width = 2 * cfg.d_inner  # as a hybrid branch: x and the gate z
        d, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        assert r is not None
        self.d_state, self.dt_rank = n, r
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.ssm_norms = cfg.ssm_norms
        if cfg.ssm_norms:
            self.dt_layernorm = RMSNorm(r, cfg.norm_eps)
            self.B_layernorm = RMSNorm(n, cfg.norm_eps)
            self.C_layernorm = RMSNorm(n, cfg.norm_eps)

    @staticmethod
    def out_width(cfg: ModelConfig) -> int:
        return cfg.d_inner

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        """The decode state: the conv's last d_conv - 1 inputs and the SSM state."""
        return {"conv": (batch, cfg.d_inner, cfg.d_conv - 1), "ssm": (batch, cfg.d_inner, cfg.d_state)}

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        """Per sequence: each of the d_inner channels keeps d_conv - 1 conv inputs and d_state
        SSM values (mamba-ssm keeps d_conv conv inputs; we keep what the next step reads)."""
        return cfg.d_inner * (cfg.d_conv - 1) + cfg.d_inner * cfg.d_state

    @torch.no_grad()
    def reset_mixer_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """mamba-ssm's initialisation: dt log-uniform in [dt_min, dt_max] through an inverse softplus."""
        d = self.dt_proj.out_features
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(d, 1))
        self.D.fill_(1.0)

    def _dt_bc(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """xc: (..., d_inner) -> dt (..., d_inner) without bias, B (..., N), C (..., N)."""
        dt, b, c = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.ssm_norms:
            dt, b, c = self.dt_layernorm(dt), self.B_layernorm(b), self.C_layernorm(c)
        return F.linear(dt, self.dt_proj.weight), b, c

    def branch(self, proj: Tensor, cache: LayerCache | None, decode: bool) -> Tensor:
        """As the SSM branch of hybrid heads: its slice of in_proj (B, L, 2 d_inner) -> (B, L, d_inner)."""
        xs, z = proj.chunk(2, dim=-1)
        return self.ssm(xs, z, cache, decode)

    def ssm(self, xs: Tensor, z: Tensor, cache: LayerCache | None, decode: bool) -> Tensor:
        """xs, z: (B, L, d_inner) -> gated SSM output (B, L, d_inner)."""
        A = -torch.exp(self.A_log.float())  # (D, N)
        weight = self.conv1d.weight.squeeze(1)  # (D, K)
        if decode:
            assert cache is not None
            conv, state = cache.state["conv"], cache.state["ssm"]
            xc = ops.causal_conv1d_update(xs[:, 0], conv, weight, self.conv1d.bias, "silu")
            dt, b, c = self._dt_bc(xc)  # (B, D), (B, N), (B, N)
            y = ops.selective_state_update(state, xc, dt, A, b, c, self.D, z[:, 0],
                                           dt_bias=self.dt_proj.bias, dt_softplus=True)
            return y[:, None]
        x = xs.transpose(1, 2)  # (B, D, L)
        xc = ops.causal_conv1d(x, weight, self.conv1d.bias, "silu")
        dt, b, c = self._dt_bc(xc.transpose(1, 2))
        out = ops.selective_scan(xc, dt.transpose(1, 2), A, b.transpose(1, 2), c.transpose(1, 2),
                                 self.D.float(), z.transpose(1, 2), self.dt_proj.bias.float(),
                                 delta_softplus=True, return_last_state=cache is not None)
        if isinstance(out, tuple):  # the last state too, with a cache
            assert cache is not None
            out, last = out
            cache.state["conv"].copy_(ops.conv_state_from_prefix(x, weight.shape[1]))
            cache.state["ssm"].copy_(last)
        return out.transpose(1, 2)  # (B, L, D)


class Mamba(SSMCore):
    """A pure Mamba-1 mixer: in_proj -> (x, z) -> SSM -> out_proj."""

    has_attention = False
    Branch = SSMCore  # what hybrid heads build for `ssm: mamba`

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__(cfg, spec)
        self.spec = spec
        self.d_inner = cfg.d_inner
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=False)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        return self.out_proj(self.ssm(xs, z, ctx.state(self.spec.index), ctx.decode))
