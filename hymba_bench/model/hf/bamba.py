"""Bamba checkpoints (`bamba`; IBM's Bamba-9B, the layout of Granite-4.0-H's dense layers): Llama's
pre-norm layers, x + mixer(RMSNorm(x)) then x + SwiGLU(RMSNorm(x)), with Mamba-2 as the mixer
except at `attn_layer_indices`, where it is attention with rotary positions on half of each
head's channels (`partial_rotary_factor`, which transformers fixes at 0.5 for Bamba:
`attention: {rope_dim}`). Names: `mamba.*` and `self_attn.*` -> `mixer.*`, `feed_forward.*` ->
`ffn.*`, `pre_ff_layernorm` -> `post_mixer_layernorm`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, need, refuse_unmodelled, rope_theta
from hymba_bench.model.hf.mamba import refuse_dt_clamp

_MAMBA = r"mamba\.(in_proj\.weight|out_proj\.weight|conv1d\.weight|conv1d\.bias|dt_bias|A_log|D|" \
         r"norm\.weight)"


def partial_rotary(hf: dict[str, Any], default: float) -> float:
    """The fraction of a head's channels that rotate (transformers 5: in `rope_parameters`)."""
    params = hf.get("rope_parameters") or {}
    return float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", default)))


def refuse_partial_rotary(hf: dict[str, Any]) -> None:
    if partial_rotary(hf, 1.0) != 1.0:
        raise HymbaBenchError("config.json: partial_rotary_factor (rotary on part of a head) is "
                              "not supported for this family")


def mamba2_options(hf: dict[str, Any], family: str, d_model: int, eps: float) -> dict[str, Any]:
    """The `mamba2:` block of Bamba's `mamba_*` keys (Granite-4.0-H's too)."""
    refuse_dt_clamp(hf)
    expand, heads = int(hf.get("mamba_expand", 2)), int(need(hf, "mamba_n_heads", family))
    head = hf.get("mamba_d_head", "auto")
    head = expand * d_model // heads if head in ("auto", None) else int(head)
    if head * heads != expand * d_model:
        raise HymbaBenchError(f"config.json: mamba_n_heads * mamba_d_head = {head * heads} is not "
                              f"mamba_expand * hidden_size = {expand * d_model}")
    return {"d_state": int(need(hf, "mamba_d_state", family)),
            "d_conv": int(hf.get("mamba_d_conv", 4)), "expand": expand, "head_dim": head,
            "n_groups": int(hf.get("mamba_n_groups", 1)), "norm_eps": eps}


class BambaAdapter(HFAdapter):
    model_types = ("bamba",)
    family = "Bamba"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"pre_ff_layernorm\.weight", "post_mixer_layernorm.weight"),
        (_MAMBA, r"mixer.\1"),
        (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight", r"mixer.\1.weight"),
        (r"feed_forward\.(gate_proj|up_proj|down_proj)\.weight", r"ffn.\1.weight"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.final_layernorm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another activation (the FFN's and Mamba-2's conv)"),
                ("attention_bias", (False, None), "biases on the attention projections"),
                ("mlp_bias", (False, None), "biases on the FFN projections"),
                ("mamba_proj_bias", (False, None), "biases on Mamba-2's projections"),
                ("mamba_conv_bias", (True, None), "a convolution without bias")]

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d, heads = int(need(hf, "hidden_size", fam)), int(need(hf, "num_attention_heads", fam))
        n_layers = int(need(hf, "num_hidden_layers", fam))
        head_dim = int(hf.get("head_dim") or d // heads)
        attn = set(hf.get("attn_layer_indices") or [])
        if not attn <= set(range(n_layers)):
            raise HymbaBenchError(f"config.json: attn_layer_indices={sorted(attn)} name layers "
                                  f"outside 0..{n_layers - 1}")
        eps = float(hf.get("rms_norm_eps", 1e-5))
        mamba2 = mamba2_options(hf, fam, d, eps)
        rope_dim = int(head_dim * partial_rotary(hf, 0.5))
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d, n_layers=n_layers,
            n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            d_qk=head_dim, d_v=head_dim, intermediate_size=int(need(hf, "intermediate_size", fam)),
            layout=["attention" if i in attn else "mamba2" for i in range(n_layers)],
            rope=True, rope_theta=rope_theta(hf), norm_eps=eps,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings") or 4096),
            mixer_options={"mamba2": mamba2, "attention": {"rope_dim": rope_dim}},
        )
