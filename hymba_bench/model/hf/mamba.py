"""Mamba-layout checkpoints (`mamba`, `mamba2`): a stack of pre-norm SSM mixers, no FFN, as in
mamba-ssm's language model and transformers' `MambaForCausalLM` / `Mamba2ForCausalLM`. The
mixers' parameter names are mamba-ssm's, as ours are: `backbone.layers.<i>.mixer.*` ->
`layers.<i>.mixer.*`. Mamba-2's in_proj is [z | x B C | dt] in both.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.hf.adapter import HFAdapter, need, refuse_unmodelled

_MIXER = r"mixer\.(in_proj\.weight|out_proj\.weight|conv1d\.weight|conv1d\.bias|x_proj\.weight|" \
         r"dt_proj\.weight|dt_proj\.bias|dt_bias|A_log|D|norm\.weight)"


def _number(value: Any) -> float:
    """A float as config.json holds it: a number, `Infinity`, or transformers 5's
    {"__float__": "Infinity"} for values JSON cannot spell."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HymbaBenchError(f"config.json: {value!r} is not a number") from None


def refuse_dt_clamp(hf: dict[str, Any]) -> None:
    """Mamba-2's dt clamp (`time_step_limit` other than [0, inf]) is not modelled."""
    limit = [_number(x) for x in hf.get("time_step_limit") or (0.0, math.inf)]
    if limit[0] > 0.0 or limit[1] != math.inf:
        raise HymbaBenchError(f"config.json: time_step_limit={limit!r} (dt clamped) is not "
                              "supported")


class MambaAdapter(HFAdapter):
    model_types = ("mamba",)
    family = "Mamba"
    layer_prefix = "backbone.layers"
    layer_keys: ClassVar[list[tuple[str, str]]] = [(r"norm\.weight", "input_layernorm.weight"),
                                                   (_MIXER, r"mixer.\1")]
    top_keys: ClassVar[dict[str, str]] = {"backbone.embeddings.weight": "embed_tokens.weight",
                                          "backbone.norm_f.weight": "norm.weight",
                                          "lm_head.weight": "lm_head.weight"}

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [("hidden_act", ("silu",), "another activation"),
                ("use_bias", (False, None), "biases on the in/out projections"),
                ("use_conv_bias", (True, None), "a convolution without bias")]

    def base(self, hf: dict[str, Any], name: str) -> dict[str, Any]:
        d = int(need(hf, "hidden_size", self.family))
        return dict(name=name, description=f"{self.family} weights in Hugging Face layout",
                    vocab_size=int(need(hf, "vocab_size", self.family)), d_model=d,
                    n_layers=int(need(hf, "num_hidden_layers", self.family)), n_heads=1,
                    n_kv_heads=1, ffn="none", rope=False,
                    norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                    tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                    max_seq_len=int(hf.get("max_position_embeddings") or 2048))

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        base = self.base(hf, name)
        d, expand = base["d_model"], int(hf.get("expand", 2))
        if int(hf.get("intermediate_size") or expand * d) != expand * d:
            raise HymbaBenchError(f"config.json: intermediate_size={hf['intermediate_size']} is "
                                  f"not expand * hidden_size = {expand * d}")
        rank = hf.get("time_step_rank", "auto")
        return ModelConfig(**base, layout=["mamba"], d_state=int(need(hf, "state_size", "Mamba")),
                           d_conv=int(hf.get("conv_kernel", 4)), expand=expand,
                           dt_rank=math.ceil(d / 16) if rank == "auto" else int(rank),
                           ssm_norms=False)


class Mamba2Adapter(MambaAdapter):
    model_types = ("mamba2",)
    family = "Mamba-2"

    def fixed(self) -> list[tuple[str, tuple[Any, ...], str]]:
        return [*super().fixed(),
                ("rms_norm", (True, None), "no gated RMSNorm before out_proj"),
                ("norm_before_gate", (False, None), "the norm before the gate")]

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        refuse_unmodelled(hf, self.fixed())
        refuse_dt_clamp(hf)
        base = self.base(hf, name)
        d, expand = base["d_model"], int(hf.get("expand", 2))
        head_dim = int(need(hf, "head_dim", self.family))
        heads = int(need(hf, "num_heads", self.family))
        if heads * head_dim != expand * d:
            raise HymbaBenchError(f"config.json: num_heads * head_dim = {heads * head_dim} is not "
                                  f"expand * hidden_size = {expand * d} (an MLP inside in_proj "
                                  "is not modelled)")
        options = {"d_state": int(need(hf, "state_size", self.family)),
                   "d_conv": int(hf.get("conv_kernel", 4)), "expand": expand,
                   "head_dim": head_dim, "n_groups": int(hf.get("n_groups", 1)),
                   "norm_eps": base["norm_eps"]}
        return ModelConfig(**base, layout=["mamba2"], mixer_options={"mamba2": options})
