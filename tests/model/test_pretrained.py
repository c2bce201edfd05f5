"""Hugging Face checkpoints compute transformers' function (every family in `FAMILIES`): a tiny
random model built by transformers from its own configuration class (offline), saved with
`save_pretrained`, loaded by us. Logits and every cached decode step equal transformers' within
1e-4 relative (fp32, prompts longer than any window), and greedy tokens are equal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.generate import greedy_generate
from hymba_bench.model.hf import config_from_checkpoint, is_hf_checkpoint, load_pretrained

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             initializer_range=0.2, rms_norm_eps=1e-5)

SSM = dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, state_size=8, expand=2,
           initializer_range=0.2, layer_norm_epsilon=1e-5)

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, rope_theta=500.0),
    "llama-tied-wide-heads": lambda: transformers.LlamaConfig(**SMALL, head_dim=20,
                                                              tie_word_embeddings=True),
    "mistral-window-5": lambda: transformers.MistralConfig(**SMALL, sliding_window=5),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL),
    "mamba": lambda: transformers.MambaConfig(**SSM, time_step_rank=5),
    "mamba2": lambda: transformers.Mamba2Config(**SSM, num_heads=8, head_dim=12, n_groups=2,
                                                chunk_size=4, tie_word_embeddings=True),
    # Mamba-2's width (6 heads of 12) is not expand * hidden_size, as in Nemotron-H 4B
    "nemotron_h": lambda: transformers.NemotronHConfig(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, ssm_state_size=8, mamba_num_heads=6, mamba_head_dim=12,
        n_groups=2, chunk_size=4, max_position_embeddings=64, initializer_range=0.2,
        layers_block_type=["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"]),
}
FAMILIES["bamba"] = lambda: transformers.BambaConfig(
    **{k: v for k, v in SMALL.items() if k != "num_hidden_layers"}, num_hidden_layers=4,
    attn_layer_indices=[1, 3], mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=8,
    mamba_chunk_size=4)
# Gated DeltaNet (2 q/k heads, 4 value heads) and gated attention, dense FFNs, rotary on a quarter
FAMILIES["qwen3_next"] = lambda: transformers.Qwen3NextConfig(
    **{k: v for k, v in SMALL.items() if k not in ("num_hidden_layers", "initializer_range")},
    num_hidden_layers=4, head_dim=16, initializer_range=0.1,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=24,
    linear_value_head_dim=24, num_experts=0)
# Qwen3-Next as released: routed experts (4, top 2, renormalised) and a gated shared expert on
# every layer
FAMILIES["qwen3_next-moe"] = lambda: transformers.Qwen3NextConfig(
    **{**FAMILIES["qwen3_next"]().to_dict(), "num_experts": 4, "num_experts_per_tok": 2,
       "moe_intermediate_size": 20, "shared_expert_intermediate_size": 28})
# Mamba-1 with dt/B/C norms, attention at 2 of 4, 4 routed experts (top 2) on every other layer
FAMILIES["jamba"] = lambda: transformers.JambaConfig(
    **{k: v for k, v in SMALL.items() if k not in ("num_hidden_layers", "rms_norm_eps")},
    num_hidden_layers=4, rms_norm_eps=1e-5, num_experts=4, num_experts_per_tok=2,
    expert_layer_period=2, expert_layer_offset=1, attn_layer_period=4, attn_layer_offset=2,
    mamba_d_state=8)
# Granite-4.0-H: µP multipliers, a shared FFN and 4 routed experts (top 2) on every layer, rotary
_GRANITE = dict(**{k: v for k, v in SMALL.items() if k != "num_hidden_layers"}, num_hidden_layers=3,
                layer_types=["mamba", "attention", "mamba"], mamba_n_heads=8, mamba_n_groups=2,
                mamba_d_state=8, mamba_chunk_size=4, shared_intermediate_size=24,
                embedding_multiplier=3.0, residual_multiplier=0.6, attention_multiplier=0.3,
                logits_scaling=2.5)
FAMILIES["granitemoehybrid"] = lambda: transformers.GraniteMoeHybridConfig(
    **_GRANITE, num_local_experts=4, num_experts_per_tok=2, position_embedding_type="rope")
# the dense Granite-4.0-H (the shared FFN alone), tied, without positions
FAMILIES["granitemoehybrid-dense-tied"] = lambda: transformers.GraniteMoeHybridConfig(
    **_GRANITE, num_local_experts=0, tie_word_embeddings=True)
# Falcon-H1: attention ‖ Mamba-2 in every layer, Mamba-2 6 heads of 12 (not expand * hidden), every
# µP multiplier away from 1, attention heads narrower than hidden / heads
_FALCON = dict(**{k: v for k, v in SMALL.items() if k != "rms_norm_eps"}, head_dim=8,
               mamba_d_ssm=72, mamba_n_heads=6, mamba_n_groups=2, mamba_d_state=8,
               mamba_chunk_size=4, rope_theta=1e4, embedding_multiplier=2.0,
               lm_head_multiplier=0.7, key_multiplier=1.5, attention_in_multiplier=0.8,
               attention_out_multiplier=1.3, ssm_in_multiplier=1.2, ssm_out_multiplier=0.9,
               mlp_multipliers=[1.4, 0.6], ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 2.0])
FAMILIES["falcon_h1"] = lambda: transformers.FalconH1Config(**_FALCON)
# with the gated norm, normed before the gate, and the head tied
FAMILIES["falcon_h1-norm-tied"] = lambda: transformers.FalconH1Config(
    **_FALCON, mamba_rms_norm=True, mamba_norm_before_gate=True, tie_word_embeddings=True)
# Zamba2: two shared blocks applied in turn by four hybrid layers (the third and fourth apply the
# first two again), per-application adapters on q, k, v and the MLP, rotary
_ZAMBA2 = dict(**{k: v for k, v in SMALL.items() if k not in ("num_hidden_layers",
                                                            "num_key_value_heads")},
               num_hidden_layers=7, mamba_d_state=8, n_mamba_heads=8, mamba_ngroups=2, chunk_size=4,
               layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba", "hybrid"])
FAMILIES["zamba2"] = lambda: transformers.Zamba2Config(
    **_ZAMBA2, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=6,
    use_mem_rope=True)
# one block, adapters on the MLP only, grouped K/V, no positions, SiLU
FAMILIES["zamba2-one-block"] = lambda: transformers.Zamba2Config(
    **_ZAMBA2, num_mem_blocks=1, num_key_value_heads=2, adapter_rank=5, hidden_act="silu")
# dt's floor reached by most steps, so that the clamp is part of the function compared
FAMILIES["nemotron_h-dt-floor"] = lambda: FAMILIES["nemotron_h"]().__class__(
    **{**FAMILIES["nemotron_h"]().to_dict(), "time_step_limit": (0.3, float("inf"))})


def save_hf(name: str, root: Path) -> tuple[Path, torch.nn.Module]:
    config = FAMILIES[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if name == "qwen2":  # transformers initialises biases to zero: make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.2)
    if name.startswith(("qwen3_next", "falcon_h1", "zamba2")):  # norms at 1 (Qwen3-Next's 1 + 0): perturbed
        with torch.no_grad():
            for key, param in model.named_parameters():
                if key.endswith("norm.weight"):
                    param.normal_(0, 0.3)
    path = root / name
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def assert_refused(name: str, key: str, value: object, message: str, root: Path) -> None:
    """Family `name`'s checkpoint with config.json's `key` set to `value` is refused, saying
    `message`."""
    import json

    path, _ = save_hf(name, root)
    raw = json.loads((path / "config.json").read_text())
    raw[key] = value
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(HymbaBenchError, match=message):
        config_from_checkpoint(path)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max()
    assert ((ours - theirs).abs().max() / scale).item() < 1e-4


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_decode_steps_and_greedy_tokens_equal_transformers(name: str, tmp_path: Path) -> None:
    path, hf = save_hf(name, tmp_path)
    assert is_hf_checkpoint(path)
    ours = load_pretrained(path).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        close(ours(ids), want)
        # prefill 7 tokens (past the window of 5), then one cached step per token
        cache = ours.allocate_cache(2, 13)
        steps = [ours(ids[:, :7], cache)] + [ours(ids[:, t:t + 1], cache) for t in range(7, 13)]
        close(torch.cat(steps, 1), want)
        got = greedy_generate(ours, ids[:, :6], max_new_tokens=8)
        hf.generation_config.eos_token_id = None  # no early stop, as ours without eos_id
        # transformers' Nemotron-H decode step skips the dt floor its prefill applies, so where the
        # floor matters its own cached generation leaves its forward's function: compare with
        # generation by whole forwards there
        cached = name != "nemotron_h-dt-floor"
        theirs = hf.generate(ids[:, :6], max_new_tokens=8, do_sample=False, pad_token_id=0,
                             use_cache=cached)[:, 6:]
    assert torch.equal(got, theirs)


def test_the_design_comes_from_config_json_alone(tmp_path: Path) -> None:
    path, _ = save_hf("mistral-window-5", tmp_path)
    (path / "model.safetensors").unlink()
    cfg = config_from_checkpoint(path)
    assert cfg.name == "mistral-window-5" and cfg.sliding_window == 4  # 5 keys: q - k <= 4
    assert all(spec.attention == "sliding" for spec in cfg.layers)
    with pytest.raises(HymbaBenchError, match=r"no \*\.safetensors weights"):
        load_pretrained(path)


def test_loading_is_strict(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = save_hf("llama", tmp_path)
    weights = load_file(path / "model.safetensors")
    save_file({**weights, "model.layers.0.self_attn.rogue.weight": torch.zeros(2)},
              path / "model.safetensors")
    with pytest.raises(HymbaBenchError, match=re.escape("model.layers.0.self_attn.rogue.weight "
                                                        "has no counterpart")):
        load_pretrained(path)
    save_file({k: v for k, v in weights.items() if k != "model.layers.2.mlp.up_proj.weight"},
              path / "model.safetensors")
    with pytest.raises(HymbaBenchError, match=re.escape("lacks 1 weights, e.g. layers.2.ffn.up_proj.weight")):
        load_pretrained(path)


@pytest.mark.parametrize("key, value, message", [
    ("hidden_act", "gelu", "hidden_act='gelu' .another FFN activation. is not supported"),
    ("mlp_bias", True, "mlp_bias=True"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "rope_type 'llama3'"),
    ("model_type", "gpt2", "model_type 'gpt2' is not supported"),
])
def test_unmodelled_settings_are_refused(key: str, value: object, message: str,
                                         tmp_path: Path) -> None:
    assert_refused("llama", key, value, message, tmp_path)


@pytest.mark.parametrize("key, value, message", [
    ("time_step_limit", [0.0, 8.0], r"time_step_limit=.* \(dt clamped\)"),
    ("num_heads", 4, "num_heads \\* head_dim = 48 is not expand \\* hidden_size = 96"),
    ("use_conv_bias", False, "a convolution without bias"),
])
def test_unmodelled_mamba2_settings_are_refused(key: str, value: object, message: str,
                                                tmp_path: Path) -> None:
    assert_refused("mamba2", key, value, message, tmp_path)


def test_a_checkpoint_is_a_design_wherever_a_name_goes(tmp_path: Path) -> None:
    """Its directory or its config.json: a fixed-size design named after the directory, added
    to the design files so the run's later stages resolve it by that name."""
    from hymba_bench.design.registry import resolve
    from hymba_bench.runner import RunOptions, run, select_variants

    path, _ = save_hf("mamba2", tmp_path)
    for given in (path, path / "config.json"):
        rv = resolve(str(given), "tiny")
        assert rv.config.name == "mamba2" and rv.info["table_label"] == "mamba2"
        assert rv.config.layout == ["mamba2"] and rv.config.options("mamba2").n_groups == 2
    files: list[Path] = []
    assert select_variants(f"llama,{path}", files) == ["llama", "mamba2"]
    assert files == [path]
    assert resolve("mamba2", "tiny", files).config.d_model == SMALL["hidden_size"]
    with pytest.raises(HymbaBenchError, match="a checkpoint's accuracy is its weights'"):
        run(RunOptions(variants=["mamba2"], variant_files=files, out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before any work


def test_records_name_the_checkpoint_files_they_measured(tmp_path: Path) -> None:
    import hashlib

    from hymba_bench.runner import RunOptions, run, select_variants

    path, _ = save_hf("llama", tmp_path)
    files: list[Path] = []
    names = select_variants(str(path), files)
    run_dir = run(RunOptions(variants=names, variant_files=files, out=tmp_path / "run",
                             skip={"accuracy", "throughput"}))
    record = next(r for r in run_dir.records() if r.kind == "metric")
    assert record.fields["hf_checkpoint"] == str(path)
    assert record.fields["config_sha256"] == hashlib.sha256(
        (path / "config.json").read_bytes()).hexdigest()
    assert len(record.fields["weights_sha256"]) == 64
    assert names == ["llama-hf"] and record.fields["table_label"] == "llama-hf"  # not the row


@pytest.mark.parametrize("key, value, message", [
    ("layers_block_type", ["linear_attention", "moe"], "a 'moe' layer"),
    ("layers_block_type", ["linear_attention", "conv"], "layer type 'conv' is not one of"),
    ("mlp_hidden_act", "gelu", "another MLP activation"),
    ("num_nextn_predict_layers", 1, "multi-token prediction"),
])
def test_unmodelled_nemotron_h_settings_are_refused(key: str, value: object, message: str,
                                                    tmp_path: Path) -> None:
    assert_refused("nemotron_h", key, value, message, tmp_path)


def test_an_older_nemotron_h_config_reads_its_pattern(tmp_path: Path) -> None:
    import json

    path, _ = save_hf("nemotron_h", tmp_path)
    raw = json.loads((path / "config.json").read_text())
    del raw["layers_block_type"]
    raw["hybrid_override_pattern"] = "M-*-M"
    (path / "config.json").write_text(json.dumps(raw))
    cfg = config_from_checkpoint(path)
    assert cfg.layout == ["mamba2", "mlp", "attention", "mlp", "mamba2"]
    assert cfg.options("mamba2").n_heads == 6 and cfg.options("mamba2").d_ssm(cfg) == 72


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_cache_formula_equals_the_allocation(name: str, tmp_path: Path) -> None:
    from hymba_bench.model.cache import cache_bytes

    path, _ = save_hf(name, tmp_path)
    model = load_pretrained(path)
    cache = model.allocate_cache(3, 20)
    assert cache.nbytes() == cache_bytes(model.cfg, 3, 20, cache.dtype)


@pytest.mark.parametrize("key, value, message", [
    ("attn_layer_indices", [1, 9], r"attn_layer_indices=\[1, 9\] name layers outside 0..3"),
    ("mamba_proj_bias", True, "biases on Mamba-2's projections"),
    ("time_step_limit", [0.0, 4.0], "dt clamped"),
])
def test_unmodelled_bamba_settings_are_refused(key: str, value: object, message: str,
                                               tmp_path: Path) -> None:
    assert_refused("bamba", key, value, message, tmp_path)


def test_partial_rotary_turns_the_first_channels_only() -> None:
    from hymba_bench.design.config import ConfigError, ModelConfig

    with pytest.raises(ConfigError, match="rope_dim: expected an even number of channels up to "
                                          "d_qk = 16, got 18"):
        ModelConfig(name="x", layout=["attention"], mixer_options={"attention": {"rope_dim": 18}})
    cfg = ModelConfig(name="x", layout=["attention"], mixer_options={"attention": {"rope_dim": 8}})
    from hymba_bench.model.lm import instantiate

    model = instantiate(cfg, "cpu", seed=0)
    q = torch.randn(1, 5, 2, 16)
    from hymba_bench.model.context import Context

    ctx = Context(positions=torch.arange(5))
    out = model.layers[0].mixer.rotary(q, ctx)
    assert torch.equal(out[..., 8:], q[..., 8:]) and not torch.allclose(out[..., :8], q[..., :8])


@pytest.mark.parametrize("key, value, message", [
    ("mlp_only_layers", [1], r"mlp_only_layers=\[1\] leave experts on layers \[0, 2, 3\]"),
    ("decoder_sparse_step", 2, "moe_intermediate_size=20 differs from the dense layers' "
                               "intermediate_size=80"),
    ("linear_key_head_dim", 12, "linear_key_head_dim=12 differs from linear_value_head_dim=24"),
    ("layer_types", ["linear_attention"] * 3, "expected 4 of"),
])
def test_unmodelled_qwen3_next_settings_are_refused(key: str, value: object, message: str,
                                                    tmp_path: Path) -> None:
    assert_refused("qwen3_next-moe", key, value, message, tmp_path)


def test_jamba_layers_follow_its_periods_and_offsets(tmp_path: Path) -> None:
    import json

    path, _ = save_hf("jamba", tmp_path)
    cfg = config_from_checkpoint(path)
    assert cfg.layout == ["mamba", "mamba", "attention", "mamba"] and cfg.moe_experts == 4
    raw = json.loads((path / "config.json").read_text())
    raw["expert_layer_offset"] = 0
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(HymbaBenchError, match="expert_layer_offset=0 with expert_layer_period=2"):
        config_from_checkpoint(path)


# ---------------------------------------------------------------- GGUF
_GGUF_NAMES = {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight",
               "self_attn.o_proj.weight": "attn_output.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight",
               "input_layernorm.weight": "attn_norm.weight",
               "post_attention_layernorm.weight": "ffn_norm.weight"}


# a byte-level BPE vocabulary, as llama.cpp stores GPT-2-style tokenizers
GGUF_TOKENS = ["<s>", "</s>", "t", "h", "e", "c", "a", "Ġ", "th", "the", "ca", "cat", "Ġcat", "Ġthe"]


def write_llama_gguf(model: torch.nn.Module, path: Path, quantize: bool,
                     tokenizer: bool = False) -> None:
    """The model as llama.cpp's converter writes a Llama: its metadata keys, its tensor names, q
    and k rows permuted to its rotary pairing; matrices as Q8_0 blocks when `quantize`; with
    `tokenizer`, `GGUF_TOKENS` as its vocabulary."""
    gguf = pytest.importorskip("gguf")
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(path.stem)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(500.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(GGUF_TOKENS)
        writer.add_token_types([3, 3] + [1] * (len(GGUF_TOKENS) - 2))  # 3: control
        writer.add_token_merges(["t h", "th e", "c a", "ca t", "Ġ cat", "Ġ the"])
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(1)

    def permute(w, heads: int):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
            .reshape(w.shape)

    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        name = top.get(key) or f"blk.{parts[2]}.{_GGUF_NAMES['.'.join(parts[3:])]}"
        array = value.float().numpy()
        if name.endswith("attn_q.weight"):
            array = permute(array, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            array = permute(array, cfg.num_key_value_heads)
        if quantize and array.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            blocks = gguf.quants.quantize(array, q8)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=q8)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_for_gguf() -> torch.nn.Module:
    config = transformers.LlamaConfig(**{**SMALL, "hidden_size": 64, "intermediate_size": 96},
                                      rope_theta=500.0)  # rows of whole 32-value Q8_0 blocks
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_a_gguf_file_loads_through_transformers_reader(tmp_path: Path) -> None:
    hf = llama_for_gguf()
    exact, q8 = tmp_path / "tiny-f32.gguf", tmp_path / "tiny-q8.gguf"
    write_llama_gguf(hf, exact, quantize=False)
    write_llama_gguf(hf, q8, quantize=True)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(ids).logits
        close(load_pretrained(exact)(ids), want)  # float32 tensors: the same function
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, gguf_file=q8.name, dtype=torch.float32).eval()
        ours = load_pretrained(q8).eval()
        got = ours(ids)
        close(got, theirs(ids).logits)  # Q8_0: the dequantized weights, as transformers has them
        assert ((got - want).abs().max() / want.abs().max()).item() > 1e-3  # and they moved
        cache = ours.allocate_cache(2, 11)
        steps = [ours(ids[:, :5], cache)] + [ours(ids[:, t:t + 1], cache) for t in range(5, 11)]
        close(torch.cat(steps, 1), got)
    assert ours.cfg.name == "tiny-q8" and is_hf_checkpoint(q8)


def test_a_gguf_design_records_its_quantization(tmp_path: Path) -> None:
    import hashlib

    from hymba_bench.runner import RunOptions, run, select_variants

    path = tmp_path / "tiny-q8.gguf"
    write_llama_gguf(llama_for_gguf(), path, quantize=True)
    files: list[Path] = []
    names = select_variants(str(path), files)
    run_dir = run(RunOptions(variants=names, variant_files=files, out=tmp_path / "run",
                             skip={"accuracy", "throughput"}))
    record = next(r for r in run_dir.records() if r.kind == "metric")
    assert names == ["tiny-q8"] and record.fields["gguf_quantization"] == "F32,Q8_0"
    assert record.fields["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.fields["hf_checkpoint"] == str(path)


@pytest.mark.parametrize("key, value, message", [
    ("position_embedding_type", "alibi", "another position encoding"),
    ("layer_types", ["mamba", "moe", "mamba"], "layer type 'moe' is not supported"),
    ("layer_types", ["mamba"], "layer_types has 1 entries for 3 layers"),
    ("residual_multiplier", -1.0, "residual_multiplier=-1.0: expected a positive number"),
    ("time_step_limit", [0.0, 4.0], "dt clamped"),
])
def test_unmodelled_granite_settings_are_refused(key: str, value: object, message: str,
                                                 tmp_path: Path) -> None:
    assert_refused("granitemoehybrid", key, value, message, tmp_path)


def test_granite_multipliers_are_folded_into_the_weights(tmp_path: Path) -> None:
    """The loaded design has no multiplier of its own: its weights carry them."""
    path, hf = save_hf("granitemoehybrid", tmp_path)
    ours = load_pretrained(path)
    theirs = dict(hf.named_parameters())
    torch.testing.assert_close(ours.embed_tokens.weight, 3.0 * theirs["model.embed_tokens.weight"])
    torch.testing.assert_close(ours.layers[1].mixer.o_proj.weight,
                               0.6 * theirs["model.layers.1.self_attn.o_proj.weight"])
    torch.testing.assert_close(ours.norm.weight, theirs["model.norm.weight"] / 2.5)


@pytest.mark.parametrize("key, value, message", [
    ("projectors_bias", True, "a bias on Mamba-2's out_proj"),
    ("ssm_multipliers", [1.0, 2.0], r"ssm_multipliers=\[1.0, 2.0\]: expected a list of 5 positive"),
    ("key_multiplier", 0, "key_multiplier=0: expected a positive number"),
    ("mamba_d_ssm", 60, "mamba_n_heads \\* mamba_d_head = 72 is not mamba_d_ssm = 60"),
    ("time_step_limit", [0.0, 4.0], "dt clamped"),
])
def test_unmodelled_falcon_h1_settings_are_refused(key: str, value: object, message: str,
                                                   tmp_path: Path) -> None:
    assert_refused("falcon_h1", key, value, message, tmp_path)


def test_a_gguf_file_is_scored_through_its_own_vocabulary(tmp_path: Path) -> None:
    from hymba_bench.accuracy.adapter import HymbaBenchLM

    bare, with_vocab = tmp_path / "bare.gguf", tmp_path / "vocab.gguf"
    write_llama_gguf(llama_for_gguf(), bare, quantize=False)
    write_llama_gguf(llama_for_gguf(), with_vocab, quantize=False, tokenizer=True)
    with pytest.raises(HymbaBenchError, match=r"bare\.gguf: no tokenizer could be read"):
        HymbaBenchLM(checkpoint=str(bare))
    lm = HymbaBenchLM(checkpoint=str(with_vocab))
    assert lm.tok_encode("the cat") == [9, 12]  # the merges applied: "the", "Ġcat"
    assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (0, 1)


@pytest.mark.parametrize("key, value, message", [
    ("add_bias_linear", True, "add_bias_linear=True"),
    ("use_long_context", True, "use_long_context=True"),
    ("hidden_act", "relu", "hidden_act='relu'"),
    ("num_key_value_heads", 2, "use_shared_attention_adapter with num_key_value_heads=2"),
    ("layers_block_type", ["mamba", "attention"], "layer type 'attention' is not one of"),
])
def test_unmodelled_zamba2_settings_are_refused(key: str, value: object, message: str,
                                                tmp_path: Path) -> None:
    assert_refused("zamba2", key, value, message, tmp_path)


def test_zamba2_blocks_are_applied_in_turn_each_application_with_its_adapters(
        tmp_path: Path) -> None:
    path, _ = save_hf("zamba2", tmp_path)
    model = load_pretrained(path)
    assert [spec.tied_to for spec in model.cfg.layers] == [None] * 4 + [1, None, 3]
    mixers = [model.layers[i].mixer for i in (1, 3, 4, 6)]
    assert mixers[2].shared is mixers[0].shared and mixers[3].shared is mixers[1].shared
    assert mixers[1].shared is not mixers[0].shared
    adapters = [m.q_adapter[0].weight for m in mixers] + [m.gate_up_adapter[1].weight for m in mixers]
    assert len({id(w) for w in adapters}) == 8
    assert not torch.equal(mixers[0].q_adapter[0].weight, mixers[2].q_adapter[0].weight)


def test_a_zamba2_block_repeated_under_a_later_layer_must_be_the_same(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = save_hf("zamba2", tmp_path)
    weights = load_file(path / "model.safetensors")
    block = "model.layers.1.shared_transformer.self_attn.q_proj.weight"
    again = block.replace("layers.1.", "layers.4.")  # layer 4 applies layer 1's block
    save_file({**weights, again: weights[block].clone()}, path / "model.safetensors")
    load_pretrained(path)  # an exact repeat is the same checkpoint
    save_file({**weights, again: weights[block] + 1}, path / "model.safetensors")
    with pytest.raises(HymbaBenchError, match="differs from the copy of the same shared block"):
        load_pretrained(path)
    stray = "model.layers.1.shared_transformer.self_attn.linear_q_adapter_list.1.0.weight"
    save_file({**weights, stray: torch.zeros(6, 96)}, path / "model.safetensors")
    with pytest.raises(HymbaBenchError, match="adapter 1 does not belong to the block"):
        load_pretrained(path)
