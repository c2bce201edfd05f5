"""Released Hymba weights (Hugging Face layout, e.g. nvidia/Hymba-1.5B-Base) -> a `HybridLM`.

The released `HymbaForCausalLM` names its parameters `model.layers.<i>.mamba.*` (the hybrid-head
block: one `in_proj` giving Q, K, V, the SSM input and its gate, in that order, as ours does; no K,
V slices in KV-consumer layers), `model.layers.<i>.moe.experts.0.*` (a single-expert "MoE", i.e.
the SwiGLU FFN), `model.memory_tokens` (the meta tokens) and `model.final_layernorm`. Its SSM
parameters sit in one-element lists (`x_proj.0`, `A_log.0`). The configuration comes from the
checkpoint's `config.json` (`model_type: hymba`), so any member of the family loads, not only
the 1.5B. Loading is strict: a key that maps nowhere, or a parameter left unfilled, is an error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from hymba_bench.design.config import ModelConfig, ntk_scale
from hymba_bench.errors import HymbaBenchError

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


def map_key(key: str) -> str | None:
    """A Hugging Face Hymba parameter name -> ours (None: not a parameter we hold)."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if m is not None:
        for pattern, ours in _LAYER_KEYS:
            if re.fullmatch(pattern, m.group(2)):
                return f"layers.{m.group(1)}." + re.sub(pattern, ours, m.group(2))
    return None


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
    for key, allowed, what in _FIXED:
        if hf.get(key) not in allowed:
            raise HymbaBenchError(f"config.json: {key}={hf[key]!r} ({what}) is not supported")
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


def is_hf_checkpoint(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "hymba"
    except json.JSONDecodeError:
        return False


def load_hf_checkpoint(path: Path, device: str | torch.device = "cpu") -> Any:
    """Build the model a Hugging Face Hymba checkpoint describes and load its weights."""
    from hymba_bench.accuracy.checkpoint import aliases, read_safetensors
    from hymba_bench.model.lm import instantiate

    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HymbaBenchError(f"{path / 'config.json'}: not a JSON config ({exc})") from None
    cfg = config_from_hf(raw, name=path.name)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise HymbaBenchError(f"{path} has no *.safetensors weights", param="checkpoint")
    model = instantiate(cfg, device, seed=None)  # every weight is loaded next
    ours = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, value in read_safetensors(file, device).items():
            if (key == "lm_head.weight" and cfg.tie_embeddings) or _IGNORED.fullmatch(key):
                continue
            target = map_key(key) if key != "lm_head.weight" else "lm_head.weight"
            if target is None or target not in ours:
                raise HymbaBenchError(f"{file.name}: {key} has no counterpart in "
                                      f"{cfg.name} (is this a Hymba checkpoint?)", param="checkpoint")
            if tuple(value.shape) != tuple(ours[target].shape):
                raise HymbaBenchError(f"{key}: shape {tuple(value.shape)}, expected "
                                      f"{tuple(ours[target].shape)} for {target}", param="checkpoint")
            state[target] = value
    missing = sorted(set(ours) - set(state) - aliases(model))
    if missing:
        raise HymbaBenchError(f"{path} lacks {len(missing)} weights, e.g. {missing[0]}", param="checkpoint")
    model.load_state_dict(state, strict=False)
    return model
