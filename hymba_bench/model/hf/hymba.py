"""Released Hymba weights (Hugging Face layout, e.g. nvidia/Hymba-1.5B-Base).

The released `HymbaForCausalLM` names its parameters `model.layers.<i>.mamba.*` (the hybrid-head
block: one `in_proj` giving Q, K, V, the SSM input and its gate, in that order, as ours does; no K,
V slices in KV-consumer layers), `model.layers.<i>.moe.experts.0.*` (a single-expert "MoE", i.e.
the SwiGLU FFN), `model.memory_tokens` (the meta tokens) and `model.final_layernorm`. Its SSM
parameters sit in one-element lists (`x_proj.0`, `A_log.0`). The configuration comes from the
checkpoint's `config.json` (`model_type: hymba`), so any member of the family loads, not only
the 1.5B. Loading is strict: a key that maps nowhere, or a parameter left unfilled, is an error.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from hymba_bench.design.config import ModelConfig, ntk_scale
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, refuse_unmodelled

# (HF pattern, ours); {i} is a layer index
# (every Hymba layer is hybrid heads; their Mamba-1 branch is `mixer.ssm`)
_LAYER_KEYS = [
    (r"input_layernorm\.weight", "input_layernorm.weight"),
    (r"pre_moe_layernorm\.weight", "post_mixer_layernorm.weight"),
    (r"moe\.experts\.0\.(gate_proj|up_proj|down_proj)\.weight", r"ffn.\1.weight"),
    (r"mamba\.(in_proj|out_proj)\.weight", r"mixer.\1.weight"),
    (r"mamba\.conv1d\.(weight|bias)", r"mixer.ssm.conv1d.\1"),
    (r"mamba\.x_proj\.0\.weight", "mixer.ssm.x_proj.weight"),
    (r"mamba\.dt_proj\.0\.(weight|bias)", r"mixer.ssm.dt_proj.\1"),
    (r"mamba\.A_log\.0", "mixer.ssm.A_log"),
    (r"mamba\.D\.0", "mixer.ssm.D"),
    (r"mamba\.(dt|B|C)_layernorm\.weight", r"mixer.ssm.\1_layernorm.weight"),
    (r"mamba\.pre_avg_layernorm1\.weight", "mixer.attn_norm.weight"),
    (r"mamba\.pre_avg_layernorm2\.weight", "mixer.ssm_norm.weight"),
]
_TOP_KEYS = {"model.embed_tokens.weight": "embed_tokens.weight",
             "model.memory_tokens": "meta_tokens",
             "model.final_layernorm.weight": "norm.weight"}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # recomputed, not learned


def rope_scale_from_hf(hf: dict[str, Any]) -> float:
    """The NTK scale NVIDIA's rotary embedding derives from `rope_type` (see `config.ntk_scale`)."""
    rope_type = hf.get("rope_type")
    if rope_type in (None, "default"):
        return 1.0
    if rope_type == "ntk":
        orig = hf.get("orig_max_position_embeddings")
        if not orig:
            raise HymbaBenchError("config.json: rope_type 'ntk' needs orig_max_position_embeddings")
        return ntk_scale(int(hf["max_position_embeddings"]) / int(orig))
    raise HymbaBenchError(f"config.json: rope_type {rope_type!r} is not supported "
                          "(expected 'ntk', 'default' or null)")


# Settings of the released code that change the function but that we do not model: refuse them
# rather than compute something else. (key, the value(s) we implement, what it would change)
_FIXED = [
    ("memory_tokens_interspersed_every", (0, None), "meta tokens repeated inside the sequence"),
    ("kq_norm", (None, "none"), "RMSNorm on queries and keys"),
    ("num_mamba", (1, None), "several SSMs per layer"),
    ("mamba_conv_bias", (True, None), "a convolution without bias"),
    ("mamba_proj_bias", (False, None), "biases on the in/out projections"),
    ("hidden_act", ("silu", None), "another FFN activation"),
    ("num_experts", (1, None), "a mixture-of-experts FFN"),
    ("kv_reuse_every_i_layer", (-1, 0, None), "periodic KV reuse (use kv_reuse_group)"),
    ("attn_hidden_size", (-1, None), "attention narrower than the hidden size"),
]


def config_from_hf(hf: dict[str, Any], name: str = "hymba-hf") -> ModelConfig:
    """Our configuration for a Hymba `config.json`, read the way NVIDIA's code reads it."""
    refuse_unmodelled(hf, _FIXED)
    try:
        n_layers, d, heads = hf["num_hidden_layers"], hf["hidden_size"], hf["num_attention_heads"]
        expand = int(hf.get("mamba_expand", 2))
        groups = hf.get("kv_reuse_group") or []
        window = hf.get("sliding_window")  # the mask keeps q - k <= W, as ours (see masks.py)
        dt_rank = hf.get("mamba_dt_rank", "auto")
        d_qk = int(hf.get("kq_head_dim", -1))
        d_v = int(hf.get("v_head_dim", -1))
        max_len = int(hf.get("max_position_embeddings", 2048))
        return ModelConfig(
            name=name, description="Hymba weights in Hugging Face layout",
            vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=n_layers, n_heads=heads,
            n_kv_heads=int(hf["num_key_value_heads"]),
            d_qk=d_qk if d_qk > 0 else d // heads,
            d_v=d_v if d_v > 0 else expand * d // heads,
            intermediate_size=int(hf["intermediate_size"]), layout=["hybrid"],
            sliding_window=window,
            global_layers=list(hf.get("global_attn_idx") or []) if window else None,
            kv_share=[list(g) for g in groups] if groups else 1,
            meta_tokens=int(hf.get("num_memory_tokens", 0)), d_state=int(hf["mamba_d_state"]),
            d_conv=int(hf["mamba_d_conv"]), expand=expand,
            dt_rank=math.ceil(d / 16) if dt_rank == "auto" else int(dt_rank),
            ssm_norms=bool(hf.get("mamba_inner_layernorms", True)),
            # NVIDIA's config defaults `rope` to false: no positional encoding unless asked for
            rope=bool(hf.get("rope", False)), rope_theta=float(hf.get("rope_theta", 10000.0)),
            rope_scaling=rope_scale_from_hf(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), max_seq_len=max_len,
        )
    except KeyError as exc:
        raise HymbaBenchError(f"config.json: missing Hymba key {exc.args[0]!r}") from None




class HymbaAdapter(HFAdapter):
    model_types = ("hymba",)
    family = "Hymba"
    layer_keys: ClassVar[list[tuple[str, str]]] = _LAYER_KEYS
    top_keys: ClassVar[dict[str, str]] = {**_TOP_KEYS, "lm_head.weight": "lm_head.weight"}
    ignored: ClassVar[re.Pattern[str]] = _IGNORED

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        return config_from_hf(hf, name)
