"""Zamba2 checkpoints (`zamba2`): a stack of Mamba-2 layers, x + Mamba-2(RMSNorm(x)), in which the
layers `layers_block_type` calls "hybrid" first run a shared attention+MLP block and add its
output to the Mamba-2 layer's input (our `zamba2` mixer), as transformers' `Zamba2ForCausalLM`
builds them.

The j-th hybrid layer applies block j % `num_mem_blocks`. transformers saves each block's weights
once, under the first layer that applies it, with every application's adapters in lists indexed
by j (`linear_q_adapter_list.<j>`); `convert` hands each adapter to the layer that applies it and
each block to the layer that holds it. A checkpoint that repeats a block under a later layer
must repeat it exactly: transformers 5 leaves the blocks untied when `tie_word_embeddings` is
false, a function with a block per layer that Zamba2 does not define, and that is refused.

Names: `mamba.*` -> `mixer.*` (Mamba-2 layers), and in hybrid layers `mamba_decoder.mamba.*` ->
`mixer.mamba.*`, `mamba_decoder.input_layernorm` -> `mixer.norm`, `linear` -> `mixer.linear`,
`shared_transformer.{self_attn,feed_forward}.*` -> `mixer.shared.*`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, layer_mixers, need, refuse_unmodelled, rope_theta
from hymba_bench.model.hf.mamba import _number

if TYPE_CHECKING:
    from torch import Tensor

_LAYERS = {"mamba": "mamba2", "linear_attention": "mamba2", "hybrid": "zamba2"}
_SHARED = re.compile(r"model\.layers\.(\d+)\.shared_transformer\.(.+)")
_LIST = re.compile(r"(self_attn\.linear_[qkv]_adapter|feed_forward\.gate_up_proj_adapter)_list"
                   r"\.(\d+)\.([01]\.weight)")
_MAMBA2 = r"(in_proj\.weight|out_proj\.weight|conv1d\.weight|conv1d\.bias|dt_bias|A_log|D|norm\.weight)"


class Zamba2Adapter(HFAdapter):
    model_types = ("zamba2",)
    family = "Zamba2"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"mamba\." + _MAMBA2, r"mixer.\1"),
        (r"mamba_decoder\.mamba\." + _MAMBA2, r"mixer.mamba.\1"),
        (r"mamba_decoder\.input_layernorm\.weight", "mixer.norm.weight"),
        (r"linear\.weight", "mixer.linear.weight"),
        (r"shared_transformer\.(input_layernorm|pre_ff_layernorm)\.weight", r"mixer.shared.\1.weight"),
        (r"shared_transformer\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight",
         r"mixer.shared.\1.weight"),
        (r"shared_transformer\.feed_forward\.(gate_up_proj|down_proj)\.weight",
         r"mixer.shared.\1.weight"),
        (r"shared_transformer\.self_attn\.linear_([qkv])_adapter\.([01])\.weight",
         r"mixer.\1_adapter.\2.weight"),
        (r"shared_transformer\.feed_forward\.gate_up_proj_adapter\.([01])\.weight",
         r"mixer.gate_up_adapter.\1.weight"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.final_layernorm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("gelu", "silu", None), "another activation in the shared MLP"),
                ("add_bias_linear", (False, None), "biases on the projections"),
                ("use_conv_bias", (True, None), "a convolution without bias"),
                ("use_long_context", (False, None), "the long-context rotary rescaling")]

    def layout(self, hf: dict[str, Any]) -> list[str]:
        return layer_mixers(hf.get("layers_block_type") or hf.get("layer_types"), _LAYERS)

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d = int(need(hf, "hidden_size", fam))
        heads = int(need(hf, "num_attention_heads", fam))
        kv_heads = int(hf.get("num_key_value_heads") or heads)
        adapters = bool(hf.get("use_shared_attention_adapter", False))
        if adapters and kv_heads != heads:  # the k and v adapters are 2 * hidden_size wide
            raise HymbaBenchError(f"config.json: use_shared_attention_adapter with "
                                  f"num_key_value_heads={kv_heads} != num_attention_heads={heads} "
                                  "is not supported (transformers cannot run it either)")
        expand = _number(hf.get("mamba_expand", 2))
        d_ssm = int(expand * d)
        if d_ssm != expand * d:
            raise HymbaBenchError(f"config.json: mamba_expand={expand} x hidden_size={d} is not a "
                                  "whole width")
        n_mamba = int(need(hf, "n_mamba_heads", fam))
        if d_ssm % n_mamba:
            raise HymbaBenchError(f"config.json: n_mamba_heads={n_mamba} does not divide Mamba-2's "
                                  f"width {d_ssm}")
        mamba2 = {"d_state": int(need(hf, "mamba_d_state", fam)),
                  "d_conv": int(hf.get("mamba_d_conv", 4)),
                  "n_heads": n_mamba, "head_dim": d_ssm // n_mamba,
                  "n_groups": int(hf.get("mamba_ngroups", 1)),
                  "dt_min": _number(hf.get("time_step_min", 0.001)),
                  "norm_eps": 1e-5}  # transformers fixes the gated norm's epsilon
        zamba2 = {"mem_blocks": int(hf.get("num_mem_blocks", 1)),
                  "adapter_rank": int(hf.get("adapter_rank", 128)),
                  "attention_adapters": adapters, "activation": hf.get("hidden_act") or "gelu"}
        layout = self.layout(hf)
        head_dim = 2 * d // heads  # the block reads the stream and the embeddings side by side
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d, n_layers=len(layout),
            n_heads=heads, n_kv_heads=kv_heads, d_qk=head_dim, d_v=head_dim,
            intermediate_size=int(hf.get("intermediate_size") or 4 * d),
            layout=layout, ffn="none", rope=bool(hf.get("use_mem_rope", False)),
            rope_theta=rope_theta(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            max_seq_len=int(hf.get("max_position_embeddings") or 4096),
            mixer_options={"mamba2": mamba2, "zamba2": zamba2},
        )

    def convert(self, state: dict[str, Tensor], cfg: ModelConfig,
                hf: dict[str, Any]) -> dict[str, Tensor]:
        """Each application's adapters moved to its layer (`..._adapter.<0|1>.weight`), each
        block's weights to the layer that holds them."""
        import torch

        hybrid = [spec.index for spec in cfg.layers if spec.mixer == "zamba2"]
        blocks = cfg.options("zamba2").mem_blocks
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            m = _SHARED.fullmatch(key)
            if m is None:
                out[key] = value
                continue
            layer, rest = int(m.group(1)), m.group(2)
            if layer not in hybrid:
                raise HymbaBenchError(f"{key}: layer {layer} is not a hybrid layer")
            block = hybrid.index(layer) % blocks
            listed = _LIST.fullmatch(rest)
            if listed is not None:
                j = int(listed.group(2))
                if j >= len(hybrid) or j % blocks != block:
                    raise HymbaBenchError(f"{key}: adapter {j} does not belong to the block that "
                                          f"layer {layer} applies")
                target = f"model.layers.{hybrid[j]}.shared_transformer." \
                         f"{listed.group(1)}.{listed.group(3)}"
            else:
                target = f"model.layers.{hybrid[block]}.shared_transformer.{rest}"
            if target in out and not torch.equal(out[target], value):
                raise HymbaBenchError(f"{key}: differs from the copy of the same shared block "
                                      f"under layer {hybrid[block]} (untied blocks are not "
                                      "supported)")
            out[target] = value
        return out
