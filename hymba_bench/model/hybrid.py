"""Hymba's hybrid heads: attention heads and SSM heads in parallel over one input projection.

    in_proj(x) = [Q K | V | the SSM branch's inputs]
    y = out_proj((RMSNorm_a(attention) + RMSNorm_s(ssm)) / 2)

The norms' weights are the paper's beta scales, which rebalance the SSM output (larger in
magnitude) against attention's. The SSM branch is an option (`hybrid: {ssm: mamba2}`): any
registered mixer whose class names a `Branch` (Mamba-1's `SSMCore`, Mamba-2's, the gated delta
rule's), so a Falcon-H1-style layer is row B or E with another branch. A branch keeps its own
decode state; the attention heads' K/V follow the layer plan like any attention layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from hymba_bench import ops
from hymba_bench.design import mixers
from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig
from hymba_bench.model.attention import attend, qkv_widths, split_heads, time_major_heads
from hymba_bench.model.context import Context
from hymba_bench.model.layers import RMSNorm, Rotary


def _branch_class(cfg: ModelConfig) -> Any:
    return mixers.mixer_class(cfg.options("hybrid").ssm).Branch


@dataclass(frozen=True)
class HybridOptions:
    ssm: str = field(default="mamba", metadata={"checked": "validate"})  # the SSM branch's mixer

    def validate(self, cfg: ModelConfig) -> None:
        if not isinstance(self.ssm, str) or self.ssm not in mixers.names():
            raise ConfigError(f"ssm: expected a registered mixer, got {self.ssm!r}")
        if getattr(mixers.mixer_class(self.ssm), "Branch", None) is None:
            able = [n for n in mixers.names()
                    if getattr(mixers.mixer_class(n), "Branch", None) is not None]
            raise ConfigError(f"ssm: {self.ssm} cannot be the SSM branch of hybrid heads "
                              f"(those that can: {', '.join(able)})")
        width = mixers.mixer_class(self.ssm).Branch.out_width(cfg)
        if width != cfg.d_inner:
            raise ConfigError(f"ssm: the {self.ssm} branch is {width} wide, the attention heads "
                              f"d_inner = expand * d_model = {cfg.d_inner}: make them equal")


class HybridHeads(nn.Module):
    Options = HybridOptions
    has_attention = True

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        # the branch is built first: a seed then draws every weight in the order it always has
        self.ssm = _branch_class(cfg)(cfg, spec)
        q, k, v = qkv_widths(cfg, spec)
        self.widths = [q + k, v, self.ssm.in_width]  # Q and K adjacent: rotated together
        self.in_proj = nn.Linear(cfg.d_model, sum(self.widths), bias=False)
        self.rotary = Rotary(cfg.d_qk, cfg.rope_theta, cfg.rope_scaling, enabled=cfg.rope)
        self.attn_norm = RMSNorm(cfg.d_inner, cfg.norm_eps)
        self.ssm_norm = RMSNorm(cfg.d_inner, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)
        self._register_load_state_dict_pre_hook(_flat_mamba_names, with_module=True)

    @staticmethod
    def state_shapes(cfg: ModelConfig, spec: LayerSpec, batch: int) -> dict[str, tuple[int, ...]]:
        """The SSM branch's state (the attention heads' K/V are the cache's, by the layer plan)."""
        return _branch_class(cfg).state_shapes(cfg, spec, batch)

    @staticmethod
    def state_elements(cfg: ModelConfig, spec: LayerSpec) -> int:
        return _branch_class(cfg).state_elements(cfg, spec)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        qk, v, branch_in = self.in_proj(x).split(self.widths, dim=-1)
        cfg, kv_heads = self.cfg, self.spec.n_kv_heads if self.spec.owns_kv else 0
        qk = self.rotary(time_major_heads(qk, cfg.n_heads + kv_heads), ctx)  # (B, L, Hq + Hkv, d)
        q = qk[:, :, :cfg.n_heads].transpose(1, 2)
        kh = vh = None
        if self.spec.owns_kv:
            kh = qk[:, :, cfg.n_heads:].transpose(1, 2)
            vh = split_heads(v, kv_heads)
        attn = attend(q, kh, vh, self.spec, cfg.meta_tokens, ctx)  # (B, L, d_inner)
        ssm = self.ssm.branch(branch_in, ctx.state(self.spec.index), ctx.decode)  # (B, L, d_inner)
        fused = ops.fused_norms(attn, ssm, self.attn_norm.weight, self.ssm_norm.weight,
                                self.attn_norm.eps)  # (RMSNorm_a(attn) + RMSNorm_s(ssm)) / 2
        return self.out_proj(fused)


def _flat_mamba_names(module: HybridHeads, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints saved before the branch was its own module kept Mamba-1's weights on the
    mixer itself (`mixer.conv1d.weight`); they now live under `mixer.ssm.`."""
    ours = {name for name, _ in module.ssm.named_parameters()}
    for name in ours:
        old = prefix + name
        if old in state and prefix + "ssm." + name not in state:
            state[prefix + "ssm." + name] = state.pop(old)
