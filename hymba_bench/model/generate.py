"""Greedy generation with the inference cache, batched, and the no-cache loop it must equal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hymba_bench.model.lm import HybridLM


def _greedy(first: Tensor, advance: Callable[[Tensor], Tensor], max_new_tokens: int,
            eos_id: int | None, stop: Callable[[Tensor], Tensor] | None) -> Tensor:
    """The selection loop both paths share; `advance(token)` returns the next logits (B, V)."""
    logits, out = first, []
    done = torch.zeros(first.shape[0], dtype=torch.bool, device=first.device)
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        if eos_id is not None:  # finished rows keep emitting EOS
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        out.append(token)
        if stop is not None:
            done |= stop(torch.stack(out, dim=1)).to(done.device)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        logits = advance(token)
    return torch.stack(out, dim=1) if out else first.new_zeros(first.shape[0], 0, dtype=torch.long)


@torch.no_grad()
def greedy_generate(model: HybridLM, input_ids: Tensor, max_new_tokens: int,
                    eos_id: int | None = None,
                    stop: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """input_ids (B, L), equal-length prompts -> generated ids (B, <= max_new_tokens).

    Prefill once, then one cached step per token. Generation ends early once every row has
    emitted `eos_id` (after which a row keeps emitting it) or `stop(generated)` is true for it.
    """
    b, length = input_ids.shape
    cache = model.allocate_cache(b, length + max_new_tokens)
    first = model(input_ids, cache)[:, -1]
    return _greedy(first, lambda token: model(token[:, None], cache)[:, -1], max_new_tokens,
                   eos_id, stop)


@torch.no_grad()
def greedy_generate_ref(model: HybridLM, input_ids: Tensor, max_new_tokens: int,
                        eos_id: int | None = None,
                        stop: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The same, recomputing the full forward pass for every new token (no cache)."""
    ids = [input_ids]

    def advance(token: Tensor) -> Tensor:
        ids.append(token[:, None])
        return model(torch.cat(ids, dim=1))[:, -1]

    return _greedy(model(input_ids)[:, -1], advance, max_new_tokens, eos_id, stop)
