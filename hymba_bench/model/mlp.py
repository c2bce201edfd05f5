"""An MLP as a layer's mixer, for designs whose MLPs are layers of their own (Nemotron-H's `-`).

With `ffn: none` a layout can then spell such a pattern one token per layer
(`[mamba2, mlp, mamba2, attention, mlp]`), each layer a residual block x + mixer(RMSNorm(x)).
Nemotron-H's MLP is squared ReLU without a gate; `swiglu` gives the FFN the other designs use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from hymba_bench.design.config import LayerSpec, ModelConfig
from hymba_bench.model.context import Context
from hymba_bench.model.layers import SwiGLU


@dataclass(frozen=True)
class MLPOptions:
    activation: str = field(default="relu2", metadata={"choices": ("relu2", "swiglu")})


class MLP(nn.Module):
    """up_proj -> relu(.)^2 -> down_proj over intermediate_size, or a SwiGLU; no decode state."""

    Options = MLPOptions
    has_attention = False

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.activation = cfg.options("mlp").activation
        if self.activation == "swiglu":
            self.swiglu = SwiGLU(cfg.d_model, cfg.intermediate_size)
        else:
            self.up_proj = nn.Linear(cfg.d_model, cfg.intermediate_size, bias=False)
            self.down_proj = nn.Linear(cfg.intermediate_size, cfg.d_model, bias=False)

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        return {}

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        return 0

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        if self.activation == "swiglu":
            return self.swiglu(x)
        return self.down_proj(F.relu(self.up_proj(x)).square())
