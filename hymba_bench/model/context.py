"""What every mixer receives besides its input: one signature for attention, Mamba, hybrid, Hyena."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:  # the cache allocates what the mixers declare, so it imports them, not back
    from hymba_bench.model.cache import InferenceCache, LayerCache

# layer index -> (K, V, key positions): what a K/V producer attended over, for its consumers
SharedKV = dict[int, tuple[Tensor, Tensor, Tensor]]


@dataclass
class Context:
    positions: Tensor  # (L,) absolute positions of the rows of x, meta tokens counted
    cache: InferenceCache | None = None
    decode: bool = False  # one token per sequence into a prefilled cache
    # the model's input rows (token embeddings, meta tokens first): Zamba2's block reads them
    embeddings: Tensor | None = None
    shared: SharedKV = field(default_factory=dict)
    # what every layer of one forward pass shares, built by the first that needs it (rotary tables)
    memo: dict[tuple[object, ...], Any] = field(default_factory=dict)

    def state(self, index: int) -> LayerCache | None:
        """Layer `index`'s cache entry, or None without a cache."""
        return self.cache.layers[index] if self.cache is not None else None
