"""Parallel branches: attention and an SSM mixer side by side on the same input, summed.

    y = attention(x) + ssm(x)            each branch with its own in and out projections

Falcon-H1's layer, with Mamba-2 as the SSM branch (`parallel: {ssm: mamba2}`; its µP
multipliers are constants, folded into the projections when its checkpoints load). Hymba's
hybrid heads (`hybrid`) share one input projection and normalise and average the branches
before one output projection; here nothing is shared, so the row measures the cost of two
complete mixers per layer. The attention branch is the `attention` mixer (its `attention:` block
applies, its K/V follow the layer plan: windows, sharing, meta tokens); the SSM branch is any
registered mixer without attention and keeps its own decode state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from hymba_bench.design import mixers
from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig
from hymba_bench.model.attention import Attention
from hymba_bench.model.context import Context


@dataclass(frozen=True)
class ParallelOptions:
    ssm: str = field(default="mamba2", metadata={"checked": "validate"})  # the other branch's mixer

    def validate(self, cfg: ModelConfig) -> None:
        able = [n for n in mixers.names() if not mixers.mixer_class(n).has_attention]
        if not isinstance(self.ssm, str) or self.ssm not in able:
            raise ConfigError(f"ssm: expected a registered mixer without attention "
                              f"({', '.join(able)}), got {self.ssm!r}")


class Parallel(nn.Module):
    Options = ParallelOptions
    has_attention = True

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.attn = Attention(cfg, spec)
        self.ssm = mixers.mixer_class(cfg.options("parallel").ssm)(cfg, spec)

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        """The SSM branch's state (the attention branch's K/V are the cache's, by the plan)."""
        return mixers.mixer_class(cfg.options("parallel").ssm).state_shapes(cfg, spec, batch)

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        return mixers.mixer_class(cfg.options("parallel").ssm).state_elements(cfg, spec)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.attn(x, ctx) + self.ssm(x, ctx)
