"""The gated delta rule: the chunked form, the compiled CPU path and the decode step equal the
step-by-step recurrence, in values and gradients, around chunk and span boundaries, with and
without an initial state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hymba_bench import ops
from hymba_bench.ops import cpu_kernel

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(),
                                  reason=f"no compiled CPU kernel: {cpu_kernel.unavailable_reason()}")


def gdr_inputs(batch: int, length: int, heads: int, dk: int, dv: int, seed: int,
               dtype: torch.dtype = torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    return dict(q=F.normalize(r(batch, length, heads, dk), dim=-1) * dk ** -0.5,
                k=F.normalize(r(batch, length, heads, dk), dim=-1), v=r(batch, length, heads, dv),
                g=-F.softplus(r(batch, length, heads)), beta=torch.sigmoid(r(batch, length, heads)))


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), chunk=st.sampled_from([1, 2, 4, 8, 16]), whole=st.integers(0, 4),
       extra=st.integers(-1, 1), heads=st.integers(1, 3), dk=st.integers(1, 5),
       dv=st.integers(1, 5), with_state=st.booleans(), span=st.sampled_from([None, 1, 2]),
       seed=st.integers(0, 2**16))
def test_chunked_equals_the_recurrence(batch, chunk, whole, extra, heads, dk, dv, with_state,
                                       span, seed) -> None:
    length = max(1, whole * chunk + extra)
    x = gdr_inputs(batch, length, heads, dk, dv, seed)
    state = torch.randn(batch, heads, dk, dv, dtype=torch.float64) if with_state else None
    want_o, want_s = ops.gated_delta_rule_ref(**x, initial_state=state)
    got_o, got_s = ops.gated_delta_rule_chunked(**x, initial_state=state, chunk_size=chunk,
                                                span_chunks=span)
    torch.testing.assert_close(got_o, want_o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_s.double(), want_s.double(), rtol=1e-4, atol=1e-5)


@needs_kernel
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 2), length=st.integers(1, 40), heads=st.integers(1, 3),
       dk=st.integers(1, 9), dv=st.integers(1, 20), with_state=st.booleans(),
       seed=st.integers(0, 2**16))
def test_the_compiled_path_equals_the_recurrence(batch, length, heads, dk, dv, with_state,
                                                 seed) -> None:
    """Every value width, a multiple of the kernel's 8 lanes or not, and every remainder of its
    groups of columns."""
    x = gdr_inputs(batch, length, heads, dk, dv, seed, dtype=torch.float32)
    state = torch.randn(batch, heads, dk, dv) if with_state else None
    want_o, want_s = ops.gated_delta_rule_ref(**x, initial_state=state)
    got_o, got_s = ops.gated_delta_rule_cpu(**x, initial_state=state)
    torch.testing.assert_close(got_o, want_o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_s, want_s, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_the_compiled_path_at_wide_heads_and_the_dispatch_takes_it() -> None:
    x = gdr_inputs(1, 70, 2, 32, 136, seed=4, dtype=torch.float32)  # 17 vectors: 2 groups + 1
    want_o, want_s = ops.gated_delta_rule_ref(**x)
    got_o, got_s = ops.gated_delta_rule(**x)
    assert ops.backend_report("cpu")["gated_delta_rule"] == "cpu-kernel"
    torch.testing.assert_close(got_o, want_o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_s, want_s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("path", ["chunked", "cpu"])
def test_chunked_gradients_equal_the_recurrences(with_state: bool, path: str) -> None:
    if path == "cpu" and not cpu_kernel.available():
        pytest.skip(f"no compiled CPU kernel: {cpu_kernel.unavailable_reason()}")
    x = gdr_inputs(2, 13, 2, 3, 4, seed=3)
    state = torch.randn(2, 2, 3, 4, dtype=torch.float64) if with_state else None
    w, ws = torch.randn(2, 13, 2, 4, dtype=torch.float64), torch.randn(2, 2, 3, 4, dtype=torch.float64)
    grads = []
    fast = {"chunked": ops.gated_delta_rule_chunked, "cpu": ops.gated_delta_rule_cpu}[path]
    for fn, kw in ((ops.gated_delta_rule_ref, {}), (fast, {"chunk_size": 4})):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        s0 = state.clone().requires_grad_() if state is not None else None
        o, last = fn(**leaves, initial_state=s0, **kw)
        ((o.double() * w).sum() + (last.double() * ws).sum()).backward()
        grads.append([t.grad for t in leaves.values()] + ([s0.grad] if s0 is not None else []))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_decode_steps_continue_a_chunked_prefill() -> None:
    x = gdr_inputs(2, 19, 3, 4, 5, seed=7, dtype=torch.float32)
    want, _ = ops.gated_delta_rule_ref(**x)
    o, state = ops.gated_delta_rule_chunked(**{k: v[:, :12] for k, v in x.items()}, chunk_size=4)
    steps = [ops.gated_delta_rule_step(state, *(x[k][:, t] for k in ("q", "k", "v", "g", "beta")))
             for t in range(12, 19)]
    torch.testing.assert_close(torch.cat([o, torch.stack(steps, 1)], 1), want, rtol=1e-4, atol=1e-5)


def test_the_chunked_form_steps_per_chunk_not_per_token() -> None:
    """Its Python work grows with the number of chunks (the state carried between them), and a
    chunk of 64 tokens costs a handful of ops, not 64 steps."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for length in (64 * 4, 64 * 8):
        x = gdr_inputs(1, length, 1, 2, 2, seed=1, dtype=torch.float32)
        Count.calls = 0
        with Count():
            ops.gated_delta_rule_chunked(**x, chunk_size=64)
        counts.append(Count.calls)
    per_chunk = (counts[1] - counts[0]) / 4
    assert per_chunk <= 16, per_chunk
