"""The attention mask and the sliding-window ring buffer, against the spec's rule."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hymba_bench.design.config import ModelConfig
from hymba_bench.design.masks import visible
from hymba_bench.model.cache import InferenceCache


def spec_rule(q: int, k: int, window: int | None, meta: int) -> bool:
    """The released weights' rule, literally: k <= q and (q - k <= W or k < M)."""
    return k <= q and (window is None or q - k <= window or k < meta)


windows = st.one_of(st.none(), st.integers(1, 40))


@given(window=windows, meta=st.integers(0, 12), length=st.integers(1, 80))
def test_mask_matches_spec(window: int | None, meta: int, length: int) -> None:
    pos = torch.arange(length)
    mask = visible(pos, pos, window, meta)
    for q in range(length):
        for k in range(length):
            assert bool(mask[q, k]) == spec_rule(q, k, window, meta)


@given(window=windows, meta=st.integers(0, 12), length=st.integers(1, 80))
def test_visible_key_counts(window: int | None, meta: int, length: int) -> None:
    pos = torch.arange(length)
    counts = visible(pos, pos, window, meta).sum(-1)
    for q in range(length):
        if window is None or q < meta:
            expected = q + 1
        else:  # every meta token, plus the query and the W real tokens before it
            expected = meta + min(window + 1, q - meta + 1)
        assert counts[q] == expected
        assert visible(pos[q:q + 1], pos, window, meta)[0, :meta].all() or q < meta


@given(window=st.integers(1, 24), meta=st.integers(0, 10), real=st.integers(1, 70),
       extra=st.integers(0, 30))
def test_ring_buffer_holds_exactly_the_visible_keys(window: int, meta: int, real: int,
                                                    extra: int) -> None:
    cfg = ModelConfig(layout=["attention"], n_layers=3, sliding_window=window,
                      global_layers=[0], meta_tokens=meta)
    spec = cfg.layers[1]
    assert spec.attention == "sliding"
    cache = InferenceCache(cfg, batch=1, max_seq_len=real + extra)
    end = meta + real  # positions 0..end-1 written; the next query is end-1
    held = cache.slot_positions(spec, end)
    assert held.numel() == meta + min(window + 1, real + extra)
    held_set = {int(p) for p in held if p >= 0}
    wanted = {k for k in range(end) if spec_rule(end - 1, k, window, meta)}
    assert held_set == wanted
    for p in held_set:  # and each lives in the slot the writer puts it in
        assert int(held[cache.slot_of(spec, p)]) == p


def test_negative_positions_are_empty_slots() -> None:
    mask = visible(torch.tensor([5]), torch.tensor([-1, 0, 5]), None, 0)
    assert mask.tolist() == [[False, True, True]]


@given(window=st.integers(1, 40), meta=st.integers(0, 6), length=st.integers(520, 800),
       seed=st.integers(0, 2**16))
@settings(max_examples=8)
def test_blocked_sliding_prefill_equals_full_mask(window: int, meta: int, length: int,
                                                  seed: int) -> None:
    from hymba_bench import ops

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, length, 8, generator=g)
    k, v = torch.randn(1, 2, length, 8, generator=g), torch.randn(1, 2, length, 16, generator=g)
    pos = torch.arange(length)
    expected = ops.attention_ref(q, k, v, visible(pos, pos, window, meta))
    torch.testing.assert_close(ops.sliding_attention_blocked(q, k, v, pos, window, meta), expected,
                               rtol=1e-4, atol=1e-5)
