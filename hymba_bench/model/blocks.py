"""The pre-norm decoder layer: a registered mixer (`hymba_bench.design.mixers`), then an FFN."""

from __future__ import annotations

from torch import Tensor, nn

from hymba_bench.design.config import LayerSpec, ModelConfig
from hymba_bench.design.mixers import mixer_class
from hymba_bench.model.context import Context
from hymba_bench.model.layers import RMSNorm, SwiGLU
from hymba_bench.model.moe import MoE


class DecoderLayer(nn.Module):
    """x + mixer(RMSNorm(x)), then x + FFN(RMSNorm(x)) with a SwiGLU or mixture-of-experts FFN;
    x + mixer(x) for a mixer that takes the stream itself (`takes_stream`: it holds its norms)."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        cls = mixer_class(spec.mixer)
        self.input_layernorm: nn.Module = nn.Identity() if getattr(cls, "takes_stream", False) \
            else RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer: nn.Module = cls(cfg, spec)
        self.ffn: nn.Module | None = None
        if spec.ffn != "none":
            self.post_mixer_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.ffn = SwiGLU(cfg.d_model, cfg.intermediate_size) if spec.ffn == "dense" else \
                MoE(cfg.d_model, cfg.intermediate_size, cfg.moe_experts, cfg.moe_top_k,
                    cfg.moe_normalize, cfg.moe_shared, cfg.moe_shared_gate)

    def tie_to(self, source: DecoderLayer) -> None:
        """Apply `source`'s weights (Zamba's shared block; the shared part of a mixer that says what
        it shares, as Zamba2's does); this layer keeps its own spec and cache."""
        tie = getattr(self.mixer, "tie_to", None)
        if tie is not None:
            tie(source.mixer)
            return
        for name, module in source.named_children():
            if name == "mixer":  # the mixer object carries this layer's spec: share its parts
                for part, sub in module.named_children():
                    setattr(self.mixer, part, sub)
            else:
                setattr(self, name, module)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        x = x + self.mixer(self.input_layernorm(x), ctx)
        if self.ffn is not None:
            x = x + self.ffn(self.post_mixer_layernorm(x))
        return x
