"""Llama-layout checkpoints (`llama`, `mistral`, `qwen2`): pre-norm attention + SwiGLU layers,
rotary positions, names one to one with ours (`self_attn.*` -> `mixer.*`, `mlp.*` -> `ffn.*`).

Mistral's `sliding_window` S keeps S keys (q - k < S); ours keeps W + 1 (q - k <= W), so
W = S - 1. Qwen2 adds biases to the q, k and v projections (`attention: {qkv_bias: true}`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, need, refuse_unmodelled, rope_theta


class LlamaAdapter(HFAdapter):
    model_types = ("llama",)
    family = "Llama"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"post_attention_layernorm\.weight", "post_mixer_layernorm.weight"),
        (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.(weight|bias)", r"mixer.\1.\2"),
        (r"mlp\.(gate_proj|up_proj|down_proj)\.weight", r"ffn.\1.weight"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.norm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}
    qkv_bias: ClassVar[bool] = False

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another FFN activation"),
                ("attention_bias", (False, None), "biases on the attention projections"),
                ("mlp_bias", (False, None), "biases on the FFN projections"),
                ("pretraining_tp", (1, None), "a tensor-parallel split of the projections")]

    def window(self, hf: dict[str, Any]) -> int | None:
        return None

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d, heads = int(need(hf, "hidden_size", fam)), int(need(hf, "num_attention_heads", fam))
        head_dim = int(hf.get("head_dim") or d // heads)
        window = self.window(hf)
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d,
            n_layers=int(need(hf, "num_hidden_layers", fam)), n_heads=heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or heads), d_qk=head_dim, d_v=head_dim,
            intermediate_size=int(need(hf, "intermediate_size", fam)), layout=["attention"],
            sliding_window=window, global_layers=[] if window is not None else None,
            rope=True, rope_theta=rope_theta(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            mixer_options={"attention": {"qkv_bias": True}} if self.qkv_bias else {},
        )


class MistralAdapter(LlamaAdapter):
    model_types = ("mistral",)
    family = "Mistral"

    def window(self, hf: dict[str, Any]) -> int | None:
        s = hf.get("sliding_window")
        if s is None:
            return None
        if int(s) < 2:
            raise HymbaBenchError(f"config.json: sliding_window={s!r}: expected at least 2 keys")
        return int(s) - 1


class Qwen2Adapter(LlamaAdapter):
    model_types = ("qwen2",)
    family = "Qwen2"
    qkv_bias = True

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [*[f for f in super().fixed() if f[0] != "attention_bias"],
                ("use_sliding_window", (False, None), "sliding-window attention in some layers")]
