"""Greedy generation with the inference cache, batched, and the no-cache loop it must equal."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int,
                    eos_id: int | None = None,
                    stop: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """input_ids (B, L), equal-length prompts -> generated ids (B, <= max_new_tokens).

    Prefill once, then one cached step per token. Generation ends early once every row has
    emitted `eos_id` (after which a row keeps emitting it) or `stop(generated)` is true for it.
    """
    b, length = input_ids.shape
    cache = model.allocate_cache(b, length + max_new_tokens)
    logits = model(input_ids, cache)[:, -1]
    out = []
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        if eos_id is not None:
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        out.append(token)
        if stop is not None:
            done |= stop(torch.stack(out, dim=1)).to(done.device)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        logits = model(token[:, None], cache)[:, -1]
    return torch.stack(out, dim=1) if out else input_ids.new_zeros(b, 0)


@torch.no_grad()
def greedy_generate_ref(model: nn.Module, input_ids: Tensor, max_new_tokens: int,
                        eos_id: int | None = None,
                        stop: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The same, recomputing the full forward pass for every new token (no cache)."""
    ids = input_ids
    out = []
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        token = model(ids)[:, -1].argmax(-1)
        if eos_id is not None:
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        out.append(token)
        if stop is not None:
            done |= stop(torch.stack(out, dim=1)).to(done.device)
        ids = torch.cat([ids, token[:, None]], dim=1)
        if bool(done.all()):
            break
    return torch.stack(out, dim=1) if out else input_ids.new_zeros(ids.shape[0], 0)
