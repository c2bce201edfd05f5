"""Sliding-window prefill: every kernel equals attention over the full mask (`masks.visible`),
meta tokens visible to every query, values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hymba_bench import ops
from hymba_bench.errors import HymbaBenchError

KERNELS = [pytest.param(ops.sliding_attention_blocked, id="blocked"),
           pytest.param(ops.sliding_attention_flex, id="flex")]


def inputs(batch: int, heads: int, kv_heads: int, length: int, e: int, ev: int,
           seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, e, generator=g)
    k = torch.randn(batch, kv_heads, length, e, generator=g)
    v = torch.randn(batch, kv_heads, length, ev, generator=g)
    return q, k, v, torch.arange(length)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("length", "window", "n_meta"), [
    (40, 8, 0), (40, 8, 4), (700, 32, 8),  # 700 > 2 blocks of 256: the blocked loop runs
    (300, 512, 4),  # a window wider than the sequence: causal
])
def test_equals_the_mask(kernel: object, length: int, window: int, n_meta: int) -> None:
    q, k, v, pos = inputs(2, 4, 2, length, 16, 32)  # grouped queries, values twice as wide
    want = ops.sliding_attention_ref(q, k, v, pos, window, n_meta)
    got = kernel(q, k, v, pos, window, n_meta)  # type: ignore[operator]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@settings(max_examples=12, deadline=None)
@given(length=st.integers(2, 90), window=st.integers(1, 40), n_meta=st.integers(0, 6),
       group=st.sampled_from([1, 2]))
def test_flex_equals_the_mask_at_any_shape(length: int, window: int, n_meta: int,
                                           group: int) -> None:
    q, k, v, pos = inputs(1, 2 * group, 2, length, 8, 8, seed=length)
    torch.testing.assert_close(ops.sliding_attention_flex(q, k, v, pos, window, n_meta),
                               ops.sliding_attention_ref(q, k, v, pos, window, n_meta),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
def test_flex_gradients_equal_the_mask_s() -> None:
    q, k, v, pos = (t.cuda() for t in inputs(1, 2, 2, 48, 8, 16))
    grads = []
    for fn in (ops.sliding_attention_ref, ops.sliding_attention_flex):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves, pos, 8, 4).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_training_on_the_cpu_takes_the_blocked_path_under_flex() -> None:
    """FlexAttention has no backward on the CPU: with gradients wanted, `flex` gives the blocked
    kernel's result and its gradients."""
    q, k, v, pos = inputs(1, 2, 2, 48, 8, 16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with ops.sliding_prefill("flex"):
        ops.sliding_attention(*leaves, pos, 8, 4).sum().backward()
    assert all(t.grad is not None for t in leaves)


def test_the_dispatch_follows_the_setting_and_refuses_an_unknown_kernel() -> None:
    assert ops.sliding_prefill_backend() == "blocked"
    with ops.sliding_prefill("flex"):
        assert ops.sliding_prefill_backend() == "flex"
    assert ops.sliding_prefill_backend() == "blocked"
    with pytest.raises(HymbaBenchError, match="sliding_prefill: expected one of blocked, flex"), \
            ops.sliding_prefill("fast"):
        pass


@pytest.mark.parametrize("name", ["c-local-global", "e-meta-tokens"])
def test_a_local_global_design_prefills_alike_through_either_kernel(name: str) -> None:
    from tests.helpers import small_model

    model = small_model(name)
    window = model.cfg.sliding_window
    assert window is not None
    ids = torch.randint(0, model.cfg.vocab_size, (2, 3 * window + 5))
    with torch.no_grad():
        blocked = model(ids)
        with ops.sliding_prefill("flex"):
            flex = model(ids)
    torch.testing.assert_close(flex, blocked, atol=1e-4, rtol=1e-4)


def test_a_run_records_which_kernel_prefilled_a_sliding_design(tmp_path: object) -> None:
    from pathlib import Path

    from hymba_bench.runner import RunOptions, run
    from hymba_bench.settings import BenchOverrides

    out = Path(str(tmp_path)) / "run"
    fast = BenchOverrides(batch=1, context=48, gen_tokens=2, repeats=1, sliding_prefill="flex")
    records = run(RunOptions(["llama", "c-local-global"], out=out, skip={"accuracy", "cache"},
                             bench=fast)).records()
    assert records.get("c-local-global", "prefill_tok_s").get("sliding_prefill") == "flex"
    assert records.get("llama", "prefill_tok_s").get("sliding_prefill") is None  # no window
