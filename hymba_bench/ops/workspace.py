"""Buffers reused by every span of one chunked call, so that a no-grad prefill writes its
intermediates into memory already mapped and in cache rather than into fresh pages (see
`ops.ssd.ssd_chunked`)."""

from __future__ import annotations

import math

from torch import Tensor


class Workspace:
    """Named buffers, each sized by its first (largest) request."""

    def __init__(self, like: Tensor) -> None:
        self.like = like
        self.buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.like.new_empty(numel)
            self.buffers[name] = buf
        return buf[:numel].view(shape)


def no_buffer(name: str, shape: tuple[int, ...]) -> None:
    """`Workspace.take` where autograd is on: every op allocates its own result."""
    return None
