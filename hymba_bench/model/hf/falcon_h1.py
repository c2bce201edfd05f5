"""Falcon-H1 checkpoints (`falcon_h1`): every layer is x + attention(RMSNorm(x)) + Mamba-2(RMSNorm(x))
(the `parallel` mixer), then x + SwiGLU(RMSNorm(x)), as transformers' `FalconH1ForCausalLM`
builds them. Mamba-2's width is `mamba_n_heads * mamba_d_head` (`mamba2: {n_heads}`); its output
is y * silu(z), or normed as `mamba_rms_norm` and `mamba_norm_before_gate` say (`mamba2: {norm}`).

Falcon-H1's µP multipliers are constants, so `convert` folds each into the weights it scales:
`attention_in_multiplier` into q, k and v (and `key_multiplier` into k), `attention_out_multiplier`
into o_proj, `ssm_in_multiplier` into Mamba-2's in_proj, `ssm_multipliers` into in_proj's rows
section by section (z, x, B, C, dt), `ssm_out_multiplier` into its out_proj, `mlp_multipliers`
into gate_proj and down_proj, `embedding_multiplier` into the embedding and
`lm_head_multiplier` into the head (into the final norm when the head is the tied embedding).
Names: `self_attn.*` -> `mixer.attn.*`, `mamba.*` -> `mixer.ssm.*`, `feed_forward.*` -> `ffn.*`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import (
    HFAdapter,
    multiplier,
    multipliers,
    need,
    refuse_unmodelled,
    rope_theta,
    scaled,
)
from hymba_bench.model.hf.bamba import refuse_partial_rotary
from hymba_bench.model.hf.mamba import refuse_dt_clamp

if TYPE_CHECKING:
    from torch import Tensor

_LAYER = re.compile(r"model\.layers\.\d+\.(.+)")
_MULTIPLIERS = ("embedding_multiplier", "lm_head_multiplier", "key_multiplier",
                "attention_in_multiplier", "attention_out_multiplier", "ssm_in_multiplier",
                "ssm_out_multiplier")


class FalconH1Adapter(HFAdapter):
    model_types = ("falcon_h1",)
    family = "Falcon-H1"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"pre_ff_layernorm\.weight", "post_mixer_layernorm.weight"),
        (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight", r"mixer.attn.\1.weight"),
        (r"mamba\.(in_proj\.weight|out_proj\.weight|conv1d\.weight|conv1d\.bias|dt_bias|A_log|D|"
         r"norm\.weight)", r"mixer.ssm.\1"),
        (r"feed_forward\.(gate_proj|up_proj|down_proj)\.weight", r"ffn.\1.weight"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.final_layernorm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another activation (the FFN's and Mamba-2's conv)"),
                ("attention_bias", (False, None), "biases on the attention projections"),
                ("mlp_bias", (False, None), "biases on the FFN projections"),
                ("projectors_bias", (False, None), "a bias on Mamba-2's out_proj"),
                ("mamba_proj_bias", (False, None), "biases on Mamba-2's in_proj"),
                ("mamba_conv_bias", (True, None), "a convolution without bias")]

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d, heads = int(need(hf, "hidden_size", fam)), int(need(hf, "num_attention_heads", fam))
        refuse_dt_clamp(hf)
        refuse_partial_rotary(hf)
        for key in _MULTIPLIERS:
            multiplier(hf, key)
        multipliers(hf, "mlp_multipliers", 2)
        multipliers(hf, "ssm_multipliers", 5)
        m_heads = int(need(hf, "mamba_n_heads", fam))
        d_ssm = hf.get("mamba_d_ssm") or int(hf.get("mamba_expand", 2)) * d
        m_head = hf.get("mamba_d_head", "auto")
        m_head = int(d_ssm) // m_heads if m_head in ("auto", None) else int(m_head)
        if m_head * m_heads != int(d_ssm):
            raise HymbaBenchError(f"config.json: mamba_n_heads * mamba_d_head = {m_head * m_heads}"
                                  f" is not mamba_d_ssm = {d_ssm}")
        norm = "none" if not hf.get("mamba_rms_norm", False) else \
            "before_gate" if hf.get("mamba_norm_before_gate", True) else "gated"
        eps = float(hf.get("rms_norm_eps", 1e-5))
        mamba2 = {"d_state": int(need(hf, "mamba_d_state", fam)),
                  "d_conv": int(hf.get("mamba_d_conv", 4)), "n_heads": m_heads,
                  "head_dim": m_head, "n_groups": int(hf.get("mamba_n_groups", 1)),
                  "norm_eps": eps, "norm": norm}
        head_dim = int(hf.get("head_dim") or d // heads)
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d,
            n_layers=int(need(hf, "num_hidden_layers", fam)), n_heads=heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or heads), d_qk=head_dim, d_v=head_dim,
            intermediate_size=int(need(hf, "intermediate_size", fam)), layout=["parallel"],
            rope=True, rope_theta=rope_theta(hf), norm_eps=eps,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings") or 8192),
            mixer_options={"parallel": {"ssm": "mamba2"}, "mamba2": mamba2},
        )

    def convert(self, state: dict[str, Tensor], cfg: ModelConfig,
                hf: dict[str, Any]) -> dict[str, Tensor]:
        import torch

        embed, head, key, a_in, a_out, s_in, s_out = (multiplier(hf, k) for k in _MULTIPLIERS)
        gate, down = multipliers(hf, "mlp_multipliers", 2)
        o = cfg.options("mamba2")
        d_ssm, bc = o.d_ssm(cfg), o.n_groups * o.d_state
        sections = [d_ssm, d_ssm, bc, bc, o.heads(cfg)]  # z, x, B, C, dt: in_proj's rows
        per_section = multipliers(hf, "ssm_multipliers", 5)
        rows = torch.cat([torch.full((n,), m, dtype=torch.float64)
                          for n, m in zip(sections, per_section, strict=True)])
        factors = {"self_attn.q_proj.weight": a_in, "self_attn.k_proj.weight": a_in * key,
                   "self_attn.v_proj.weight": a_in, "self_attn.o_proj.weight": a_out,
                   "mamba.out_proj.weight": s_out, "feed_forward.gate_proj.weight": gate,
                   "feed_forward.down_proj.weight": down}
        out: dict[str, Tensor] = {}
        for k, value in state.items():
            m = _LAYER.fullmatch(k)
            part = m.group(1) if m else ""
            factor: float | Tensor = factors.get(part, 1.0)
            if part == "mamba.in_proj.weight" and value.shape[0] == rows.numel():
                factor = (rows * s_in).to(value.device)[:, None]
            elif k == "model.embed_tokens.weight":
                factor = embed
            elif k == "lm_head.weight":
                factor = head
            elif k == "model.final_layernorm.weight" and cfg.tie_embeddings:
                factor = head / embed  # the head is the scaled embedding
            out[k] = scaled(value, factor)
        return out
