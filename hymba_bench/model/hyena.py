"""The Hyena mixer (order 2) with StripedHyena's modal long filter.

    v, x1, x2 = short_conv(in_proj(u))        depthwise causal, kernel `hyena_short_conv`
    y = out_proj(x2 * (h * (x1 * v) + D * (x1 * v)))

`h` is an implicit filter as long as the sequence (see `ops.long_conv` for its modal form), so
prefill is one FFT convolution and decode is a recurrence over `hyena_modes` complex poles per
channel: the cache holds the short-conv inputs and that state, independent of context length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.design.config import LayerSpec, ModelConfig
from hymba_bench.model.context import Context


class Hyena(nn.Module):
    """Its settings are ModelConfig's flat `hyena_modes` and `hyena_short_conv` (older than the
    per-mixer blocks, kept so that saved configs still load)."""

    has_attention = False

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        d, n, k = cfg.d_model, cfg.hyena_modes, cfg.hyena_short_conv
        self.d_model = d
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.short_conv = nn.Conv1d(3 * d, 3 * d, k, groups=3 * d, padding=k - 1, bias=True)
        # lambda = exp(-exp(log_rate)) e^{i theta}: decay rate and angle of each pole
        self.log_rate = nn.Parameter(torch.empty(d, n))
        self.theta = nn.Parameter(torch.empty(d, n))
        self.residues = nn.Parameter(torch.empty(d, n, 2))  # Re, Im
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, d, bias=False)
        self.reset_mixer_parameters()

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        """The decode state: the short convs' last k - 1 inputs and one complex accumulator
        (re, im) per pole of the long filter."""
        return {"conv": (batch, 3 * cfg.d_model, cfg.hyena_short_conv - 1),
                "modal": (batch, cfg.d_model, cfg.hyena_modes, 2)}

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        """Per sequence: k - 1 inputs of each of the three short convs, and per channel one complex
        number (two reals) for each of the filter's poles."""
        return 3 * cfg.d_model * (cfg.hyena_short_conv - 1) + 2 * cfg.d_model * cfg.hyena_modes

    @torch.no_grad()
    def reset_mixer_parameters(self, min_rate: float = 1e-3, max_rate: float = 0.5) -> None:
        """Decay rates log-uniform (memories from ~2 to ~1000 tokens), angles uniform in [0, pi)."""
        n = self.log_rate.shape[1]
        self.log_rate.uniform_(math.log(min_rate), math.log(max_rate))
        self.theta.uniform_(0.0, math.pi)
        self.residues.normal_(0.0, (2 * n) ** -0.5)
        self.D.fill_(1.0)

    def rate(self) -> Tensor:
        return torch.exp(self.log_rate.float())  # (D, N), > 0: |lambda| < 1

    def forward(self, u: Tensor, ctx: Context) -> Tensor:
        """u: (B, L, D) -> (B, L, D)."""
        cache = ctx.state(self.spec.index)
        weight = self.short_conv.weight.squeeze(1)  # (3D, K)
        proj = self.in_proj(u)  # (B, L, 3D)
        if ctx.decode:
            assert cache is not None
            v, x1, x2 = ops.causal_conv1d_update(proj[:, 0], cache.state["conv"], weight,
                                                 self.short_conv.bias).chunk(3, dim=-1)  # (B, D)
            z = x1 * v
            y = ops.modal_step(cache.state["modal"], z, self.rate(), self.theta, self.residues)
            y = x2 * (y.to(z.dtype) + self.D.to(z.dtype) * z)
            return self.out_proj(y[:, None])
        p = proj.transpose(1, 2)  # (B, 3D, L)
        v, x1, x2 = ops.causal_conv1d(p, weight, self.short_conv.bias).chunk(3, dim=1)  # (B, D, L)
        z = x1 * v
        powers = ops.modal_powers(self.rate(), self.theta, z.shape[-1])  # lambda^t: 2 x (D, N, L)
        h = ops.modal_filter(powers, self.residues)  # (D, L)
        y = x2 * (ops.long_conv(z, h) + self.D.to(z.dtype)[None, :, None] * z)
        if cache is not None:
            cache.state["conv"].copy_(ops.conv_state_from_prefix(p, weight.shape[1]))
            cache.state["modal"].copy_(ops.modal_state(z, powers))
        return self.out_proj(y.transpose(1, 2))
