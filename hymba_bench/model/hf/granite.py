"""Granite-4.0-H checkpoints (`granitemoehybrid`): Bamba's layers (Mamba-2, with attention where
`layer_types` says so) whose FFN is a shared SwiGLU (`shared_mlp`), plus, when
`num_local_experts` > 0, routed experts (top-k weights renormalised over the k), as
transformers' `GraniteMoeHybridForCausalLM` builds them. Attention has rotary positions only
with `position_embedding_type: rope` (Granite-4.0-H itself has none).

Granite's µP multipliers are constants, so `convert` folds them into the weights they scale, and
the model computes the same function with no extra operations:
- `embedding_multiplier` m into the embedding; `logits_scaling` s (a divisor) into the final
  norm's weight, which only feeds the head: w / s, and w / (m s) when the head is the scaled
  embedding (tied);
- `residual_multiplier` r into every branch's last projection (o_proj, Mamba-2's out_proj, the
  experts' and the shared FFN's output): x + r f(x);
- `attention_multiplier` a (the softmax scale, 1/sqrt(d) elsewhere) into q_proj, as a sqrt(d).
A model trained from such a design would see other gradients; for measuring the released weights
the function is the point. Names: fused `input_linear` (gate ‖ up) split into gate_proj and
up_proj, `output_linear` -> down_proj, `router.layer` -> the router.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import (
    HFAdapter,
    multiplier,
    need,
    refuse_unmodelled,
    rope_theta,
    scaled,
)
from hymba_bench.model.hf.bamba import _MAMBA, mamba2_options, refuse_partial_rotary

if TYPE_CHECKING:
    from torch import Tensor

_LAYERS = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "attention",
           "full_attention": "attention"}
_LAYER = re.compile(r"(model\.layers\.\d+)\.(.+)")
_MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier",
                "logits_scaling")


class GraniteMoeHybridAdapter(HFAdapter):
    model_types = ("granitemoehybrid",)
    family = "Granite-4.0-H"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"post_attention_layernorm\.weight", "post_mixer_layernorm.weight"),
        (_MAMBA, r"mixer.\1"),
        (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight", r"mixer.\1.weight"),
        # `convert` has already named the FFN's tensors ours
        (r"ffn\.((experts\.\d+\.|shared_expert\.)?(gate_proj|up_proj|down_proj)|router)\.weight",
         r"ffn.\1.weight"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.norm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another activation (the FFN's and Mamba-2's conv)"),
                ("attention_bias", (False, None), "biases on the attention projections"),
                ("mamba_proj_bias", (False, None), "biases on Mamba-2's projections"),
                ("mamba_conv_bias", (True, None), "a convolution without bias"),
                ("position_embedding_type", (None, "nope", "rope"), "another position encoding")]

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d, heads = int(need(hf, "hidden_size", fam)), int(need(hf, "num_attention_heads", fam))
        n_layers = int(need(hf, "num_hidden_layers", fam))
        kinds = hf.get("layer_types") or hf.get("layers_block_type") or ["mamba"] * n_layers
        if not isinstance(kinds, list) or len(kinds) != n_layers:
            raise HymbaBenchError(f"config.json: layer_types has {len(kinds)} entries for "
                                  f"{n_layers} layers")
        for kind in kinds:
            if kind not in _LAYERS:
                raise HymbaBenchError(f"config.json: layer type {kind!r} is not supported "
                                      f"(supported: {', '.join(_LAYERS)})")
        rope = hf.get("position_embedding_type") == "rope"
        if rope:
            refuse_partial_rotary(hf)
        for key in _MULTIPLIERS:
            multiplier(hf, key)
        eps = float(hf.get("rms_norm_eps", 1e-6))
        experts = int(hf.get("num_local_experts") or 0)
        shared = int(need(hf, "shared_intermediate_size", fam))
        ffn: dict[str, Any] = {"ffn": "dense", "intermediate_size": shared}
        if experts > 0:  # every layer routes, and adds the shared FFN
            ffn = {"ffn": "moe", "moe_experts": experts, "moe_every": 1,
                   "moe_top_k": int(hf.get("num_experts_per_tok", 2)), "moe_normalize": True,
                   "moe_shared": shared,
                   "intermediate_size": int(need(hf, "intermediate_size", fam))}
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d, n_layers=n_layers,
            n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            d_qk=d // heads, d_v=d // heads, layout=[_LAYERS[k] for k in kinds],
            rope=rope, rope_theta=rope_theta(hf) if rope else 10000.0, norm_eps=eps,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings") or 4096),
            mixer_options={"mamba2": mamba2_options(hf, fam, d, eps)}, **ffn,
        )

    def convert(self, state: dict[str, Tensor], cfg: ModelConfig,
                hf: dict[str, Any]) -> dict[str, Tensor]:
        embed, residual, attention, logits = (multiplier(hf, k) for k in _MULTIPLIERS)
        q_scale = attention * math.sqrt(cfg.d_qk)
        head = 1.0 / logits / (embed if cfg.tie_embeddings else 1.0)
        shared = "shared_expert." if cfg.ffn == "moe" else ""
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            m = _LAYER.fullmatch(key)
            part = m.group(2) if m else ""
            if key == "model.embed_tokens.weight":
                out[key] = scaled(value, embed)
            elif key == "model.norm.weight":
                out[key] = scaled(value, head)
            elif part in ("self_attn.o_proj.weight", "mamba.out_proj.weight"):
                out[key] = scaled(value, residual)
            elif part == "self_attn.q_proj.weight":
                out[key] = scaled(value, q_scale)
            elif m and part.endswith("input_linear.weight"):
                gate, up = value.chunk(2, dim=-2)  # (.., 2I, D): gate rows, then up rows
                where = f"{m.group(1)}.ffn."
                if part.startswith("shared_mlp."):
                    out[where + shared + "gate_proj.weight"] = gate
                    out[where + shared + "up_proj.weight"] = up
                else:  # the experts' weights, stacked (E, 2I, D)
                    for e in range(value.shape[0]):
                        out[f"{where}experts.{e}.gate_proj.weight"] = gate[e]
                        out[f"{where}experts.{e}.up_proj.weight"] = up[e]
            elif m and part.endswith("output_linear.weight"):
                where, down = f"{m.group(1)}.ffn.", scaled(value, residual)
                if part.startswith("shared_mlp."):
                    out[where + shared + "down_proj.weight"] = down
                else:
                    for e in range(value.shape[0]):
                        out[f"{where}experts.{e}.down_proj.weight"] = down[e]
            elif m and part == "block_sparse_moe.router.layer.weight":
                out[f"{m.group(1)}.ffn.router.weight"] = value
            else:
                out[key] = value
        return out
