"""The hybrid-head mixer and the pre-norm decoder layer."""

from __future__ import annotations

from torch import Tensor, nn

from hymba_bench.design.config import LayerSpec, ModelConfig
from hymba_bench.model.attention import (
    Attention,
    attend,
    qkv_widths,
    split_heads,
    time_major_heads,
)
from hymba_bench.model.context import Context
from hymba_bench.model.hyena import Hyena
from hymba_bench.model.layers import RMSNorm, Rotary, SwiGLU
from hymba_bench.model.moe import MoE
from hymba_bench.model.ssm import Mamba, SSMCore


class HybridHeads(SSMCore):
    """Parallel attention and SSM heads over one input projection (Hymba).

    in_proj gives, in order: Q, K, V (absent for KV consumers), the SSM input x and the gate z.
    Output: out_proj((RMSNorm_a(attn) + RMSNorm_s(ssm)) / 2); the norms' weights are the paper's
    beta scales, which rebalance the SSM output (larger in magnitude) against attention's.
    """

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__(cfg)
        self.cfg, self.spec = cfg, spec
        q, k, v = qkv_widths(cfg, spec)
        self.widths = [q + k, v, cfg.d_inner, cfg.d_inner]  # Q and K adjacent: rotated together
        self.in_proj = nn.Linear(cfg.d_model, sum(self.widths), bias=False)
        self.rotary = Rotary(cfg.d_qk, cfg.rope_theta, cfg.rope_scaling, enabled=cfg.rope)
        self.attn_norm = RMSNorm(cfg.d_inner, cfg.norm_eps)
        self.ssm_norm = RMSNorm(cfg.d_inner, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        qk, v, xs, z = self.in_proj(x).split(self.widths, dim=-1)
        cfg, kv_heads = self.cfg, self.spec.n_kv_heads if self.spec.owns_kv else 0
        qk = self.rotary(time_major_heads(qk, cfg.n_heads + kv_heads), ctx)  # (B, L, Hq + Hkv, d)
        q = qk[:, :, :cfg.n_heads].transpose(1, 2)
        kh = vh = None
        if self.spec.owns_kv:
            kh = qk[:, :, cfg.n_heads:].transpose(1, 2)
            vh = split_heads(v, kv_heads)
        attn = attend(q, kh, vh, self.spec, cfg.meta_tokens, ctx)
        ssm = self.ssm(xs, z, ctx.state(self.spec.index), ctx.decode)
        return self.out_proj((self.attn_norm(attn) + self.ssm_norm(ssm)) / 2)


class DecoderLayer(nn.Module):
    """x + mixer(RMSNorm(x)), then x + FFN(RMSNorm(x)) with a SwiGLU or mixture-of-experts FFN."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer: nn.Module = MIXER_TYPES[spec.mixer](cfg, spec)
        self.ffn: nn.Module | None = None
        if spec.ffn != "none":
            self.post_mixer_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.ffn = SwiGLU(cfg.d_model, cfg.intermediate_size) if spec.ffn == "dense" else \
                MoE(cfg.d_model, cfg.intermediate_size, cfg.moe_experts, cfg.moe_top_k)

    def tie_to(self, source: DecoderLayer) -> None:
        """Apply `source`'s weights (Zamba's shared block); this layer keeps its own spec and cache."""
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


# Every mixer, by its `layout` name: built as cls(cfg, spec), called as mixer(x, ctx), and
# declaring its decode state with cls.state_shapes(cfg, batch) (the cache allocates it).
MIXER_TYPES: dict[str, type[nn.Module]] = {
    "attention": Attention,
    "mamba": Mamba,
    "hybrid": HybridHeads,
    "hyena": Hyena,
}
