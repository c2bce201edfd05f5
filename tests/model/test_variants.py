"""One test body for every registered variant: decoding, causality, batching, cache size."""

from __future__ import annotations

import pytest
import torch

from hymba_bench.design.registry import profiles, resolve
from hymba_bench.model.cache import InferenceCache, cache_bytes
from tests.helpers import VARIANTS, small_model

ATOL = 2e-5


def decode(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    cache = model.allocate_cache(ids.shape[0], ids.shape[1])
    outs = [model(ids[:, :prefill], cache)]
    outs += [model(ids[:, i:i + 1], cache) for i in range(prefill, ids.shape[1])]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("prefill", [1, 7, 45])
@torch.no_grad()
def test_decode_equals_forward(name: str, prefill: int) -> None:
    model = small_model(name)
    window = model.cfg.sliding_window or 0
    length = max(70, 2 * window + 10)  # always decode well past the sliding window
    ids = torch.randint(0, model.cfg.vocab_size, (3, length))
    full = model(ids)
    assert full.shape == (3, length, model.cfg.vocab_size)
    torch.testing.assert_close(decode(model, ids, prefill), full, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_causal(name: str) -> None:
    model = small_model(name)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 60))
    changed = ids.clone()
    changed[:, 41] = (changed[:, 41] + 1) % model.cfg.vocab_size
    a, b = model(ids), model(changed)
    # Not bit-exact: a changed token can move MoE routing, regrouping other tokens' expert matmuls.
    torch.testing.assert_close(a[:, :41], b[:, :41], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 41:], b[:, 41:])


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_batch_rows_independent(name: str) -> None:
    """A batched decode gives each row what it would get alone (meta tokens and windows included)."""
    model = small_model(name)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 50))
    batched = decode(model, ids, 9)
    for row in range(3):
        alone = decode(model, ids[row:row + 1], 9)
        torch.testing.assert_close(batched[row:row + 1], alone, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("profile", sorted(profiles()))
def test_cache_bytes_formula_equals_allocation(name: str, profile: str) -> None:
    resolved = resolve(name, profile)
    cfg, seq = resolved.config, resolved.info["cache_seq_len"]
    for batch, dtype in [(1, torch.float16), (2, torch.float32)]:
        cache = InferenceCache(cfg, batch, seq, dtype=dtype)
        assert cache.nbytes() == cache_bytes(cfg, batch, seq, dtype)


@pytest.mark.parametrize("name", VARIANTS)
def test_cache_overflow_is_an_error(name: str) -> None:
    model = small_model(name)
    cache = model.allocate_cache(1, 4)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="cache holds 4 tokens"):
            model(torch.zeros(1, 1, dtype=torch.long), cache)


def test_one_seeding_rule_for_every_build() -> None:
    """A design built with the same seed has the same weights wherever it is built (the library
    call, the benchmark stages, the training stage); another seed gives other weights."""
    from hymba_bench import build_model
    from hymba_bench.design.registry import resolve
    from hymba_bench.model.lm import count_parameters, instantiate

    cfg = resolve("b-parallel", "tiny").config
    torch.manual_seed(123)  # whatever the generator held before does not matter
    a = build_model("b-parallel").state_dict()
    b = instantiate(cfg).state_dict()
    c = instantiate(cfg, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert count_parameters(cfg) == sum(v.numel() for v in instantiate(cfg).parameters())
