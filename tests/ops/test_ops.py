"""Fast kernels equal their reference twins."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from hymba_bench import ops
from hymba_bench.ops import cpu_kernel
from hymba_bench.ops import scan as scan_mod
from hymba_bench.ops.attention import _decode_fused

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(),
                                  reason=f"compiled CPU scan: {cpu_kernel.unavailable_reason()}")
# Every fast CPU scan path, held to the same reference by the same test bodies.
FAST_SCANS = [pytest.param(ops.selective_scan_chunked, id="torch-chunked"),
              pytest.param(ops.selective_scan_cpu, id="cpu-kernel", marks=needs_kernel)]


LAYOUTS = ["rows", "time-major", "slice"]


def as_layout(t: Tensor, layout: str) -> Tensor:
    """(B, C, L) -> the same values held as the mixers hand them over: contiguous rows, a
    transposed time-major tensor, or a transposed slice of a wider time-major one (the input
    projection's). Differentiable, so a leaf's gradient comes back through it."""
    if layout == "rows":
        return t
    tm = t.transpose(1, 2)  # (B, L, C)
    if layout == "time-major":
        return tm.contiguous().transpose(1, 2)
    wide = torch.cat([tm[..., :1].detach() * 0, tm, tm[..., :2].detach() * 0 + 7], dim=-1)
    return wide[..., 1:1 + t.shape[1]].transpose(1, 2)


def scan_inputs(batch: int, d: int, n: int, length: int, bc: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    shapes = {"const": (d, n), "var": (batch, n, length), "group": (batch, 2, n, length)}
    return dict(
        u=r(batch, d, length), delta=r(batch, d, length) * 0.5,
        A=-torch.exp(r(d, n) * 0.5), B=r(*shapes[bc]), C=r(*shapes[bc]),
    )


@pytest.mark.parametrize("fast", FAST_SCANS)
@given(batch=st.integers(1, 3), d=st.sampled_from([2, 4, 6, 8, 12, 24]), n=st.integers(1, 8),
       length=st.integers(1, 300), bc=st.sampled_from(["const", "var", "group"]),
       use_d=st.booleans(), use_z=st.booleans(), use_bias=st.booleans(),
       softplus=st.booleans(), seed=st.integers(0, 2**16))
def test_selective_scan_equals_ref(fast, batch, d, n, length, bc, use_d, use_z, use_bias,
                                   softplus, seed) -> None:
    x = scan_inputs(batch, d, n, length, bc, seed)
    if not softplus:
        x["delta"] = x["delta"].abs()
    kw = dict(
        D=torch.randn(d) if use_d else None,
        z=torch.randn(batch, d, length) if use_z else None,
        delta_bias=torch.randn(d) * 0.1 if use_bias else None,
        delta_softplus=softplus, return_last_state=True,
    )
    y, last = fast(**x, **kw)
    y_ref, last_ref = ops.selective_scan_ref(**x, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-5)


def test_selective_scan_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """State carries across chunks: a chunk of 7 over 50 steps equals the reference."""
    monkeypatch.setattr(scan_mod, "CHUNK", 7)
    x = scan_inputs(2, 4, 3, 50, "var", 1)
    torch.testing.assert_close(ops.selective_scan_chunked(**x, delta_softplus=True),
                               ops.selective_scan_ref(**x, delta_softplus=True),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bc", ["var", "const", "group", "const-B"])
def test_selective_scan_grad_equals_ref_grad(bc: str) -> None:
    """Every input's gradient, through the hand-written backward (var) and the autograd loop."""
    x = scan_inputs(2, 4, 3, 40, bc.removeprefix("const-").replace("B", "var"), 2)
    if bc == "const-B":  # B constant, C per step: the shared-C layout without the fast path
        x["B"] = torch.randn(4, 3)
    grads = []
    for fn in (ops.selective_scan_chunked, ops.selective_scan_ref):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        fn(**leaves, delta_softplus=True).square().sum().backward()
        grads.append([leaves[k].grad for k in sorted(leaves)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast", FAST_SCANS)
@given(batch=st.integers(1, 2), d=st.sampled_from([3, 8, 16]), n=st.integers(1, 6),
       length=st.integers(1, 150), use_d=st.booleans(), use_z=st.booleans(),
       use_bias=st.booleans(), softplus=st.booleans(), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**16))
def test_selective_scan_training_grads_equal_ref(fast, batch, d, n, length, use_d, use_z,
                                                 use_bias, softplus, layout, seed) -> None:
    """Mamba's layout (B, C per step): values and every input's gradient (the delta bias's and
    the last state's included, through softplus or not) equal autograd through the reference
    loop, across the kernel's chunk boundary, with u, delta, z, B, C and the output's gradient
    held in each layout the mixers produce."""
    g = torch.Generator().manual_seed(seed)
    x = scan_inputs(batch, d, n, length, "var", seed)
    if not softplus:
        x["delta"] = x["delta"].abs()
    if use_d:
        x["D"] = torch.randn(d, generator=g)
    if use_z:
        x["z"] = torch.randn(batch, d, length, generator=g)
    if use_bias:
        x["delta_bias"] = torch.randn(d, generator=g) * 0.1
    dy, dlast = torch.randn(batch, d, length, generator=g), torch.randn(batch, d, n, generator=g)
    results = []
    strided = {"u", "delta", "z", "B", "C"}
    for fn in (fast, ops.selective_scan_ref):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        args = {k: as_layout(v, layout) if k in strided else v for k, v in leaves.items()}
        y, last = fn(**args, delta_softplus=softplus, return_last_state=True)
        ((y * as_layout(dy, layout)).sum() + (last * dlast).sum()).backward()
        results.append([y, last, *(leaves[k].grad for k in sorted(leaves))])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_cpu_kernel_exp_matches_libm() -> None:
    """The kernel's own exp, read back through a two-step scan: x_0 = 1, x_1 = exp(delta_1 A).
    Covers underflow to zero, the saturation edge and everything between, to 2 ulp."""
    arg = torch.cat([torch.linspace(-110, 88.3, 4001), torch.tensor([0.0, -87.3, -87.4, 1e-8])])
    m = arg.numel()
    delta = torch.stack([torch.ones(m), torch.ones(m)], -1)[None]  # (1, m, 2)
    u = torch.stack([torch.ones(m), torch.zeros(m)], -1)[None]  # delta_0 u_0 B_0 = 1, no input at 1
    y = ops.selective_scan_cpu(u, delta, arg[:, None], torch.ones(1, 1, 2), torch.ones(1, 1, 2))
    torch.testing.assert_close(y[0, :, 1], torch.exp(arg), rtol=2.5e-7, atol=1e-37)


@needs_kernel
def test_cpu_kernel_softplus_matches_torch() -> None:
    """The kernel's own softplus (and delta bias), read back through a one-step scan with u = B =
    C = 1, where y = delta = softplus(delta + bias): both tails, the threshold at 20, zero, tiny."""
    arg = torch.cat([torch.linspace(-100, 100, 4001), torch.tensor([0.0, 19.99, 20.0, 20.01, 1e-8])])
    m = arg.numel()
    bias = torch.full((m,), 0.25)
    ones, delta = torch.ones(1, 1, 1), arg - 0.25
    y = ops.selective_scan_cpu(torch.ones(1, m, 1), delta[None, :, None], -torch.ones(m, 1), ones,
                               ones, delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(y[0, :, 0], F.softplus(delta + bias), rtol=4e-7, atol=1e-37)


@needs_kernel
def test_cpu_kernel_hands_larger_states_to_the_chunked_scan() -> None:
    x = scan_inputs(1, 8, cpu_kernel.max_state() + 1, 20, "var", 5)
    assert not scan_mod.cpu_kernel_applies(x["u"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(ops.selective_scan_cpu(**x, delta_softplus=True),
                               ops.selective_scan_ref(**x, delta_softplus=True), rtol=1e-4, atol=1e-5)


def _fresh_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path, **env: str) -> None:
    monkeypatch.setenv("HYMBA_BENCH_CACHE", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cpu_kernel._load.cache_clear()  # and again after the test (reset_kernel)


@pytest.fixture
def reset_kernel():
    yield
    cpu_kernel._load.cache_clear()


@pytest.mark.parametrize(("env", "reason"), [
    ({"HYMBA_BENCH_CPU_KERNEL": "0"}, "disabled by HYMBA_BENCH_CPU_KERNEL=0"),
    ({"CXX": "false"}, "the C++ build failed"),
])
def test_scan_dispatch_and_report_follow_the_kernel(monkeypatch, tmp_path, reset_kernel, env,
                                                    reason) -> None:
    """What the results file says ran is what ran: without the kernel (disabled, or a compiler
    that fails) the dispatch takes the chunked scan and the report says so, with the reason."""
    _fresh_kernel(monkeypatch, tmp_path, **env)
    assert not cpu_kernel.available() and cpu_kernel.unavailable_reason().startswith(reason)
    ran = []
    for name in ("selective_scan_cpu", "selective_scan_chunked"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _r=real, _n=name, **k: ran.append(_n) or _r(*a, **k))
    x = scan_inputs(1, 8, 4, 10, "var", 0)
    ops.selective_scan(**x)
    assert ran == ["selective_scan_chunked"]
    assert ops.backend_report("cpu")["selective_scan"] == "torch-chunked"
    assert ops.backend_report("cpu")["causal_conv1d"] == "torch-conv1d"
    assert ops.backend_report("cpu")["rms_norm"] == "torch"
    assert ops._conv_path(False)[1] is ops.causal_conv1d_torch


@needs_kernel
def test_scan_dispatch_takes_the_built_kernel(monkeypatch, tmp_path, reset_kernel) -> None:
    _fresh_kernel(monkeypatch, tmp_path)  # a build from scratch, into an empty cache
    assert cpu_kernel.available(), cpu_kernel.unavailable_reason()
    assert list(tmp_path.glob("kernels/hymba_kernels-*.so"))
    ran = []
    real = ops.selective_scan_cpu
    monkeypatch.setattr(ops, "selective_scan_cpu", lambda *a, **k: ran.append(1) or real(*a, **k))
    ops.selective_scan(**scan_inputs(1, 8, 4, 10, "var", 0))
    assert ran and ops.backend_report("cpu")["selective_scan"] == "cpu-kernel"
    assert ops.backend_report("cpu")["causal_conv1d"] == "cpu-kernel"
    assert ops.backend_report("cpu")["rms_norm"] == "cpu-kernel"
    assert ops._conv_path(False)[1] is ops.causal_conv1d_cpu


@pytest.mark.parametrize("fast", FAST_SCANS)
def test_half_precision_inputs_compute_in_fp32(fast) -> None:
    x = scan_inputs(1, 4, 4, 30, "var", 3)
    half = {k: v.half() for k, v in x.items()}
    y = fast(**half, delta_softplus=True)
    assert y.dtype == torch.float16
    ref = ops.selective_scan_ref(**{k: v.float() for k, v in half.items()}, delta_softplus=True)
    torch.testing.assert_close(y.float(), ref, rtol=2e-3, atol=2e-3)


@given(batch=st.integers(1, 3), d=st.integers(1, 6), n=st.integers(1, 6),
       length=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_state_update_steps_equal_scan(batch, d, n, length, seed) -> None:
    x = scan_inputs(batch, d, n, length, "var", seed)
    Dp, z, bias = torch.randn(d), torch.randn(batch, d, length), torch.randn(d) * 0.1
    y_ref, last = ops.selective_scan_ref(**x, D=Dp, z=z, delta_bias=bias, delta_softplus=True,
                                         return_last_state=True)
    state = torch.zeros(batch, d, n)
    ys = [ops.selective_state_update(state, x["u"][:, :, t], x["delta"][:, :, t], x["A"],
                                     x["B"][:, :, t], x["C"][:, :, t], Dp, z[:, :, t],
                                     dt_bias=bias, dt_softplus=True) for t in range(length)]
    torch.testing.assert_close(torch.stack(ys, 2), y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-4, atol=1e-5)


# Every CPU causal conv path, held to the reference by the same test bodies.
FAST_CONVS = [pytest.param(ops.causal_conv1d_torch, id="torch-conv1d"),
              pytest.param(ops.causal_conv1d_cpu, id="cpu-kernel", marks=needs_kernel)]


@pytest.mark.parametrize("fast", FAST_CONVS)
@given(batch=st.integers(1, 3), d=st.integers(1, 5), k=st.integers(1, 5),
       length=st.integers(1, 30), bias=st.booleans(), act=st.sampled_from([None, "silu"]),
       seed=st.integers(0, 2**16))
def test_causal_conv1d_equals_ref_and_steps(fast, batch, d, k, length, bias, act, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(batch, d, length, generator=g), torch.randn(d, k, generator=g)
    b = torch.randn(d, generator=g) if bias else None
    out = fast(x, w, b, act)
    torch.testing.assert_close(out, ops.causal_conv1d_ref(x, w, b, act), rtol=1e-5, atol=1e-5)
    # stepping from a prefix's state reproduces the rest
    split = length // 2
    state = ops.conv_state_from_prefix(x[:, :, :split], k).clone()
    assert state.shape == (batch, d, k - 1)
    steps = [ops.causal_conv1d_update(x[:, :, t], state, w, b, act) for t in range(split, length)]
    if steps:
        torch.testing.assert_close(torch.stack(steps, 2), out[:, :, split:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast", FAST_CONVS)
@given(batch=st.integers(1, 3), d=st.integers(1, 12), k=st.integers(1, 5),
       length=st.integers(1, 80), bias=st.booleans(), act=st.sampled_from([None, "silu"]),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_causal_conv1d_grads_equal_ref(fast, batch, d, k, length, bias, act, layout,
                                       seed) -> None:
    """Gradients of x, the weight and the bias equal autograd through the shifted-sum reference
    (channels off the kernel's vector width, K = 1, no bias: every edge of its padding), with x
    and the output's gradient in each layout the mixers produce."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, d, length, generator=g), torch.randn(d, k, generator=g)]
    if bias:
        inputs.append(torch.randn(d, generator=g))
    dy = torch.randn(batch, d, length, generator=g)
    grads = []
    for fn in (fast, ops.causal_conv1d_ref):
        leaves = [t.clone().requires_grad_() for t in inputs]
        x, w, *b = leaves
        out = fn(as_layout(x, layout), w, b[0] if b else None, act)
        grads.append(torch.autograd.grad((out * as_layout(dy, layout)).sum(), leaves))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_causal_conv1d_matches_torch_conv_module() -> None:
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 6, 20)
    expected = F.silu(conv(x)[..., :20])
    got = ops.causal_conv1d(x, conv.weight.squeeze(1), conv.bias, "silu")
    torch.testing.assert_close(got, expected)


def test_cuda_kernels_are_called_by_their_own_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA dispatch as the kernels declare their parameters (causal-conv1d 1.7's order, where
    the 4th positional is `seq_idx`); stand-ins compute with the twins, so only the call is tested."""

    def conv_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                return_final_states=False, final_states_out=None, activation=None):
        assert seq_idx is None and initial_states is None and not return_final_states
        return ops.causal_conv1d_ref(x, weight, bias, activation)

    def conv_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                    conv_state_indices=None):
        assert cache_seqlens is None and conv_state_indices is None
        return ops.causal_conv1d_update_torch(x, conv_state, weight, bias, activation)

    monkeypatch.setattr(ops, "_conv_cuda", conv_fn)
    monkeypatch.setattr(ops, "_conv_update_cuda", conv_update)
    for name in ("_conv_path", "_conv_update_path"):  # as if these CPU tensors were on CUDA
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda cuda, real=real: real(True))
    assert ops._conv_path(False)[0] == "causal_conv1d"
    x, w, b = torch.randn(2, 6, 9), torch.randn(6, 4), torch.randn(6)
    want = ops.causal_conv1d_ref(x, w, b, "silu")
    torch.testing.assert_close(ops.causal_conv1d(x, w, b, "silu"), want)
    state = ops.conv_state_from_prefix(x[:, :, :8], 4).clone()
    torch.testing.assert_close(ops.causal_conv1d_update(x[:, :, 8], state, w, b, "silu"), want[:, :, 8])


@pytest.mark.gpu
def test_cuda_scan_equals_ref() -> None:
    x = {k: v.cuda() for k, v in scan_inputs(2, 64, 16, 512, "var", 4).items()}
    y = ops.selective_scan(**x, delta_softplus=True)
    torch.testing.assert_close(y, ops.selective_scan_ref(**x, delta_softplus=True),
                               rtol=1e-3, atol=1e-3)


@given(batch=st.integers(1, 3), hkv=st.integers(1, 3), group=st.integers(1, 3),
       lq=st.integers(1, 12), extra=st.integers(0, 12), e=st.sampled_from([4, 8]),
       ev=st.sampled_from([4, 8, 16]), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_attention_equals_ref(batch, hkv, group, lq, extra, e, ev, masked, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    lk = lq + extra
    q = torch.randn(batch, hkv * group, lq, e, generator=g)
    k = torch.randn(batch, hkv, lk, e, generator=g)
    v = torch.randn(batch, hkv, lk, ev, generator=g)
    mask = None
    if masked:  # random mask with at least one visible key per query
        mask = torch.rand(lq, lk, generator=g) < 0.5
        mask[torch.arange(lq), torch.randint(0, lk, (lq,), generator=g)] = True
    torch.testing.assert_close(ops.attention(q, k, v, mask), ops.attention_ref(q, k, v, mask),
                               rtol=1e-4, atol=1e-5)
    if lq == 1:  # CUDA's decode path (the group folded into SDPA's query length), run here too
        torch.testing.assert_close(_decode_fused(q, k, v, mask), ops.attention_ref(q, k, v, mask),
                                   rtol=1e-4, atol=1e-5)
    if lq > 1:

        causal = ops.attention(q, k[:, :, :lq], v[:, :, :lq], causal=True)
        tril = torch.ones(lq, lq, dtype=torch.bool).tril()
        torch.testing.assert_close(causal, ops.attention_ref(q, k[:, :, :lq], v[:, :, :lq], tril),
                                   rtol=1e-4, atol=1e-5)


FAST_NORMS = [pytest.param(ops.rms_norm_torch, id="torch"),
              pytest.param(ops.rms_norm_cpu, id="cpu-kernel", marks=needs_kernel)]


@pytest.mark.parametrize("fast", FAST_NORMS)
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=3), d=st.integers(1, 70),
       eps=st.sampled_from([1e-6, 1e-5, 0.1]), half=st.booleans(), seed=st.integers(0, 2**16))
def test_rms_norm_equals_ref_values_and_grads(fast, lead, d, eps, half, seed) -> None:
    """Both hand-written backwards against autograd through the formula: widths off the vector
    width, more rows than one of the kernel's blocks, half inputs."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(*lead, d, generator=g) * 3, torch.randn(d, generator=g)
    dy = torch.randn(*lead, d, generator=g)
    if half:
        x, dy = x.half(), dy.half()
    results = []
    for fn in (fast, ops.rms_norm_ref):
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xl, wl, eps)
        results.append([y, *torch.autograd.grad((y.float() * dy.float()).sum(), (xl, wl))])
    assert results[0][0].dtype == x.dtype
    tol = dict(rtol=2e-3, atol=2e-3) if half else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **tol)


@given(batch=st.integers(1, 3), length=st.integers(1, 40), heads=st.integers(1, 5),
       half_d=st.integers(1, 12), offset=st.integers(0, 5000), strided=st.booleans(),
       seed=st.integers(0, 2**16))
def test_rotary_equals_ref_values_and_grads(batch, length, heads, half_d, offset, strided,
                                            seed) -> None:
    """The one-node rotary against autograd through transformers' formula: values and x's
    gradient, at positions far from 0, with x a slice of a wider projection (as the hybrid
    mixer's Q and K are)."""
    from hymba_bench.model.layers import Rotary

    g = torch.Generator().manual_seed(seed)
    d = 2 * half_d
    cos, sin = Rotary(d).tables(torch.arange(offset, offset + length))
    wide = torch.randn(batch, length, heads, d + 3, generator=g)
    dy = torch.randn(batch, length, heads, d, generator=g)
    results = []
    for fn in (ops.rotary, ops.rotary_ref):
        leaf = wide.clone().requires_grad_()
        x = leaf[..., 1:1 + d] if strided else leaf[..., :d].contiguous()
        y = fn(x, cos, sin)
        results.append([y, *torch.autograd.grad((y * dy).sum(), leaf)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rotary_rotates_pairs_by_their_angle() -> None:
    """Half-split pairing: (x_i, x_{i+d/2}) turns by position * theta^(-2i/d), norms kept."""
    from hymba_bench.model.layers import Rotary

    d, pos = 8, 7
    cos, sin = Rotary(d, theta=100.0).tables(torch.tensor([pos]))
    x = torch.zeros(1, 1, 1, d)
    x[..., 1] = 1.0  # the unit vector of pair 1's first coordinate
    y = ops.rotary(x, cos, sin)[0, 0, 0]
    angle = pos * 100.0 ** (-2 / d)
    expected = torch.zeros(d)
    expected[1], expected[1 + d // 2] = math.cos(angle), math.sin(angle)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
