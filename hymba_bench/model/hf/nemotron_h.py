"""Nemotron-H checkpoints (`nemotron_h`): a stack of one-block layers, x + mixer(RMSNorm(x)), each
mixer Mamba-2 (`M`, "linear_attention"), attention without positions (`*`, "full_attention") or a
squared-ReLU MLP (`-`), as transformers' `NemotronHForCausalLM` builds them from
`layers_block_type` (or the older `hybrid_override_pattern`). Our layout spells the same pattern
with `ffn: none` and the `mlp` mixer; names are `backbone.layers.<i>.{norm,mixer}.*` ->
`layers.<i>.{input_layernorm,mixer}.*`.

Mamba-2's width is `mamba_num_heads * mamba_head_dim`, whatever `expand` says (`mamba2: {n_heads}`).
Its dt is clamped from below at `time_step_limit[0]` (`mamba2: {dt_min}`), as mamba-ssm's
`dt_limit` and transformers (5.25 on) do; `time_step_min` only initialises dt (transformers before
5.25 floored dt at it in prefill). transformers clamps in prefill only; ours clamps in every step
too, so that a decode step continues the prefill's function.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, layer_mixers, need, refuse_unmodelled
from hymba_bench.model.hf.mamba import _MIXER, _number

# transformers' layer types, the pattern's letters and the names older configs used -> our mixers
_LAYERS = {"linear_attention": "mamba2", "M": "mamba2", "mamba": "mamba2",
           "full_attention": "attention", "*": "attention", "attention": "attention",
           "mlp": "mlp", "-": "mlp"}
_MOE = ("moe", "E")


class NemotronHAdapter(HFAdapter):
    model_types = ("nemotron_h",)
    family = "Nemotron-H"
    layer_prefix = "backbone.layers"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"norm\.weight", "input_layernorm.weight"),
        (r"mixer\.(q_proj|k_proj|v_proj|o_proj|up_proj|down_proj)\.weight", r"mixer.\1.weight"),
        (_MIXER, r"mixer.\1"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"backbone.embeddings.weight": "embed_tokens.weight",
                                          "backbone.norm_f.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("mamba_hidden_act", ("silu", None), "another activation in Mamba-2's conv"),
                ("mlp_hidden_act", ("relu2", None), "another MLP activation"),
                ("attention_bias", (False, None), "biases on the attention projections"),
                ("mlp_bias", (False, None), "biases on the MLP projections"),
                ("use_bias", (False, None), "biases on Mamba-2's projections"),
                ("use_conv_bias", (True, None), "a convolution without bias"),
                ("sliding_window", (None,), "sliding-window attention"),
                ("num_nextn_predict_layers", (0, None), "multi-token prediction layers")]

    def layout(self, hf: dict[str, Any]) -> list[str]:
        kinds = hf.get("layers_block_type") or hf.get("layer_types")
        if kinds is None:
            kinds = list(need(hf, "hybrid_override_pattern", self.family))
        return layer_mixers(kinds, _LAYERS, shown=sorted(set(_LAYERS) - {"M", "*", "-"}),
                            refused=dict.fromkeys(_MOE, "Nemotron-H's routed experts"))

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d = int(need(hf, "hidden_size", fam))
        heads = int(need(hf, "num_attention_heads", fam))
        head_dim = int(hf.get("head_dim") or d // heads)
        eps = float(hf.get("layer_norm_epsilon", 1e-5))
        limit = hf.get("time_step_limit") or hf.get("mamba_dt_limit") or (0.0, float("inf"))
        if not isinstance(limit, list | tuple) or len(limit) != 2:
            raise HymbaBenchError(f"config.json: time_step_limit={limit!r}: expected [low, high]")
        low, high = (_number(x) for x in limit)
        if high != float("inf"):
            raise HymbaBenchError(f"config.json: time_step_limit={[low, high]!r} (dt clamped "
                                  "from above) is not supported")
        mamba2 = {"d_state": int(need(hf, "ssm_state_size", fam)),
                  "d_conv": int(hf.get("conv_kernel", hf.get("mamba_d_conv", 4))),
                  "head_dim": int(need(hf, "mamba_head_dim", fam)),
                  "n_heads": int(need(hf, "mamba_num_heads", fam)),
                  "n_groups": int(hf.get("n_groups", hf.get("mamba_n_groups", 1))),
                  "dt_min": low,
                  "norm_eps": eps}
        layout = self.layout(hf)
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d, n_layers=len(layout),
            n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            d_qk=head_dim, d_v=head_dim, intermediate_size=int(need(hf, "intermediate_size", fam)),
            layout=layout, ffn="none", rope=False, norm_eps=eps,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings") or 4096),
            mixer_options={"mamba2": mamba2, "mlp": {"activation": "relu2"}},
        )
