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

from hymba_bench.ops.workspace import Workspace, no_buffer

# Intermediates per span, in floats (4 MB): see ssd_chunked.
_SPAN_ELEMENTS = 1 << 20


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


def _span_chunks(batch: int, heads: int, p: int, n: int, q: int) -> int:
    """Chunks per span: the span's largest per-token buffer (the (Q, Q) scores, x, or the states,
    H P N / Q per token) near `_SPAN_ELEMENTS`."""
    per_token = batch * heads * max(q, p, p * n // q, 1)
    return max(1, _SPAN_ELEMENTS // (per_token * q))


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                dt_bias: Tensor | None = None, dt_softplus: bool = False,
                initial_state: Tensor | None = None, chunk_size: int = 64,
                span_chunks: int | None = None) -> tuple[Tensor, Tensor]:
    """The same function in chunks of `chunk_size` -> (y (B, L, H, P), final state (B, H, P, N)).

    The sequence is taken a span of `span_chunks` chunks at a time (about 4 MB of intermediates
    each, so they stay in cache and freed memory is reused: at L 8192 whole-sequence
    intermediates are 32 MB apiece, allocated through mmap and zeroed by the kernel on first
    touch, which cost as much as the arithmetic). Without autograd the intermediates are written
    into one workspace reused by every span, and the output in place."""
    batch, length, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    r = heads // groups  # heads per group: head h = (g, r), as mamba-ssm lays them out
    q = chunk_size
    pad = -length % q
    dt = _dt(dt, dt_bias, dt_softplus)
    xf, Bf, Cf, Af = x.float(), B.float(), C.float(), A.float()
    if pad:  # dt = 0 past the end: no decay and no write, so the final state is unchanged
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bf, Cf))
        dt = F.pad(dt, (0, 0, 0, pad))
    total = length + pad
    span = q * (span_chunks or _span_chunks(batch, heads, p, n, q))
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state))
    ws = None if grad else Workspace(xf)
    # above the diagonal the decay matrix is exp(-inf) = 0: a later step does not reach back
    upper = torch.full((q, q), float("-inf"), device=x.device).triu(1)
    state = (initial_state.float() if initial_state is not None
             else xf.new_zeros(batch, heads, p, n))
    out = ws.take("out", (batch, total, heads, p)) if ws else None
    pieces: list[Tensor] = []
    for s0 in range(0, total, span):
        c = (min(total, s0 + span) - s0) // q
        y, state = _ssd_span(xf[:, s0:s0 + c * q], dt[:, s0:s0 + c * q], Af,
                             Bf[:, s0:s0 + c * q], Cf[:, s0:s0 + c * q], state, upper, r, ws,
                             None if out is None else out[:, s0:s0 + c * q])
        pieces.append(y)
    y = (out if out is not None else torch.cat(pieces, 1))[:, :length]
    if D is not None:
        y = torch.addcmul(y, D.float()[:, None], xf[:, :length], out=y if ws else None)
    return y.to(x.dtype), state


def _ssd_span(xs: Tensor, dts: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, state: Tensor,
              upper: Tensor, r: int, ws: Workspace | None, out: Tensor | None
              ) -> tuple[Tensor, Tensor]:
    """One span of c whole chunks: xs (b, cQ, H, P), dts (b, cQ, H), Bs and Cs (b, cQ, g, N),
    the state entering it (b, H, P, N) -> (y (b, cQ, H, P) without the D skip, the state after)."""
    batch, _, heads, p = xs.shape
    groups, n = Bs.shape[2], Bs.shape[3]
    q = upper.shape[0]
    c = xs.shape[1] // q
    o = ws.take if ws else no_buffer
    xs = xs.reshape(batch, c, q, heads, p)
    dts = dts.reshape(batch, c, q, heads)
    Bc = Bs.reshape(batch, c, q, groups, n).transpose(2, 3)  # (b, c, g, Q, N)
    Cc = Cs.reshape(batch, c, q, groups, n).transpose(2, 3)
    acs = (dts * A).cumsum(2)  # log-decay since the chunk's start, (b, c, Q, H)
    a = acs.transpose(2, 3)  # (b, c, H, Q)

    # inside a chunk, per head: y_i = sum_{j <= i} (C_i . B_j) exp(a_i - a_j) dt_j x_j
    scores = torch.sub(a[..., :, None], a[..., None, :], out=o("scores", (batch, c, heads, q, q)))
    scores = torch.add(scores, upper, out=scores if ws else None)
    scores = torch.exp(scores, out=scores if ws else None).view(batch, c, groups, r, q, q)
    cb = (Cc @ Bc.transpose(-1, -2))[:, :, :, None]  # (b, c, g, 1, Q, Q)
    scores = torch.mul(scores, cb, out=scores if ws else None)
    # dt x, head-major for the per-head product (the multiply writes the transposition)
    xh = torch.mul(xs.transpose(2, 3), dts.transpose(2, 3)[..., None],
                   out=o("xh", (batch, c, heads, q, p))).contiguous()
    y = torch.bmm(scores.reshape(-1, q, q), xh.view(-1, q, p),
                  out=o("y", (batch * c * heads, q, p))).view(batch, c, heads, q, p)

    # each chunk's own contribution to the state at its end: per group, a group's heads side by
    # side, (r P x Q) @ (Q x N), since B is shared by them
    w = torch.mul(xs, (dts * torch.exp(acs[:, :, -1:] - acs))[..., None],
                  out=o("w", (batch, c, q, heads, p)))
    if groups == 1:
        own = torch.bmm(w.reshape(batch * c, q, heads * p).transpose(1, 2),
                        Bc.reshape(batch * c, q, n), out=o("own", (batch * c, heads * p, n)))
    else:
        own = w.reshape(batch, c, q, groups, r * p).permute(0, 1, 3, 4, 2) @ Bc
    own = own.view(batch, c, heads, p, n)

    # the states entering each chunk: the recurrence one level up, one (H, P, N) update per chunk
    decay = torch.exp(acs[:, :, -1]).view(batch, c, heads, 1, 1)
    owns, decays = own.unbind(1), decay.unbind(1)
    if ws:
        states = ws.take("states", (batch, c, heads, p, n))
        slots = states.unbind(1)
        slots[0].copy_(state)
        for k in range(1, c):
            torch.addcmul(owns[k - 1], decays[k - 1], slots[k - 1], out=slots[k])
        state = torch.addcmul(owns[-1], decays[-1], slots[-1])
    else:
        entering = []
        for own_k, decay_k in zip(owns, decays, strict=True):
            entering.append(state)
            state = torch.addcmul(own_k, decay_k, state)
        states = torch.stack(entering, 1)

    # what the entering state gives each step of its chunk, exp(a_i) S C_i: (Q x N) @ (N x r P)
    if groups == 1:
        y_in = torch.bmm(Cc.reshape(batch * c, q, n),
                         states.view(batch * c, heads * p, n).transpose(1, 2),
                         out=o("y_in", (batch * c, q, heads * p)))
    else:
        y_in = (Cc @ states.view(batch, c, groups, r * p, n).transpose(-1, -2)).view(
            batch, c, groups, q, r, p).transpose(2, 3)
    y_in = y_in.reshape(batch, c, q, heads, p)
    y = torch.addcmul(y.transpose(2, 3), y_in, torch.exp(acs)[..., None],
                      out=None if out is None else out.view(batch, c, q, heads, p))
    return y.reshape(batch, c * q, heads, p), state


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
