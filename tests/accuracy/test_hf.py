"""Released Hymba weights load by name mapping: tested on a small random checkpoint written in the
Hugging Face key layout and shapes (the released `HymbaForCausalLM`'s, worked out from its config
here independently of the mapping under test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hymba_bench.accuracy.adapter import HymbaBenchLM
from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.cache import cache_mb_paper
from hymba_bench.model.hf import is_hf_checkpoint
from hymba_bench.model.hf import load_pretrained as load_hf_checkpoint
from hymba_bench.model.hf.hymba import config_from_hf
from hymba_bench.model.layers import Rotary
from tests import hymba_reference as official

HF_CONFIG = {  # the 1.5B's config.json keys, at a small size
    "model_type": "hymba", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 6,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
    "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 4,
    "mamba_inner_layernorms": True, "num_memory_tokens": 4, "sliding_window": 8,
    "global_attn_idx": [0, 5], "kv_reuse_group": [[1, 2], [3, 4]], "rope": True,
    "rope_type": "ntk", "rope_theta": 10000.0, "orig_max_position_embeddings": 128,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}
RELEASE_CONFIG = {  # the released Hymba-1.5B's config.json, the keys that decide the function
    "model_type": "hymba", "vocab_size": 32001, "hidden_size": 1600, "num_hidden_layers": 32,
    "num_attention_heads": 25, "num_key_value_heads": 5, "intermediate_size": 5504,
    "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 100,
    "mamba_inner_layernorms": True, "num_memory_tokens": 128, "sliding_window": 1024,
    "global_attn_idx": [0, 15, 31],
    "kv_reuse_group": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [16, 17, 18],
                       [19, 20], [21, 22], [23, 24], [25, 26], [27, 28], [29, 30]],
    "rope": True, "rope_type": "ntk", "rope_theta": 10000.0, "max_position_embeddings": 8192,
    "orig_max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "hidden_act": "silu", "num_experts": 1, "kq_norm": "none", "v_head_dim": 128,
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
    # rope_type ntk at 512 / 128 = 4x: NVIDIA's rule gives 2 * 4 - 1
    assert (cfg.d_qk, cfg.d_v, cfg.meta_tokens, cfg.rope_scaling) == (16, 32, 4, 7.0)


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
    torch.testing.assert_close(ours["layers.3.mixer.ssm.A_log"], state["model.layers.3.mamba.A_log.0"])
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


def test_lm_eval_adapter_takes_the_hf_directory_with_its_tokenizer(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    path = write_checkpoint(tmp_path / "hymba-small", HF_CONFIG, hf_state(HF_CONFIG))
    with pytest.raises(HymbaBenchError, match=r"no tokenizer\.json beside config\.json"):
        HymbaBenchLM("hymba-1.5b", checkpoint=path)  # bytes would score the weights as noise
    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>", "<eos>", "the", "cat"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    special = path / "tokenizer_config.json"
    special.write_text('{"bos_token": "<bos>", "eos_token": {"content": "<eos>"}}')
    lm = HymbaBenchLM("hymba-1.5b", checkpoint=path)
    assert lm.model.cfg.n_layers == 6 and lm.model.cfg.vocab_size == 300
    assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (1, 2)
    assert lm.tok_encode("the cat") == [3, 4]
    # no BOS (as Qwen's): an empty context is conditioned on EOS, as lm-eval's HF model does
    special.write_text('{"bos_token": null, "eos_token": "cat"}')
    assert (HymbaBenchLM("hymba-1.5b", checkpoint=path).tokenizer.bos_id) == 4
    special.write_text('{"eos_token": "<none>"}')
    with pytest.raises(HymbaBenchError, match=r"eos_token '<none>' is not in tokenizer\.json"):
        HymbaBenchLM("hymba-1.5b", checkpoint=path)
    special.unlink()  # then config.json's ids
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "bos_token_id": 3, "eos_token_id": [4]}))
    tok = HymbaBenchLM("hymba-1.5b", checkpoint=path).tokenizer
    assert (tok.bos_id, tok.eos_id) == (3, 4)


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s.pop("model.layers.3.mamba.D.0"), "lacks 1 weights, e.g. layers.3.mixer.ssm.D"),
    (lambda s: s.__setitem__("model.layers.0.mamba.D.0", torch.ones(5)), "shape (5,), expected"),
    (lambda s: s.__setitem__("model.extra.weight", torch.ones(5)), "model.extra.weight has no counterpart"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path: Path, break_it, message: str) -> None:
    state = hf_state(HF_CONFIG)
    break_it(state)
    path = write_checkpoint(tmp_path / "bad", HF_CONFIG, state)
    with pytest.raises(HymbaBenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_hf_checkpoint(path)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("rope_type", [None, "default", "ntk"])
def test_rope_inverse_frequencies_follow_the_release(rope_type: str | None) -> None:
    hf = {**HF_CONFIG, "rope_type": rope_type}
    cfg = config_from_hf(hf)
    ours = Rotary(cfg.d_qk, cfg.rope_theta, cfg.rope_scaling).inv_freq
    torch.testing.assert_close(ours, official.inv_freq(hf, cfg.d_qk), rtol=2e-6, atol=0)


def test_release_config_is_the_registered_variant() -> None:
    cfg = config_from_hf(RELEASE_CONFIG)
    variant = resolve("hymba-1.5b", "tiny").config
    assert [s.as_dict() for s in cfg.layers] == [s.as_dict() for s in variant.layers]
    for key in ("d_qk", "d_v", "n_kv_heads", "meta_tokens", "sliding_window", "rope_scaling",
                "rope_theta", "dt_rank", "intermediate_size", "vocab_size"):
        assert getattr(cfg, key) == getattr(variant, key), key
    base = cfg.rope_theta * cfg.rope_scaling ** (64 / 62)
    assert round(base) == 74535  # not 10000 * 4 ** (64 / 62) = 41,829
    assert round(cache_mb_paper(cfg, 8192), 1) == 78.6  # the paper's figure for the release


@pytest.mark.parametrize("key, value, message", [
    ("rope_type", "yarn", "rope_type 'yarn' is not supported"),
    ("rope_type", "dynamic_ntk", "rope_type 'dynamic_ntk' is not supported"),
    ("kq_norm", "rms", "kq_norm='rms'"),
    ("memory_tokens_interspersed_every", 16, "memory_tokens_interspersed_every=16"),
    ("num_experts", 16, "num_experts=16"),
    ("kv_reuse_every_i_layer", 2, "kv_reuse_every_i_layer=2"),
])
def test_settings_we_do_not_model_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(HymbaBenchError, match=message):
        config_from_hf({**HF_CONFIG, key: value})


def test_rope_defaults_off_as_in_the_release_code() -> None:
    assert config_from_hf({k: v for k, v in HF_CONFIG.items() if k != "rope"}).rope is False


@pytest.mark.parametrize("prefill", [3, 20])  # inside the window, and past it
def test_forward_and_decode_compute_the_released_function(tmp_path: Path, prefill: int) -> None:
    """Ours vs the written-out transcription: 40 tokens + 4 meta tokens through windows of 8."""
    state = hf_state(HF_CONFIG, seed=1)
    model = load_hf_checkpoint(write_checkpoint(tmp_path / "hymba", HF_CONFIG, state)).eval()
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = official.forward(state, HF_CONFIG, ids)
        assert rel_err(model(ids), want) < 1e-5
        cache = model.allocate_cache(2, 40)
        got = [model(ids[:, :prefill], cache)]
        got += [model(ids[:, t:t + 1], cache) for t in range(prefill, 40)]
    got_all = torch.cat(got, dim=1)
    for t in range(prefill - 1, 40):  # every decode step, one position at a time
        assert rel_err(got_all[:, t], want[:, t]) < 1e-5, t
    # and the test can tell the old deviations apart: W keys (q - k < W) or RoPE scale 4 is
    # another function, far outside the tolerance above
    w_keys = {**HF_CONFIG, "sliding_window": HF_CONFIG["sliding_window"] - 1}
    scale_4 = {**HF_CONFIG, "rope_type": None, "rope_theta": 10000.0 * 4 ** (16 / 14)}
    with torch.no_grad():
        assert rel_err(official.forward(state, w_keys, ids), want) > 1e-3
        assert rel_err(official.forward(state, scale_4, ids), want) > 1e-3
