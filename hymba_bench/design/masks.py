"""The attention mask: which keys a query sees. The one place this rule lives.

Positions are absolute and count meta tokens: the M meta tokens sit at 0..M-1, real tokens from M.
A query at q sees a key at k when k <= q and, in a sliding-window layer of window W,
q - k <= W or k < M: the query itself, the W tokens before it, and every meta token.
A key position < 0 marks an empty cache slot.

Why W + 1 keys and not W: this is the mask the released Hymba weights were trained with. NVIDIA's
`modeling_hymba.py` builds its training / no-cache mask with transformers' sliding-window causal
mask, which keeps q - k <= W (it is also flash-attn's `window_size=(W, 0)`). The paper's prose
("the last W tokens") and the released cached decode (which keeps M + W keys) say W, so the
released code disagrees with itself by one key; we follow the mask the weights saw, in training,
prefill and decode alike. The consequences, all derived from `window_keys`:
- the decode cache keeps a ring of W + 1 slots per sliding layer (`cache.kv_slots`), and the exact
  cache bytes count them;
- the paper-convention MB (`cache.cache_mb_paper`) counts W tokens per sliding layer, as the paper
  does: 78.6 MB for the released 1.5B.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rule needs no torch import, so the registry can use it without one
    from torch import Tensor


def window_keys(window: int) -> int:
    """Real-token keys a sliding-window query sees once the window is full: itself and W before."""
    return window + 1


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None, n_meta: int) -> Tensor:
    """(Lq,), (Lk,) int positions -> (Lq, Lk) bool, True where the query may attend to the key."""
    return sees(q_pos[:, None], k_pos[None, :], window, n_meta)


def sees(q: Tensor, k: Tensor, window: int | None, n_meta: int) -> Tensor:
    """The rule itself, on query and key positions of any broadcastable shapes (a FlexAttention
    `mask_mod` calls it with one query and one key)."""
    mask = (k <= q) & (k >= 0)
    if window is not None:
        mask = mask & (((q - k) <= window) | (k < n_meta))
    return mask
