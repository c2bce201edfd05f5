"""Jamba checkpoints (`jamba`): Llama's pre-norm layers (mixer, then FFN) whose mixer is Mamba-1
with RMSNorms on dt, B and C, except every `attn_layer_period`-th layer (from
`attn_layer_offset`), which attends without positions; the FFN is a mixture of experts (a
softmax router, top-k weights used as they are) every `expert_layer_period`-th layer, a SwiGLU
elsewhere, as transformers' `JambaForCausalLM` builds them. Names: `mamba.*` and `self_attn.*` ->
`mixer.*` (`b_layernorm` -> `B_layernorm`), `feed_forward.*` -> `ffn.*`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, need, refuse_unmodelled


class JambaAdapter(HFAdapter):
    model_types = ("jamba",)
    family = "Jamba"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"pre_ff_layernorm\.weight", "post_mixer_layernorm.weight"),
        (r"mamba\.(in_proj\.weight|out_proj\.weight|conv1d\.weight|conv1d\.bias|x_proj\.weight|"
         r"dt_proj\.weight|dt_proj\.bias|A_log|D|dt_layernorm\.weight)", r"mixer.\1"),
        (r"mamba\.b_layernorm\.weight", "mixer.B_layernorm.weight"),
        (r"mamba\.c_layernorm\.weight", "mixer.C_layernorm.weight"),
        (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight", r"mixer.\1.weight"),
        (r"feed_forward\.(router\.weight|experts\.\d+\.(gate_proj|up_proj|down_proj)\.weight|"
         r"(gate_proj|up_proj|down_proj)\.weight)", r"ffn.\1"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.final_layernorm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another activation (the FFN's and the conv's)"),
                ("mamba_proj_bias", (False, None), "biases on Mamba's projections"),
                ("mamba_conv_bias", (True, None), "a convolution without bias")]

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d, heads = int(need(hf, "hidden_size", fam)), int(need(hf, "num_attention_heads", fam))
        n_layers = int(need(hf, "num_hidden_layers", fam))
        a_period, a_offset = int(hf.get("attn_layer_period", 8)), int(hf.get("attn_layer_offset", 4))
        e_period, e_offset = (int(hf.get("expert_layer_period", 2)),
                              int(hf.get("expert_layer_offset", 1)))
        experts = int(hf.get("num_experts", 16))
        if experts > 1 and e_offset != e_period - 1:
            raise HymbaBenchError(f"config.json: expert_layer_offset={e_offset} with "
                                  f"expert_layer_period={e_period}: only offset period - 1 "
                                  "(experts on the period's last layer) is supported")
        rank = hf.get("mamba_dt_rank", "auto")
        moe: dict[str, Any] = {"ffn": "moe", "moe_experts": experts, "moe_every": e_period,
                               "moe_top_k": int(hf.get("num_experts_per_tok", 2))} \
            if experts > 1 else {}
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d, n_layers=n_layers,
            n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            d_qk=d // heads, d_v=d // heads,
            intermediate_size=int(need(hf, "intermediate_size", fam)),
            layout=["attention" if i % a_period == a_offset else "mamba" for i in range(n_layers)],
            rope=False, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            d_state=int(hf.get("mamba_d_state", 16)), d_conv=int(hf.get("mamba_d_conv", 4)),
            expand=int(hf.get("mamba_expand", 2)),
            dt_rank=math.ceil(d / 16) if rank in ("auto", None) else int(rank), ssm_norms=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings") or 4096), **moe,
        )
