"""Released Hymba weights load by name mapping: tested on a small random checkpoint written in the
Hugging Face key layout and shapes (the released `HymbaForCausalLM`'s, worked out from its config
here independently of the mapping under test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hymba_bench.errors import HymbaBenchError
from hymba_bench.hf import config_from_hf, is_hf_checkpoint, load_hf_checkpoint
from hymba_bench.lm_eval_adapter import HymbaBenchLM

HF_CONFIG = {  # the 1.5B's config.json keys, at a small size
    "model_type": "hymba", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 6,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
    "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 4,
    "mamba_inner_layernorms": True, "num_memory_tokens": 4, "sliding_window": 8,
    "global_attn_idx": [0, 5], "kv_reuse_group": [[1, 2], [3, 4]], "rope_theta": 10000.0,
    "orig_max_position_embeddings": 128, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def hf_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.05  # noqa: E731
    d, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    inner, n, rank = cfg["mamba_expand"] * d, cfg["mamba_d_state"], cfg["mamba_dt_rank"]
    k_size, v_size = kv * d // heads, kv * inner // heads
    consumers = {i for group in cfg["kv_reuse_group"] for i in group[1:]}
    state = {"model.embed_tokens.weight": r(cfg["vocab_size"], d),
             "model.memory_tokens": r(cfg["num_memory_tokens"], d),
             "model.final_layernorm.weight": 1 + r(d),
             "lm_head.weight": None}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        latent = d + inner if i in consumers else d + k_size + v_size + inner
        state.update({
            p + "input_layernorm.weight": 1 + r(d), p + "pre_moe_layernorm.weight": 1 + r(d),
            p + "moe.experts.0.gate_proj.weight": r(cfg["intermediate_size"], d),
            p + "moe.experts.0.up_proj.weight": r(cfg["intermediate_size"], d),
            p + "moe.experts.0.down_proj.weight": r(d, cfg["intermediate_size"]),
            p + "mamba.in_proj.weight": r(latent + inner, d),
            p + "mamba.out_proj.weight": r(d, inner),
            p + "mamba.conv1d.weight": r(inner, 1, cfg["mamba_d_conv"]),
            p + "mamba.conv1d.bias": r(inner),
            p + "mamba.x_proj.0.weight": r(rank + 2 * n, inner),
            p + "mamba.dt_proj.0.weight": r(inner, rank), p + "mamba.dt_proj.0.bias": r(inner),
            p + "mamba.A_log.0": torch.log(torch.arange(1, n + 1.0)).repeat(inner, 1) + r(inner, n),
            p + "mamba.D.0": 1 + r(inner),
            p + "mamba.dt_layernorm.weight": 1 + r(rank), p + "mamba.B_layernorm.weight": 1 + r(n),
            p + "mamba.C_layernorm.weight": 1 + r(n),
            p + "mamba.pre_avg_layernorm1.weight": 1 + r(inner),
            p + "mamba.pre_avg_layernorm2.weight": 1 + r(inner),
            p + "mamba.self_attn.rotary_emb.inv_freq": torch.ones(d // heads // 2),
        })
    return state


def write_checkpoint(path: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    items = list(state.items())
    half = len(items) // 2  # two shards, as released checkpoints are
    save_file({k: v.contiguous() for k, v in items[:half] if k != "lm_head.weight"},
              str(path / "model-00001-of-00002.safetensors"))
    save_file({k: v.contiguous() for k, v in items[half:] if k != "lm_head.weight"},
              str(path / "model-00002-of-00002.safetensors"))
    return path


def test_config_follows_the_release_plan() -> None:
    cfg = config_from_hf(HF_CONFIG)
    assert [s.attention for s in cfg.layers] == ["global"] + ["sliding"] * 4 + ["global"]
    assert [s.kv for s in cfg.layers] == ["own", "own", "shared:1", "own", "shared:3", "own"]
    assert (cfg.d_qk, cfg.d_v, cfg.meta_tokens, cfg.rope_scaling) == (16, 32, 4, 4.0)


def test_weights_land_where_they_belong(tmp_path: Path) -> None:
    state = hf_state(HF_CONFIG)
    path = write_checkpoint(tmp_path / "hymba-small", HF_CONFIG, state)
    assert is_hf_checkpoint(path)
    model = load_hf_checkpoint(path)
    ours = model.state_dict()
    torch.testing.assert_close(ours["meta_tokens"], state["model.memory_tokens"])
    torch.testing.assert_close(ours["norm.weight"], state["model.final_layernorm.weight"])
    torch.testing.assert_close(ours["layers.2.mixer.in_proj.weight"],
                               state["model.layers.2.mamba.in_proj.weight"])
    torch.testing.assert_close(ours["layers.3.mixer.A_log"], state["model.layers.3.mamba.A_log.0"])
    torch.testing.assert_close(ours["layers.4.mixer.attn_norm.weight"],
                               state["model.layers.4.mamba.pre_avg_layernorm1.weight"])
    torch.testing.assert_close(ours["layers.5.ffn.down_proj.weight"],
                               state["model.layers.5.moe.experts.0.down_proj.weight"])
    assert model.lm_head.weight is model.embed_tokens.weight
    # every parameter came from the file: none kept its initial value
    loaded = {k for k in state if "inv_freq" not in k and k != "lm_head.weight"}
    assert len(loaded) == len([k for k in ours if k != "lm_head.weight"])
    ids = torch.randint(0, 300, (2, 30))
    with torch.no_grad():  # and the loaded model decodes like its forward pass
        full = model.eval()(ids)
        cache = model.allocate_cache(2, 30)
        steps = [model(ids[:, :5], cache)] + [model(ids[:, i:i + 1], cache) for i in range(5, 30)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)


def test_lm_eval_adapter_takes_the_hf_directory(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "hymba-small", HF_CONFIG, hf_state(HF_CONFIG))
    lm = HymbaBenchLM("hymba-1.5b", checkpoint=path)
    assert lm.model.cfg.n_layers == 6 and lm.model.cfg.vocab_size == 300


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s.pop("model.layers.3.mamba.D.0"), "lacks 1 weights, e.g. layers.3.mixer.D"),
    (lambda s: s.__setitem__("model.layers.0.mamba.D.0", torch.ones(5)), "shape (5,), expected"),
    (lambda s: s.__setitem__("model.extra.weight", torch.ones(5)), "model.extra.weight has no counterpart"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path: Path, break_it, message: str) -> None:
    state = hf_state(HF_CONFIG)
    break_it(state)
    path = write_checkpoint(tmp_path / "bad", HF_CONFIG, state)
    with pytest.raises(HymbaBenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_hf_checkpoint(path)
