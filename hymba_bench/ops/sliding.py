"""Sliding-window attention over a fresh sequence (prefill), meta tokens always visible: the
mask is `design.masks`' rule, whichever kernel applies it.

q: (B, Hq, L, E), k: (B, Hkv, L, E), v: (B, Hkv, L, Ev), positions: (L,) absolute positions
(meta tokens first) -> (B, Hq, L, Ev).

- `blocked` (the default): SDPA over blocks of queries, each against the meta tokens and the
  keys its window reaches: O(L (W + M)) work, but one SDPA call per block.
- `flex`: one FlexAttention call with a block mask built from the same rule, so the kernel skips
  the blocks no query sees (compiled into one fused kernel on CUDA; on the CPU FlexAttention
  runs unfused, materialising the scores, which is for correctness, not speed, and has no
  backward, so training on the CPU takes the blocked path).
- `sliding_attention_ref`: attention over the full (L, L) mask.
"""

from __future__ import annotations

import contextlib
import functools
import typing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from hymba_bench.design.masks import sees, visible
from hymba_bench.errors import expect_one_of
from hymba_bench.ops.attention import attention, attention_ref

SLIDING_PREFILL = ("blocked", "flex")
# the backend `sliding_attention` uses (`sliding_prefill` sets it): a module global, as for
# `triton_decode.decode_kernels`, so that a compiled forward reads it as a constant
_active = "blocked"


@contextlib.contextmanager
def sliding_prefill(backend: str) -> Iterator[None]:
    """Within the block, sliding-window prefill runs through `backend` (`SLIDING_PREFILL`)."""
    expect_one_of(backend, SLIDING_PREFILL, "sliding_prefill")
    global _active
    previous, _active = _active, backend
    try:
        yield
    finally:
        _active = previous


def sliding_prefill_backend() -> str:
    return _active


def sliding_attention_ref(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, window: int,
                          n_meta: int) -> Tensor:
    return attention_ref(q, k, v, visible(positions, positions, window, n_meta))


def sliding_attention_blocked(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, window: int,
                              n_meta: int) -> Tensor:
    """A block of queries [s, e) can only see the meta tokens and keys [s - W, e); each block
    attends over just those, with the mask restricted to them."""
    length = q.shape[2]
    block = max(window, 256)
    if length <= 2 * block:
        return attention(q, k, v, visible(positions, positions, window, n_meta))
    outs = []
    for s in range(0, length, block):
        e = min(s + block, length)
        lo = max(n_meta, s - window)
        keys = torch.cat([positions[:n_meta], positions[lo:e]])
        kb = torch.cat([k[:, :, :n_meta], k[:, :, lo:e]], dim=2)
        vb = torch.cat([v[:, :, :n_meta], v[:, :, lo:e]], dim=2)
        outs.append(attention(q[:, :, s:e], kb, vb, visible(positions[s:e], keys, window, n_meta)))
    return torch.cat(outs, dim=2)


@functools.lru_cache(maxsize=32)
def _block_mask(length: int, first: int, window: int, n_meta: int, device: str) -> Any:
    """FlexAttention's block mask of the rule for positions first .. first + length - 1 (a fresh
    sequence's are contiguous), built once per shape."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return sees(q_idx + first, kv_idx + first, window, n_meta)

    return create_block_mask(mask_mod, None, None, length, length, device=device)


@functools.cache
def _flex(cuda: bool) -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # compiled on CUDA: one fused kernel; eager elsewhere (Inductor's CPU template is slower to
    # build than the tiny profile's prefill takes to run)
    fn = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention
    return typing.cast(Callable[..., Tensor], fn)


def sliding_attention_flex(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, window: int,
                           n_meta: int) -> Tensor:
    length = q.shape[2]
    first = int(positions[0])
    fresh = torch.equal(positions, torch.arange(first, first + length, device=positions.device))
    # FlexAttention has no backward on the CPU: training there takes the blocked path
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not fresh or (grad and not q.is_cuda):
        return sliding_attention_blocked(q, k, v, positions, window, n_meta)
    mask = _block_mask(length, first, window, n_meta, str(q.device))
    with contextlib.ExitStack() as stack:
        if not q.is_cuda:  # the unfused path says so once per call; it is what the CPU has
            import warnings

            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", UserWarning)
        out = _flex(q.is_cuda)(q, k, v, block_mask=mask, scale=q.shape[-1] ** -0.5,
                               enable_gqa=k.shape[1] != q.shape[1])
    assert isinstance(out, Tensor)
    return out


def sliding_attention(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, window: int,
                      n_meta: int) -> Tensor:
    """The active backend's sliding-window prefill (`sliding_prefill` chooses)."""
    if _active == "flex":
        return sliding_attention_flex(q, k, v, positions, window, n_meta)
    return sliding_attention_blocked(q, k, v, positions, window, n_meta)
