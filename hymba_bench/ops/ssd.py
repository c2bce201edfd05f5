"""Mamba-2's state-space duality (SSD): a scalar decay per head, so a chunk is a few matmuls.

Per head h (Dao and Gu, 2024), with dt already through its bias and softplus:

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T        S (P, N), x (P,), B, C (N,)
    y_t = S_t C_t + D_h x_t

B and C are shared by the heads of a group (`n_groups`; head h reads group h // (H / G)).

- `ssd_ref`: that recurrence, one step at a time (the twin every other form is held to);
- `ssd_chunked`: the chunked form for prefill and training, with no step per token: inside a
  chunk of Q steps the output is a masked (Q x Q) product, the quadratic "attention" form, and
  the chunk's contribution to the state one contraction, both batched over every chunk and head;
  the states entering the chunks follow the same recurrence one level up, one (P, N) update per
  chunk. (ssd_minimal builds that level as a (chunks x chunks) decay matrix instead: O(c^2 P N)
  work, 2 GFLOP at L 8192, Q 64, against the loop's c P N, which is what a CPU wants.)
- `ssd_step`: one decode step, updating the state in place.

Shapes follow mamba-ssm's `mamba_chunk_scan_combined`: x (B, L, H, P), dt (B, L, H), A (H,),
B and C (B, L, G, N), D (H,); states (B, H, P, N). Everything is computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool) -> Tensor:
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    return F.softplus(dt) if dt_softplus else dt


def ssd_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
            dt_bias: Tensor | None = None, dt_softplus: bool = False,
            initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, step by step -> (y (B, L, H, P) in x's dtype, final state (B, H, P, N))."""
    batch, length, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    per_group = heads // groups
    dt = _dt(dt, dt_bias, dt_softplus)
    Bh = B.float().repeat_interleave(per_group, dim=2)  # (B, L, H, N)
    Ch = C.float().repeat_interleave(per_group, dim=2)
    state = (initial_state.float().clone() if initial_state is not None
             else x.new_zeros(batch, heads, p, n, dtype=torch.float32))
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A.float())  # (B, H)
        write = (dt[:, t, :, None] * x[:, t].float())[..., None] * Bh[:, t, :, None, :]
        state = decay[..., None, None] * state + write  # (B, H, P, N)
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))  # (B, H, P)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y.to(x.dtype), state


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                dt_bias: Tensor | None = None, dt_softplus: bool = False,
                initial_state: Tensor | None = None, chunk_size: int = 64
                ) -> tuple[Tensor, Tensor]:
    """The same function in chunks of `chunk_size` -> (y (B, L, H, P), final state (B, H, P, N))."""
    batch, length, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    r = heads // groups  # heads per group: head h = (g, r), as mamba-ssm lays them out
    q = chunk_size
    pad = -length % q
    dt = _dt(dt, dt_bias, dt_softplus)
    xf, Bf, Cf = x.float(), B.float(), C.float()
    if pad:  # dt = 0 past the end: no decay and no write, so the final state is unchanged
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bf, Cf))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (length + pad) // q
    # Time-major as the input comes, a group's heads side by side: (b, c, Q, g, r P). B and C are
    # shared by a group's heads, so the state and output products are one wide matmul per chunk
    # and group, (r P x Q) @ (Q x N) and (Q x N) @ (N x r P), not r narrow ones.
    acs = (dt * A.float()).view(batch, c, q, heads).cumsum(2)  # log-decay so far, (b, c, Q, H)
    xdt = (xf * dt[..., None]).view(batch, c, q, groups, r, p)  # what each step writes, before B
    Bs = Bf.view(batch, c, q, groups, n).transpose(2, 3)  # (b, c, g, Q, N)
    Cs = Cf.view(batch, c, q, groups, n).transpose(2, 3)

    # inside a chunk, per head: y_i = sum_{j <= i} (C_i . B_j) exp(acs_i - acs_j) dt_j x_j
    a = acs.permute(0, 1, 3, 2)  # (b, c, H, Q)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    gap = (a[..., :, None] - a[..., None, :]).masked_fill(~causal, float("-inf"))
    cb = (Cs @ Bs.transpose(-1, -2))  # (b, c, g, Q, Q)
    scores = torch.exp(gap).view(batch, c, groups, r, q, q) * cb[:, :, :, None]
    y = scores @ xdt.permute(0, 1, 3, 4, 2, 5)  # (b, c, g, r, Q, P)
    y = y.permute(0, 1, 4, 2, 3, 5)  # (b, c, Q, g, r, P), a view

    # each chunk's own contribution to the state at its end, (r P x Q) @ (Q x N) per group
    to_end = torch.exp(acs[:, :, -1:] - acs).view(batch, c, q, groups, r, 1)
    written = (xdt * to_end).view(batch, c, q, groups, r * p).permute(0, 1, 3, 4, 2)
    own = (written @ Bs).view(batch, c, groups, r, p, n)  # (b, c, g, r, P, N)

    # the states entering each chunk: one step per chunk (the sequence's recurrence one level up,
    # c = L / Q steps of a (P, N) update), never a step per token
    decay = torch.exp(acs[:, :, -1]).view(batch, c, groups, r, 1, 1)
    state = (initial_state.float().view(batch, groups, r, p, n) if initial_state is not None
             else own.new_zeros(batch, groups, r, p, n))
    entering = []
    for k in range(c):
        entering.append(state)
        state = torch.addcmul(own[:, k], decay[:, k], state)
    states = torch.stack(entering, dim=1).view(batch, c, groups, r * p, n)

    # what the entering state gives each step of its chunk: exp(acs_i) S C_i, (Q x N) @ (N x r P)
    y_in = (Cs @ states.transpose(-1, -2)).view(batch, c, groups, q, r, p).transpose(2, 3)
    y = torch.addcmul(y, y_in, torch.exp(acs).view(batch, c, q, groups, r, 1))
    y = y.reshape(batch, c * q, heads, p)[:, :length]
    if D is not None:
        y = torch.addcmul(y, D.float()[:, None], x.float())
    return y.to(x.dtype), state.reshape(batch, heads, p, n)


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None, dt_bias: Tensor | None = None,
             dt_softplus: bool = False) -> Tensor:
    """One decode step: x (B, H, P), dt (B, H), B and C (B, G, N); state (B, H, P, N) updated in
    place -> y (B, H, P)."""
    heads, groups = x.shape[1], B.shape[1]
    dt = _dt(dt, dt_bias, dt_softplus)  # (B, H)
    Bh = B.float().repeat_interleave(heads // groups, dim=1)  # (B, H, N)
    Ch = C.float().repeat_interleave(heads // groups, dim=1)
    decay = torch.exp(dt * A.float())[..., None, None]
    new = decay * state.float() + (dt[..., None] * x.float())[..., None] * Bh[:, :, None, :]
    state.copy_(new)
    y = (new * Ch[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y.to(x.dtype)
