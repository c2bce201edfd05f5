"""The attention mask: which keys a query sees. The one place this rule lives.

Positions are absolute and count meta tokens: the M meta tokens sit at 0..M-1, real tokens from M.
A query at q sees a key at k when k <= q and, in a sliding-window layer, q - k < W or k < M
(every token always sees every meta token). A key position < 0 marks an empty cache slot.
"""

from __future__ import annotations

from torch import Tensor


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None, n_meta: int) -> Tensor:
    """(Lq,), (Lk,) int positions -> (Lq, Lk) bool, True where the query may attend to the key."""
    q = q_pos[:, None]
    k = k_pos[None, :]
    mask = (k <= q) & (k >= 0)
    if window is not None:
        mask &= ((q - k) < window) | (k < n_meta)
    return mask
