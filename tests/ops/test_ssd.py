"""Mamba-2's SSD: the chunked form and the decode step equal the step-by-step recurrence, in
values and gradients, at every length around the chunk boundaries, with and without a state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hymba_bench import ops


def ssd_inputs(batch: int, length: int, groups: int, per_group: int, p: int, n: int,
               seed: int, dtype: torch.dtype = torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    heads = groups * per_group
    return dict(x=r(batch, length, heads, p), dt=r(batch, length, heads, scale=0.7),
                A=-torch.exp(r(heads, scale=0.5)), B=r(batch, length, groups, n),
                C=r(batch, length, groups, n), D=r(heads), dt_bias=r(heads, scale=0.3))


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), chunk=st.sampled_from([1, 2, 4, 8, 16]),
       whole=st.integers(0, 4), extra=st.integers(-1, 1), groups=st.integers(1, 2),
       per_group=st.integers(1, 3), p=st.integers(1, 4), n=st.integers(1, 5),
       with_state=st.booleans(), with_d=st.booleans(), span=st.sampled_from([None, 1, 2]),
       seed=st.integers(0, 2**16))
def test_chunked_equals_the_recurrence(batch, chunk, whole, extra, groups, per_group, p, n,
                                       with_state, with_d, span, seed) -> None:
    length = max(1, whole * chunk + extra)  # on, just before and just past chunk boundaries
    x = ssd_inputs(batch, length, groups, per_group, p, n, seed)
    state = torch.randn(batch, groups * per_group, p, n, dtype=torch.float64) if with_state else None
    D = x.pop("D") if with_d else None
    x.pop("D", None)
    want_y, want_s = ops.ssd_ref(**x, D=D, dt_softplus=True, initial_state=state)
    got_y, got_s = ops.ssd_chunked(**x, D=D, dt_softplus=True, initial_state=state,
                                   chunk_size=chunk, span_chunks=span)
    torch.testing.assert_close(got_y, want_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_s.double(), want_s.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("span", [None, 2])
def test_chunked_gradients_equal_the_recurrences(with_state: bool, span: int | None) -> None:
    x = ssd_inputs(2, 13, 2, 2, 3, 4, seed=5)
    state = torch.randn(2, 4, 3, 4, dtype=torch.float64) if with_state else None
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    s_ref = state.clone().requires_grad_() if state is not None else None
    s_fast = state.clone().requires_grad_() if state is not None else None
    w = torch.randn(2, 13, 4, 3, dtype=torch.float64)
    ws = torch.randn(2, 4, 3, 4, dtype=torch.float64)

    def loss(fn, inputs, s0, **kw):
        y, last = fn(**inputs, dt_softplus=True, initial_state=s0, **kw)
        return (y.double() * w).sum() + (last.double() * ws).sum()

    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    loss(ops.ssd_ref, ref_leaves, s_ref).backward()
    loss(ops.ssd_chunked, leaves, s_fast, chunk_size=4, span_chunks=span).backward()
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"d/d{k}: {m}")
    if state is not None:
        torch.testing.assert_close(s_fast.grad, s_ref.grad, rtol=1e-4, atol=1e-5)


def test_decode_steps_continue_a_chunked_prefill() -> None:
    x = ssd_inputs(2, 21, 1, 4, 3, 5, seed=9, dtype=torch.float32)
    want, _ = ops.ssd_ref(**x, dt_softplus=True)
    head = {k: (v[:, :15] if v.dim() >= 3 else v) for k, v in x.items()}
    y, state = ops.ssd_chunked(**head, dt_softplus=True, chunk_size=4)
    steps = [ops.ssd_step(state, x["x"][:, t], x["dt"][:, t], x["A"], x["B"][:, t], x["C"][:, t],
                          x["D"], x["dt_bias"], dt_softplus=True) for t in range(15, 21)]
    torch.testing.assert_close(torch.cat([y, torch.stack(steps, 1)], 1), want, rtol=1e-4,
                               atol=1e-5)


def test_the_chunked_form_steps_per_chunk_not_per_token() -> None:
    """Its Python work grows only with the chunks (the state carried from one to the next, one
    op each), never with the tokens inside them."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for length in (64 * 4, 64 * 8):
        x = ssd_inputs(1, length, 1, 2, 2, 2, seed=1, dtype=torch.float32)
        Count.calls = 0
        with Count():
            ops.ssd_chunked(**x, dt_softplus=True, chunk_size=64)
        counts.append(Count.calls)
    assert (counts[1] - counts[0]) / 4 <= 4, counts


def test_gated_rms_norm_gates_then_normalises_each_group() -> None:
    x, z = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    w = torch.rand(8)
    got = ops.gated_rms_norm(x, z, w, 1e-5, group_size=4)
    g = x * torch.nn.functional.silu(z)
    for lo in (0, 4):
        part = g[..., lo:lo + 4]
        want = part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + 1e-5) * w[lo:lo + 4]
        torch.testing.assert_close(got[..., lo:lo + 4], want)
