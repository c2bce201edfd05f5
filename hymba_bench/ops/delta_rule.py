"""The gated delta rule (Yang, Kautz and Hatamizadeh, 2024): a fast-weight memory that decays, then
writes the correction its read-out misses.

Per head, with q already scaled (by 1/sqrt(K) in the layer) and g_t <= 0 a log-decay, b_t in (0, 1):

    S'_t = exp(g_t) S_{t-1}                     S (K, V)
    u_t  = b_t (v_t - S'_t^T k_t)               what the memory gets wrong about k_t, scaled
    S_t  = S'_t + k_t u_t^T
    o_t  = S_t^T q_t

- `gated_delta_rule_ref`: that recurrence, one step at a time (the twin);
- `gated_delta_rule_chunked`: the chunked form. Inside a chunk of C steps, with G_i the running
  sum of g and S_0 the state entering it, unrolling gives a unit lower-triangular system for the
  corrections, (I + A) V' = b (V - exp(G) K S_0) with A_ij = b_i exp(G_i - G_j) k_i.k_j for j < i.
  Its solution is V' = U - W S_0, where [U | W] = (I + A)^-1 [b V | b exp(G) K] for every chunk
  at once (the WY form fla's kernels use; the inverse by `solve_triangular`); then
      O   = exp(G) Q S_0 + (Q K^T * exp(G_i - G_j), j <= i) V'
      S_C = exp(G_C) S_0 + (K * exp(G_C - G))^T V'.
  Only the state is carried from chunk to chunk: two (C x K) products per chunk, no step per
  token, and the read-out O is one batched product over all chunks after the loop;
- `gated_delta_rule_cpu`: the compiled CPU forward (`csrc/delta_rule.cpp`: one pass over time
  per head, the memory in L1), its gradient through the chunked form, recomputed;
- `gated_delta_rule_step`: one decode step, the state updated in place.

Shapes: q, k (B, L, H, K), v (B, L, H, V), g and beta (B, L, H); state (B, H, K, V). float32 inside.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hymba_bench.ops import cpu_kernel
from hymba_bench.ops.workspace import Workspace, no_buffer

# Intermediates per span, in floats (4 MB).
_SPAN_ELEMENTS = 1 << 20


def gated_delta_rule_ref(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                         initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence -> (o (B, L, H, V) in v's dtype, final state (B, H, K, V))."""
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    state = (initial_state.float().clone() if initial_state is not None
             else v.new_zeros(batch, heads, dk, dv, dtype=torch.float32))
    qf, kf, vf, gf, bf = (t.float() for t in (q, k, v, g, beta))
    outs = []
    for t in range(length):
        state = torch.exp(gf[:, t])[..., None, None] * state
        read = (state * kf[:, t, :, :, None]).sum(-2)  # S'^T k: (B, H, V)
        u = bf[:, t, :, None] * (vf[:, t] - read)
        state = state + kf[:, t, :, :, None] * u[:, :, None, :]
        outs.append((state * qf[:, t, :, :, None]).sum(-2))
    return torch.stack(outs, dim=1).to(v.dtype), state


def gated_delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                             initial_state: Tensor | None = None, chunk_size: int = 64,
                             span_chunks: int | None = None) -> tuple[Tensor, Tensor]:
    """The same function in chunks of `chunk_size` -> (o (B, L, H, V), final state (B, H, K, V)).

    Taken `span_chunks` chunks at a time, the state carried between spans, so that the
    intermediates stay near 4 MB (in cache, and reused memory rather than freshly mapped pages:
    see `ops.ssd.ssd_chunked`)."""
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    c = chunk_size
    pad = -length % c
    qf, kf, vf, gf, bf = (t.float() for t in (q, k, v, g, beta))
    if pad:  # g = 0 and beta = 0 past the end: no decay, no write, the final state unchanged
        qf, kf, vf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (qf, kf, vf))
        gf, bf = (F.pad(t, (0, 0, 0, pad)) for t in (gf, bf))
    total = length + pad
    per_token = batch * heads * max(c, dk + dv, dk * dv // c, 1)
    span = c * (span_chunks or max(1, _SPAN_ELEMENTS // (per_token * c)))
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state))
    ws = None if grad else Workspace(vf)
    state = (initial_state.float() if initial_state is not None
             else vf.new_zeros(batch, heads, dk, dv))
    # above the diagonal exp(G_i - G_j) is exp(-inf) = 0: a step does not reach a later one
    upper = torch.full((c, c), float("-inf"), device=k.device).triu(1)
    out = ws.take("out", (batch, total, heads, dv)) if ws else None
    outs = []
    for s0 in range(0, total, span):
        part = slice(s0, min(total, s0 + span))
        o, state = _span(qf[:, part], kf[:, part], vf[:, part], gf[:, part], bf[:, part], state,
                         upper, ws, None if out is None else out[:, part])
        outs.append(o)
    o = out if out is not None else torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    return o[:, :length].to(v.dtype), state


def _span(qf: Tensor, kf: Tensor, vf: Tensor, gf: Tensor, bf: Tensor, state: Tensor,
          upper: Tensor, ws: Workspace | None, out: Tensor | None) -> tuple[Tensor, Tensor]:
    """Whole chunks: q, k (B, nC, H, K), v (B, nC, H, V), g, beta (B, nC, H), the state entering
    (B, H, K, V) -> (o (B, nC, H, V), the state after). With a workspace (no autograd) every
    intermediate is written in place into it and o into `out`."""
    batch, length, heads, dk = kf.shape
    dv = vf.shape[-1]
    c = upper.shape[0]
    n = length // c
    bh = batch * heads
    buf = ws.take if ws else no_buffer

    def inplace(t: Tensor) -> Tensor | None:
        return t if ws else None

    def chunks(name: str, t: Tensor) -> Tensor:  # (B, L, H, ...) -> (n, B, H, C, ...), contiguous
        view = t.reshape(batch, n, c, heads, *t.shape[3:]).permute(
            1, 0, 3, 2, *range(4, t.dim() + 1))
        return ws.take(name, tuple(view.shape)).copy_(view) if ws else view.contiguous()

    qc, kc, vc = chunks("q", qf), chunks("k", kf), chunks("v", vf)
    gc, bc = chunks("g", gf), chunks("beta", bf)  # (n, B, H, C)
    G = gc.cumsum(-1)
    eG = torch.exp(G)
    square = (n, batch, heads, c, c)
    decay = torch.sub(G[..., :, None], G[..., None, :], out=buf("decay", square))
    decay = torch.add(decay, upper, out=inplace(decay))
    decay = torch.exp(decay, out=inplace(decay))  # exp(G_i - G_j), j <= i
    # (I + A) [U | W] = [b V | b exp(G) K], A_ij = b_i exp(G_i - G_j) k_i.k_j below the diagonal;
    # the corrections are then U - W S_0. solve_triangular reads only the strict lower triangle
    # (unitriangular), so A needs no mask. Both right-hand sides at once, every chunk at once.
    A = torch.matmul(kc, kc.transpose(-1, -2), out=buf("A", square))
    A = torch.mul(A, bc[..., :, None], out=inplace(A))
    A = torch.mul(A, decay, out=inplace(A))
    if ws:
        rhs = ws.take("rhs", (n, batch, heads, c, dv + dk))
        torch.mul(vc, bc[..., None], out=rhs[..., :dv])
        torch.mul(kc, (bc * eG)[..., None], out=rhs[..., dv:])
    else:
        rhs = torch.cat([bc[..., None] * vc, (bc * eG)[..., None] * kc], dim=-1)
    # the inverse (I + A)^-1 by LAPACK, then one batched product: LAPACK's batched solve runs
    # at a fraction of a product's speed, so a C-wide solve beats one as wide as [U | W]
    eye = torch.eye(c, device=kf.device, dtype=A.dtype).expand(square)
    inverse = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True,
                                            out=buf("inverse", square))
    uw = torch.matmul(inverse, rhs, out=buf("uw", tuple(rhs.shape)))
    u = uw[..., :dv].reshape(n, bh, c, dv)
    w = uw[..., dv:].reshape(n, bh, c, dk)
    # what the loop reads, laid out per chunk: K scaled to the chunk's end, transposed
    k_end = torch.mul(kc, torch.exp(G[..., -1:] - G)[..., None],
                      out=buf("k_end", tuple(kc.shape))).view(n, bh, c, dk).transpose(-1, -2)
    end = torch.exp(G[..., -1]).reshape(n, bh, 1, 1)
    # The chunks in turn, two (C x K) products per chunk: the corrections V' = U - W S, then
    # S <- exp(G_C) S + K_end^T V'. The read-out is batched over every chunk after the loop.
    state = state.reshape(bh, dk, dv)
    if ws:
        states = ws.take("states", (n, bh, dk, dv))  # the state entering each chunk
        fixed = ws.take("fixed", (n, bh, c, dv))  # each chunk's corrections V'
        states[0].copy_(state)
        for i in range(n):
            torch.baddbmm(u[i], w[i], states[i], alpha=-1.0, out=fixed[i])
            nxt = states[i + 1] if i + 1 < n else ws.take("last", (bh, dk, dv))
            torch.mul(states[i], end[i], out=nxt)
            nxt.baddbmm_(k_end[i], fixed[i])
        state = nxt.clone()
    else:
        entering, fixes = [], []
        for i in range(n):
            entering.append(state)
            fixes.append(torch.baddbmm(u[i], w[i], state, alpha=-1.0))
            state = torch.baddbmm(state * end[i], k_end[i], fixes[-1])
        states, fixed = torch.stack(entering), torch.stack(fixes)
    # O = exp(G) Q S_0 + (Q K^T * exp(G_i - G_j), j <= i) V'
    qk = torch.matmul(qc, kc.transpose(-1, -2), out=buf("qk", square))
    qk = torch.mul(qk, decay, out=inplace(qk)).view(n * bh, c, c)
    q_e = torch.mul(qc, eG[..., None], out=buf("q_e", tuple(qc.shape))).view(n * bh, c, dk)
    o = torch.bmm(q_e, states.view(n * bh, dk, dv), out=buf("o", (n * bh, c, dv)))
    o = o.baddbmm_(qk, fixed.view(n * bh, c, dv)) if ws else \
        torch.baddbmm(o, qk, fixed.view(n * bh, c, dv))
    o = o.view(n, batch, heads, c, dv)
    if out is not None:
        out.view(batch, n, c, heads, dv).copy_(o.permute(1, 0, 3, 2, 4))
        return out, state.view(batch, heads, dk, dv)
    return (o.permute(1, 0, 3, 2, 4).reshape(batch, n * c, heads, dv),
            state.view(batch, heads, dk, dv))


class _DeltaRuleCPU(torch.autograd.Function):
    """The compiled forward under autograd; the backward recomputes the chunked form from the
    inputs and differentiates that (the same function), so only the inputs are kept."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor,
                g: Tensor, beta: Tensor, state: Tensor | None, chunk_size: int
                ) -> tuple[Tensor, Tensor]:
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(q, k, v, g, beta, state)
        pad = -v.shape[-1] % cpu_kernel.LANES  # zero value columns stay zero in S and in o
        vp = F.pad(v, (0, pad)) if pad else v
        sp = F.pad(state, (0, pad)) if pad and state is not None else state
        o, last = cpu_kernel.delta_rule_fwd(q, k, vp, g, beta, sp)
        return (o[..., :v.shape[-1]], last[..., :v.shape[-1]]) if pad else (o, last)

    @staticmethod
    def backward(ctx: Any, do: Tensor, dlast: Tensor
                 ) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) if t is not None else None
                      for t, need in zip(saved, ctx.needs_input_grad, strict=False)]
            q, k, v, g, beta, state = leaves
            assert q is not None and k is not None and v is not None and g is not None \
                and beta is not None
            o, last = gated_delta_rule_chunked(q, k, v, g, beta, initial_state=state,
                                               chunk_size=ctx.chunk_size)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad((o, last), wanted, (do, dlast), allow_unused=True))
        return (*(next(grads) if t is not None and t.requires_grad else None for t in leaves),
                None)


def gated_delta_rule_cpu(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                         initial_state: Tensor | None = None, chunk_size: int = 64
                         ) -> tuple[Tensor, Tensor]:
    """The compiled CPU path, float32 inside -> (o (B, L, H, V) in v's dtype, final state)."""
    qf, kf, vf, gf, bf = (t.float() for t in (q, k, v, g, beta))
    s0 = None if initial_state is None else initial_state.float()
    o, last = _DeltaRuleCPU.apply(qf, kf, vf, gf, bf, s0, chunk_size)
    return o.to(v.dtype), last


def gated_delta_rule_step(state: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor,
                          beta: Tensor) -> Tensor:
    """One decode step: q, k (B, H, K), v (B, H, V), g and beta (B, H); state (B, H, K, V)
    updated in place -> o (B, H, V)."""
    s = torch.exp(g.float())[..., None, None] * state.float()
    read = (s * k.float()[..., None]).sum(-2)
    u = beta.float()[..., None] * (v.float() - read)
    s = s + k.float()[..., None] * u[..., None, :]
    state.copy_(s)
    return (s * q.float()[..., None]).sum(-2).to(v.dtype)
