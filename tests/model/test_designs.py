"""The other hybrid designs: their layer plans, and the parts they add (MoE, shared block, Hyena).

Decoding, causality, batching and cache bytes run for them in the shared body (test_variants).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hymba_bench import build_model, ops
from hymba_bench.accuracy.checkpoint import load_checkpoint, save_checkpoint
from hymba_bench.design.config import ConfigError, ModelConfig
from hymba_bench.design.registry import resolve
from hymba_bench.model.cache import InferenceCache, cache_bytes
from hymba_bench.model.moe import MoE


def test_jamba_plan() -> None:
    cfg = resolve("jamba").config
    assert [s.mixer for s in cfg.layers].count("attention") == cfg.n_layers // 8  # 1:7
    assert [s.index for s in cfg.layers if s.ffn == "moe"] == list(range(1, cfg.n_layers, 2))
    assert not cfg.rope
    model = build_model("jamba")
    moe = model.layers[1].ffn
    assert isinstance(moe, MoE) and len(moe.experts) == 16 and moe.top_k == 2


def test_zamba_shares_one_block_but_not_its_cache() -> None:
    cfg = resolve("zamba").config
    blocks = [s.index for s in cfg.layers if s.mixer == "attention"]
    assert len(blocks) >= 2 and all(s.owns_kv for s in cfg.layers if s.mixer == "attention")
    assert [cfg.layers[i].tied_to for i in blocks] == [None] + [blocks[0]] * (len(blocks) - 1)
    model = build_model("zamba")
    first, later = model.layers[blocks[0]], model.layers[blocks[1]]
    assert later.mixer.q_proj.weight is first.mixer.q_proj.weight
    assert later.ffn is first.ffn and later.input_layernorm is first.input_layernorm
    # the block's weights count once; its KV counts once per application
    untied = ModelConfig(**{**cfg.to_dict(), "shared_attention": False})
    from hymba_bench.model.lm import HybridLM
    block = sum(p.numel() for p in first.parameters())
    assert HybridLM(untied).num_parameters() - model.num_parameters() == block * (len(blocks) - 1)
    assert cache_bytes(untied, 1, 100) == cache_bytes(cfg, 1, 100)
    cache = InferenceCache(cfg, 1, 100)
    assert all(cache.layers[i].k is not None for i in blocks)


def test_zamba_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("zamba")
    save_checkpoint(model, tmp_path / "ck", "zamba", "tiny")
    loaded, _ = load_checkpoint(tmp_path / "ck", "zamba")
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids), model.eval()(ids))
    blocks = [s.index for s in model.cfg.layers if s.mixer == "attention"]
    assert loaded.layers[blocks[1]].mixer.o_proj.weight is loaded.layers[blocks[0]].mixer.o_proj.weight


def test_samba_cache_is_bounded() -> None:
    cfg = resolve("samba").config
    assert all(s.attention == "sliding" for s in cfg.layers if s.has_attention)
    assert cache_bytes(cfg, 1, 4096) == cache_bytes(cfg, 1, 65536)


def test_stripedhyena_cache_is_kv_plus_constant_state() -> None:
    cfg = resolve("stripedhyena").config
    hyena = [s for s in cfg.layers if s.mixer == "hyena"]
    assert len(hyena) == len(cfg.kv_layers) == cfg.n_layers // 2
    per_token = sum(s.n_kv_heads * (cfg.d_qk + cfg.d_v) for s in cfg.kv_layers) * 2
    state = len(hyena) * cfg.d_model * (3 * (cfg.hyena_short_conv - 1) + 2 * cfg.hyena_modes) * 2
    assert cache_bytes(cfg, 1, 1000) == per_token * 1000 + state


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), d=st.integers(1, 5), length=st.integers(1, 130),
       seed=st.integers(0, 2**16))
def test_long_conv_fft_equals_ref(batch: int, d: int, length: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u, h = torch.randn(batch, d, length, generator=g), torch.randn(d, length, generator=g)
    torch.testing.assert_close(ops.long_conv_fft(u, h), ops.long_conv_ref(u, h), rtol=1e-4, atol=1e-4)


def test_long_conv_ref_is_the_definition() -> None:
    u, h = torch.randn(2, 3, 9), torch.randn(3, 9)
    expected = torch.zeros(2, 3, 9)
    for t in range(9):
        for j in range(t + 1):
            expected[:, :, t] += h[:, t - j] * u[:, :, j]
    torch.testing.assert_close(ops.long_conv_ref(u, h), expected)


def test_modal_recurrence_equals_its_convolution() -> None:
    """Stepping the complex state reproduces the FFT convolution with the modal filter, long past
    the point where float32 phases t * theta would have drifted."""
    g = torch.Generator().manual_seed(0)
    d, n, length = 3, 4, 3000
    rate = torch.rand(d, n, generator=g) * 0.01 + 1e-4
    theta = torch.rand(d, n, generator=g) * 3.14
    residues = torch.randn(d, n, 2, generator=g)
    u = torch.randn(2, d, length, generator=g)
    h = ops.modal_filter(ops.modal_powers(rate, theta, length), residues)
    conv = ops.long_conv_fft(u, h)
    state = torch.zeros(2, d, n, 2)
    steps = torch.stack([ops.modal_step(state, u[:, :, t], rate, theta, residues)
                         for t in range(length)], dim=-1)
    torch.testing.assert_close(steps, conv, rtol=1e-3, atol=2e-3)
    # and the state a prefill leaves is the state the steps reach
    torch.testing.assert_close(ops.modal_state(u, ops.modal_powers(rate, theta, length)), state,
                               rtol=1e-3, atol=2e-3)


@settings(max_examples=20, deadline=None)
@given(tokens=st.integers(1, 40), experts=st.integers(1, 6), top_k=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_moe_combine_equals_ref(tokens: int, experts: int, top_k: int, seed: int) -> None:
    top_k = min(top_k, experts)
    torch.manual_seed(seed)
    moe = MoE(8, 12, experts, top_k)
    x = torch.randn(tokens, 8)
    weights, chosen, _ = moe.route(x)
    with torch.no_grad():
        torch.testing.assert_close(ops.moe_combine(x, weights, chosen, moe.experts),
                                   ops.moe_combine_ref(x, weights, chosen, moe.experts),
                                   rtol=1e-5, atol=1e-6)


def test_moe_routes_top_k_without_renormalising() -> None:
    torch.manual_seed(0)
    moe = MoE(8, 12, 4, 2)
    x = torch.randn(5, 8)
    weights, chosen, probs = moe.route(x)
    torch.testing.assert_close(weights, probs.gather(1, chosen))
    assert (weights.sum(-1) < 1).all()
    one = torch.zeros(1, 8)
    with torch.no_grad():  # a single token gets exactly its two experts' weighted outputs
        w, c, _ = moe.route(one)
        expected = sum(w[0, i] * moe.experts[int(c[0, i])](one) for i in range(2))
        torch.testing.assert_close(moe(one[None])[0], expected)


def test_moe_renormalises_and_adds_a_gated_shared_expert() -> None:
    torch.manual_seed(0)
    moe = MoE(8, 12, 4, 2, normalize=True, shared=6, shared_gate=True)
    x = torch.randn(1, 8)
    weights, chosen, probs = moe.route(x)
    picked = probs.gather(1, chosen)
    torch.testing.assert_close(weights, picked / picked.sum(-1, keepdim=True))
    assert moe.shared_expert is not None and moe.shared_expert_gate is not None
    with torch.no_grad():
        routed = sum(weights[0, i] * moe.experts[int(chosen[0, i])](x) for i in range(2))
        gate = torch.sigmoid(moe.shared_expert_gate(x))
        torch.testing.assert_close(moe(x[None])[0], routed + gate * moe.shared_expert(x))


def test_moe_aux_loss_is_trained() -> None:
    model = build_model("jamba").train()
    logits = model(torch.randint(0, 256, (2, 16)))
    aux = model.aux_loss()
    assert aux is not None and aux.requires_grad and aux.item() > 0
    (logits.mean() + aux).backward()
    assert model.layers[1].ffn.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("keys, message", [
    ({"layout": ["mamba"], "shared_attention": True}, "shared_attention: the layout has no attention"),
    ({"layout": ["attention"], "shared_attention": True, "sliding_window": 8, "kv_share": 2},
     "shared_attention: cannot be combined with kv_share"),
    ({"layout": ["attention"], "shared_attention": True, "ffn": "moe"},
     "shared_attention: layers 0 and 1 would apply the shared block with different FFNs"),
])
def test_design_config_errors(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**keys)


def test_parallel_branches_are_summed_and_only_attention_free_mixers_join_attention() -> None:
    from hymba_bench.model.context import Context
    from hymba_bench.model.lm import instantiate

    with pytest.raises(ConfigError, match="ssm: expected a registered mixer without attention"):
        ModelConfig(name="x", layout=["parallel"], mixer_options={"parallel": {"ssm": "hybrid"}})
    for ssm in ("mamba2", "mamba", "gated_deltanet"):
        cfg = ModelConfig(name="x", layout=["parallel"], n_layers=1,
                          mixer_options={"parallel": {"ssm": ssm}})
        mixer = instantiate(cfg, "cpu", seed=0).layers[0].mixer
        x = torch.randn(2, 5, cfg.d_model)
        with torch.no_grad():  # each call a fresh context: attention publishes its K/V in one
            both = mixer(x, Context(torch.arange(5)))
            apart = mixer.attn(x, Context(torch.arange(5))) + mixer.ssm(x, Context(torch.arange(5)))
        torch.testing.assert_close(both, apart)
