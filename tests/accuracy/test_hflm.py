"""lm-eval scores of a Hugging Face checkpoint through our adapter equal lm-eval's own HF model
(`HFLM`) on the same weights and tokenizer: loglikelihoods, greedy flags and rolling
loglikelihoods, for each family (the hybrids with their experts and multipliers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "blue", "big",
         "small", "and", "it", "was", "very", "happy", "sad", "house"]


def save_with_tokenizer(root: Path, name: str) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    small = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                 initializer_range=0.3, bos_token_id=1, eos_token_id=2)
    config = {
        "llama": lambda: transformers.LlamaConfig(**small, intermediate_size=48,
                                                  num_attention_heads=4, num_key_value_heads=2),
        "mamba2": lambda: transformers.Mamba2Config(**small, state_size=8, num_heads=4,
                                                    head_dim=16, n_groups=1),
        "nemotron_h": lambda: transformers.NemotronHConfig(
            **{**small, "num_hidden_layers": 3}, intermediate_size=48, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, ssm_state_size=8, mamba_num_heads=4,
            mamba_head_dim=16, n_groups=1, layers_block_type=["mamba", "attention", "mlp"]),
        "bamba": lambda: transformers.BambaConfig(
            **small, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            attn_layer_indices=[1], mamba_n_heads=4, mamba_d_state=8),
        "qwen3_next": lambda: transformers.Qwen3NextConfig(
            **small, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
            linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=24, shared_expert_intermediate_size=16),
        "jamba": lambda: transformers.JambaConfig(
            **small, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            num_experts=4, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2,
            attn_layer_offset=1, mamba_d_state=8),
        "granitemoehybrid": lambda: transformers.GraniteMoeHybridConfig(
            **small, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
            layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_state=8,
            num_local_experts=4, shared_intermediate_size=16, embedding_multiplier=2.0,
            residual_multiplier=0.7, attention_multiplier=0.2, logits_scaling=1.5),
        "falcon_h1": lambda: transformers.FalconH1Config(
            **small, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            mamba_d_ssm=64, mamba_n_heads=4, mamba_d_state=8, embedding_multiplier=1.5,
            lm_head_multiplier=0.8, key_multiplier=1.2, ssm_multipliers=[0.5, 1.5, 1.0, 1.2, 2.0]),
        "zamba2": lambda: transformers.Zamba2Config(
            **{**small, "num_hidden_layers": 3}, intermediate_size=48, num_attention_heads=4,
            mamba_d_state=8, n_mamba_heads=4, layers_block_type=["hybrid", "mamba", "hybrid"],
            use_shared_attention_adapter=True, adapter_rank=4, use_mem_rope=True),
    }[name]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = root / name
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.mark.parametrize("name", ["llama", "mamba2", "nemotron_h", "bamba", "qwen3_next", "jamba",
                                  "granitemoehybrid", "falcon_h1", "zamba2"])
def test_scores_equal_lm_evals_own_hf_model(name: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from hymba_bench.accuracy.adapter import HymbaBenchLM

    path = save_with_tokenizer(tmp_path, name)
    theirs = HFLM(pretrained=str(path), backend="causal", device="cpu", batch_size=2,
                  dtype="float32")
    ours = HymbaBenchLM(checkpoint=str(path), device="cpu", batch_size=2)
    pairs = [("the cat sat on", " a mat"), ("a big dog", " ran to the house"),
             ("it was very", " happy"), ("", "the small red house"), ("blue and red", " and")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    want, got = theirs.loglikelihood(requests), ours.loglikelihood(requests)
    for (w_ll, w_greedy), (g_ll, g_greedy) in zip(want, got, strict=True):
        assert g_ll == pytest.approx(w_ll, rel=1e-4, abs=1e-4) and g_greedy == w_greedy
    text = [Instance("loglikelihood_rolling", {}, (" ".join(WORDS * 2),), 0)]
    assert ours.loglikelihood_rolling(text)[0] == pytest.approx(
        theirs.loglikelihood_rolling(text)[0], rel=1e-4)
