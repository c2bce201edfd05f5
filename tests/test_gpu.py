"""On a CUDA device (skipped without one): decode == forward for every variant, CUDA-graph replay
== eager steps, each fast kernel == its pure-PyTorch twin, and per-row peak memory that follows
the cache."""

from __future__ import annotations

import pytest
import torch

from hymba_bench import ops
from hymba_bench.bench.throughput import decode_throughput, make_step
from hymba_bench.ops.conv import causal_conv1d_update as conv_update_torch
from tests.helpers import VARIANTS, bench, small_model

pytestmark = pytest.mark.gpu


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


@pytest.mark.parametrize("name", VARIANTS)
def test_cuda_decode_equals_forward(name: str) -> None:
    model = small_model(name).cuda()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 48), device="cuda")
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, 48)
        steps = [model(ids[:, :7], cache)] + [model(ids[:, t:t + 1], cache) for t in range(7, 48)]
    assert rel(torch.cat(steps, 1), full) < 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_cuda_graph_replay_equals_eager(name: str) -> None:
    model = small_model(name).cuda()
    ids = torch.randint(0, model.cfg.vocab_size, (4, 40), device="cuda")
    with torch.inference_mode():
        eager_cache, cache = model.allocate_cache(4, 60), model.allocate_cache(4, 60)
        model(ids, eager_cache)
        model(ids, cache)
        step = make_step(model, cache, ids[:, -1:], "graph")
        token = ids[:, -1:]
        for _ in range(12):
            want = model(token, eager_cache)
            assert rel(step(token), want) < 1e-5
            token = want[:, -1].argmax(-1, keepdim=True)
        assert cache.pos == eager_cache.pos


def test_cuda_scan_equals_ref_values_and_grads() -> None:
    if ops._scan_cuda is None:
        pytest.skip("mamba-ssm is not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, n, length = 2, 64, 16, 300  # a length that is no multiple of any chunk size

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=g).requires_grad_()

    u, delta, z = rand(b, d, length), rand(b, d, length), rand(b, d, length)
    a = (-torch.rand(d, n, device="cuda", generator=g) - 0.5).requires_grad_()
    bb, c, dd, bias = rand(b, n, length), rand(b, n, length), rand(d), rand(d)
    inputs = (u, delta, a, bb, c, dd, z, bias)
    outs = {}
    for name, fn in (("cuda", ops.selective_scan), ("ref", ops.selective_scan_ref)):
        y, last = fn(*inputs, True, True)
        # mamba-ssm's backward ignores the last state's gradient (prefill only needs its value)
        grads = torch.autograd.grad((y * y.detach()).sum(), inputs)
        outs[name] = (y, last.detach(), *grads)
    for got, want in zip(outs["cuda"], outs["ref"], strict=True):
        assert rel(got, want) < 1e-3


def test_cuda_state_update_equals_ref() -> None:
    if ops._state_update_cuda is None:
        pytest.skip("mamba-ssm is not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, n = 4, 64, 16
    state = torch.randn(b, d, n, device="cuda", generator=g)
    x, dt, z = (torch.randn(b, d, device="cuda", generator=g) for _ in range(3))
    a = -torch.rand(d, n, device="cuda", generator=g) - 0.5
    bb, c = torch.randn(b, n, device="cuda", generator=g), torch.randn(b, n, device="cuda", generator=g)
    dd, bias = torch.randn(d, device="cuda", generator=g), torch.randn(d, device="cuda", generator=g)
    ref_state = state.clone()
    y = ops.selective_state_update(state, x, dt, a, bb, c, dd, z, bias, True)
    y_ref = ops.selective_state_update_ref(ref_state, x, dt, a, bb, c, dd, z, bias, True)
    torch.testing.assert_close(y, y_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(state, ref_state, rtol=1e-3, atol=1e-3)


def test_cuda_conv_and_update_equal_ref() -> None:
    if ops._conv_cuda is None:
        pytest.skip("causal-conv1d is not installed")
    x = torch.randn(2, 64, 33, device="cuda")
    w, b = torch.randn(64, 4, device="cuda"), torch.randn(64, device="cuda")
    torch.testing.assert_close(ops.causal_conv1d(x, w, b, "silu"),
                               ops.causal_conv1d_ref(x, w, b, "silu"), rtol=1e-3, atol=1e-3)
    state = torch.randn(2, 64, 3, device="cuda")
    ref_state = state.clone()
    for t in range(5):
        got = ops.causal_conv1d_update(x[:, :, t], state, w, b, "silu")
        want = conv_update_torch(x[:, :, t], ref_state, w, b, "silu")
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(state, ref_state)


def test_peak_memory_rows_differ_as_their_caches_do() -> None:
    settings = bench("cuda", batch=32, context=4096, gen_tokens=2, warmup=1, repeats=1,
                     dtype="float32", decode="eager")
    peaks, caches = {}, {}
    for name in ("llama", "e-meta-tokens"):
        model = small_model(name).cuda()
        result = decode_throughput(model, settings, 32)
        peaks[name] = result.peak_memory_bytes
        assert result.nvml_net_bytes is None or result.nvml_net_bytes >= 0
        caches[name] = model.allocate_cache(32, 4096 + 2).nbytes()
        del model
    assert peaks["llama"] - peaks["e-meta-tokens"] > 0.5 * (caches["llama"] - caches["e-meta-tokens"])
