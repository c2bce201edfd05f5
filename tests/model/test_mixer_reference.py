"""Whole layers of the new mixers held to the written-out transcriptions of their papers."""

from __future__ import annotations

import torch

from hymba_bench.design.config import ModelConfig
from hymba_bench.model.context import Context
from hymba_bench.model.mamba2 import Mamba2
from tests.mixer_reference import mamba2_layer


def test_a_mamba2_layer_is_the_papers_recurrence() -> None:
    opts = {"head_dim": 8, "d_state": 6, "n_groups": 2, "chunk_size": 8}
    cfg = ModelConfig(d_model=16, n_layers=1, layout=["mamba2"], mixer_options={"mamba2": opts})
    torch.manual_seed(0)
    layer = Mamba2(cfg, cfg.layers[0]).double()
    with torch.no_grad():  # away from the initialisation, so every weight matters
        for param in layer.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    u = torch.randn(2, 21, 16, dtype=torch.float64)
    got = layer(u, Context(torch.arange(21)))
    params = {k: v.detach() for k, v in layer.state_dict().items()}
    for row in range(2):
        want = mamba2_layer(params, u[row], d_state=6, head_dim=8, n_groups=2, eps=1e-5)
        torch.testing.assert_close(got[row].detach(), want, rtol=1e-4, atol=1e-5)


def test_a_gated_deltanet_layer_is_the_papers_recurrence() -> None:
    from hymba_bench.model.gated_deltanet import GatedDeltaNet
    from tests.mixer_reference import gated_deltanet_layer

    opts = {"head_dim": 4, "v_heads_per_qk": 2, "chunk_size": 4, "expand": 1}
    cfg = ModelConfig(d_model=16, n_layers=1, layout=["gated_deltanet"],
                      mixer_options={"gated_deltanet": opts})
    torch.manual_seed(1)
    layer = GatedDeltaNet(cfg, cfg.layers[0]).double()
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    got = layer(u, Context(torch.arange(11)))
    params = {k: v.detach() for k, v in layer.state_dict().items()}
    for row in range(2):
        want = gated_deltanet_layer(params, u[row], head_dim=4, v_heads_per_qk=2, eps=1e-6)
        torch.testing.assert_close(got[row].detach(), want, rtol=1e-4, atol=1e-5)


def test_gated_attention_scales_each_head_by_its_sigmoid_gate() -> None:
    """With the gate's rows of q_proj at zero every gate is sigmoid(0) = 1/2: the layer is half
    the ungated layer with the same query rows; a gate row picks out its own head's channel."""
    from hymba_bench.model.attention import Attention

    kw = dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_qk=4, d_v=6, layout=["attention"])
    plain_cfg = ModelConfig(**kw)
    gated_cfg = ModelConfig(**kw, mixer_options={"attention": {"output_gate": True}})
    torch.manual_seed(0)
    plain, gated = Attention(plain_cfg, plain_cfg.layers[0]), Attention(gated_cfg, gated_cfg.layers[0])
    with torch.no_grad():
        for name in ("k_proj", "v_proj", "o_proj"):
            getattr(gated, name).weight.copy_(getattr(plain, name).weight)
        w = gated.q_proj.weight.view(2, 4 + 6, 16)  # per head: [q (4), gate (6)]
        w[:, :4] = plain.q_proj.weight.view(2, 4, 16)
        w[:, 4:] = 0
    u = torch.randn(1, 5, 16)
    torch.testing.assert_close(gated(u, Context(torch.arange(5))),
                               plain(u, Context(torch.arange(5))) / 2)
    assert gated.q_proj.weight.shape == (2 * (4 + 6), 16)
