"""Qwen3-Next checkpoints (`qwen3_next`) with dense FFNs: Gated DeltaNet layers
("linear_attention") and gated attention layers ("full_attention", a sigmoid output gate from
q_proj's second half per head, RMSNorm on each head's q and k, rotary on a quarter of the
channels), each followed by a SwiGLU FFN, as transformers' `Qwen3NextForCausalLM` builds them.

Two layouts differ beyond names, so `convert` rewrites them before loading:
- transformers' `in_proj_qkvz` is grouped per q/k head, [q_h k_h v_h.. z_h..], and
  `in_proj_ba` likewise, [b_h.. a_h..]; ours is one in_proj, [q | k | v | z | b | a], each
  across all heads in order;
- its RMSNorms (the layers', the final one, q's and k's) scale by 1 + w (weights stored
  zero-centred); ours by w, so w + 1 is loaded. The gated norm inside Gated DeltaNet scales by w
  in both.
With `num_experts` > 0, every `decoder_sparse_step`-th layer's FFN is a mixture of experts: a
softmax router (top-k weights renormalised with `norm_topk_prob`) and a shared expert scaled by a
sigmoid gate. `mlp_only_layers` that break that period are refused, as are dense layers whose
width differs from the experts' (our design has one FFN width).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, need, refuse_unmodelled, rope_theta
from hymba_bench.model.hf.bamba import partial_rotary

if TYPE_CHECKING:
    from torch import Tensor

_LAYERS = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
# stored as w with the norm scaling by 1 + w
_ZERO_CENTRED = re.compile(r"model\.norm\.weight|model\.layers\.\d+\.(input_layernorm|"
                           r"post_attention_layernorm|self_attn\.q_norm|self_attn\.k_norm)\.weight")


class Qwen3NextAdapter(HFAdapter):
    model_types = ("qwen3_next",)
    family = "Qwen3-Next"
    layer_keys: ClassVar[list[tuple[str, str]]] = [
        (r"input_layernorm\.weight", "input_layernorm.weight"),
        (r"post_attention_layernorm\.weight", "post_mixer_layernorm.weight"),
        (r"linear_attn\.(in_proj\.weight|conv1d\.weight|dt_bias|A_log|norm\.weight|"
         r"out_proj\.weight)", r"mixer.\1"),
        (r"self_attn\.(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm)\.weight", r"mixer.\1.weight"),
        (r"mlp\.((experts\.\d+\.|shared_expert\.)?(gate_proj|up_proj|down_proj)|"
         r"shared_expert_gate)\.weight", r"ffn.\1.weight"),
        (r"mlp\.gate\.weight", "ffn.router.weight"),
    ]
    top_keys: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "embed_tokens.weight",
                                          "model.norm.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another activation (the FFN's and the conv's)"),
                ("attention_bias", (False, None), "biases on the attention projections")]

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        fam = self.family
        d, heads = int(need(hf, "hidden_size", fam)), int(need(hf, "num_attention_heads", fam))
        n_layers = int(need(hf, "num_hidden_layers", fam))
        kinds = hf.get("layer_types") or [
            "full_attention" if (i + 1) % int(hf.get("full_attention_interval", 4)) == 0
            else "linear_attention" for i in range(n_layers)]
        if len(kinds) != n_layers or any(k not in _LAYERS for k in kinds):
            raise HymbaBenchError(f"config.json: layer_types={kinds!r}: expected {n_layers} of "
                                  f"{sorted(_LAYERS)}")
        ffn = _ffn(hf, n_layers, fam)
        nk, nv = int(need(hf, "linear_num_key_heads", fam)), int(need(hf, "linear_num_value_heads", fam))
        dk, dv = int(need(hf, "linear_key_head_dim", fam)), int(need(hf, "linear_value_head_dim", fam))
        if dk != dv:
            raise HymbaBenchError(f"config.json: linear_key_head_dim={dk} differs from "
                                  f"linear_value_head_dim={dv}, which is not supported")
        if nv % nk or (nv * dv) % d:
            raise HymbaBenchError(f"config.json: linear_num_value_heads * linear_value_head_dim "
                                  f"= {nv * dv} must be a multiple of hidden_size = {d}, and "
                                  f"linear_num_value_heads of linear_num_key_heads")
        head_dim = int(hf.get("head_dim") or d // heads)
        eps = float(hf.get("rms_norm_eps", 1e-6))
        gdn = {"expand": nv * dv // d, "head_dim": dv, "v_heads_per_qk": nv // nk,
               "d_conv": int(hf.get("linear_conv_kernel_dim", 4)), "norm_eps": eps}
        attention = {"output_gate": True, "qk_norm": True,
                     "rope_dim": int(head_dim * partial_rotary(hf, 0.25))}
        return ModelConfig(
            name=name, description=f"{fam} weights in Hugging Face layout",
            vocab_size=int(need(hf, "vocab_size", fam)), d_model=d, n_layers=n_layers,
            n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            d_qk=head_dim, d_v=head_dim, **ffn, layout=[_LAYERS[k] for k in kinds], rope=True,
            rope_theta=rope_theta(hf),
            norm_eps=eps, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings") or 4096),
            mixer_options={"gated_deltanet": gdn, "attention": attention},
        )

    def convert(self, state: dict[str, Tensor], cfg: ModelConfig,
                hf: dict[str, Any]) -> dict[str, Tensor]:
        import torch

        o = cfg.options("gated_deltanet")
        hv, r, dh = o.v_heads(cfg), o.v_heads_per_qk, o.head_dim
        hk = hv // r
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            if key.endswith("linear_attn.in_proj_ba.weight"):
                continue  # joined with in_proj_qkvz below
            if key.endswith("linear_attn.in_proj_qkvz.weight"):
                ba_key = key.replace("in_proj_qkvz", "in_proj_ba")
                if ba_key not in state:
                    raise HymbaBenchError(f"{key} comes without {ba_key}", param="checkpoint")
                qkvz = value.reshape(hk, 2 * dh + 2 * r * dh, -1)
                q, k, v, z = qkvz.split([dh, dh, r * dh, r * dh], dim=1)
                b, a = state[ba_key].reshape(hk, 2 * r, -1).split([r, r], dim=1)
                parts = [t.reshape(-1, value.shape[-1]) for t in (q, k, v, z, b, a)]
                out[key.replace("in_proj_qkvz", "in_proj")] = torch.cat(parts, 0)
            elif _ZERO_CENTRED.fullmatch(key):
                out[key] = value.float().add(1.0).to(value.dtype)
            else:
                out[key] = value
        return out


def _ffn(hf: dict[str, Any], n_layers: int, family: str) -> dict[str, Any]:
    """The FFN fields of the design: dense everywhere, or experts every `decoder_sparse_step`."""
    dense = set(hf.get("mlp_only_layers") or [])
    experts, step = int(hf.get("num_experts") or 0), int(hf.get("decoder_sparse_step") or 1)
    width = int(need(hf, "intermediate_size", family))
    sparse = [i for i in range(n_layers) if i not in dense and experts > 0 and (i + 1) % step == 0]
    if not sparse:
        return {"ffn": "dense", "intermediate_size": width}
    periodic = [i for i in range(n_layers) if (i + 1) % step == 0]
    if sparse != periodic:
        raise HymbaBenchError(f"config.json: mlp_only_layers={sorted(dense)} leave experts on "
                              f"layers {sparse}, not every {step}th layer: not supported")
    moe_width = int(need(hf, "moe_intermediate_size", family))
    if step > 1 and moe_width != width:
        raise HymbaBenchError(f"config.json: moe_intermediate_size={moe_width} differs from the "
                              f"dense layers' intermediate_size={width}, which is not supported")
    return {"ffn": "moe", "intermediate_size": moe_width, "moe_experts": experts,
            "moe_top_k": int(hf.get("num_experts_per_tok", 10)), "moe_every": step,
            "moe_normalize": bool(hf.get("norm_topk_prob", True)),
            "moe_shared": int(need(hf, "shared_expert_intermediate_size", family)),
            "moe_shared_gate": True}
