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
  corrections, (I + A) U = b (V - exp(G) K S_0) with A_ij = b_i exp(G_i - G_j) k_i.k_j for j < i,
  solved for every chunk at once (`solve_triangular`); then
      O   = exp(G) Q S_0 + (Q K^T * exp(G_i - G_j), j <= i) U
      S_C = exp(G_C) S_0 + (K * exp(G_C - G))^T U.
  Only the state is carried from chunk to chunk, as fla's chunked kernels carry it: one matmul
  step per chunk, no step per token;
- `gated_delta_rule_cpu`: the compiled CPU forward (`csrc/delta_rule.cpp`: one pass over time
  per head, the memory in L1), its gradient through the chunked form, recomputed;
- `gated_delta_rule_step`: one decode step, the state updated in place.

Shapes: q, k (B, L, H, K), v (B, L, H, V), g and beta (B, L, H); state (B, H, K, V). float32 inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hymba_bench.ops import cpu_kernel

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
    state = (initial_state.float() if initial_state is not None
             else vf.new_zeros(batch, heads, dk, dv))
    upto = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    outs = []
    for s0 in range(0, total, span):
        part = slice(s0, min(total, s0 + span))
        o, state = _span(qf[:, part], kf[:, part], vf[:, part], gf[:, part], bf[:, part], state,
                         upto)
        outs.append(o)
    o = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    return o[:, :length].to(v.dtype), state


def _span(qf: Tensor, kf: Tensor, vf: Tensor, gf: Tensor, bf: Tensor, state: Tensor,
          upto: Tensor) -> tuple[Tensor, Tensor]:
    """Whole chunks: q, k (B, nC, H, K), v (B, nC, H, V), g, beta (B, nC, H), the state entering
    (B, H, K, V) -> (o (B, nC, H, V), the state after)."""
    batch, length, heads, dk = kf.shape
    dv = vf.shape[-1]
    c = upto.shape[0]
    n = length // c

    def chunks(t: Tensor) -> Tensor:  # (B, L, H, ...) -> (n, B, H, C, ...): a chunk's slice contiguous
        return t.reshape(batch, n, c, heads, *t.shape[3:]) \
            .permute(1, 0, 3, 2, *range(4, t.dim() + 1)).contiguous()

    qc, kc, vc, gc, bc = chunks(qf), chunks(kf), chunks(vf), chunks(gf), chunks(bf)
    G = gc.cumsum(-1)  # (n, B, H, C)
    eG = torch.exp(G)
    gap = G[..., :, None] - G[..., None, :]  # G_i - G_j
    decay_in = torch.exp(gap.masked_fill(~upto, float("-inf")))  # exp(G_i - G_j), j <= i
    A = (bc[..., :, None] * (kc @ kc.transpose(-1, -2))) * decay_in.tril(-1)
    system = A + torch.eye(c, device=kf.device)  # unit lower triangular
    # U = W_v - W_k S_0: both right-hand sides solved at once, for every chunk
    rhs = torch.cat([bc[..., None] * vc, (bc * eG)[..., None] * kc], dim=-1)
    w = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    qk = (qc @ kc.transpose(-1, -2)) * decay_in  # (n, B, H, C, C)
    k_end = (kc * torch.exp(G[..., -1:] - G)[..., None]).transpose(-1, -2)  # (n, B, H, K, C)
    # With U = W_v - W_k S_0 substituted, everything but S_0 is known before the chunks' loop:
    #   O = O_in + Q_eff S_0,   O_in = QK W_v,   Q_eff = exp(G) Q - QK W_k
    #   S_C = T S_0 + K_end W_v,   T = exp(G_C) I - K_end W_k
    # so the loop is one (K x K) @ (K x V) product per chunk and the read-out one batched product.
    qkw, kw = qk @ w, k_end @ w  # [O_in | QK W_k], [K_end W_v | K_end W_k]
    o_in, q_eff = qkw[..., :dv], eG[..., None] * qc - qkw[..., dv:]
    write = kw[..., :dv].reshape(n, batch * heads, dk, dv)
    eye = torch.eye(dk, device=kf.device)
    trans = (torch.exp(G[..., -1])[..., None, None] * eye - kw[..., dv:]).reshape(
        n, batch * heads, dk, dk)
    state = state.reshape(batch * heads, dk, dv)
    entering = []
    for write_i, trans_i in zip(write.unbind(0), trans.unbind(0), strict=True):  # only the state is carried
        entering.append(state)
        state = torch.baddbmm(write_i, trans_i, state)
    states = torch.stack(entering).view(n, batch, heads, dk, dv)
    o = o_in + q_eff @ states  # (n, B, H, C, V)
    return (o.permute(1, 0, 3, 2, 4).reshape(batch, n * c, heads, dv),
            state.view(batch, heads, dk, dv))


class _DeltaRuleCPU(torch.autograd.Function):
    """The compiled forward under autograd; the backward recomputes the chunked form from the
    inputs and differentiates that (the same function), so only the inputs are kept."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: Tensor, k: Tensor, v: Tensor,
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
    def backward(ctx: torch.autograd.function.FunctionCtx, do: Tensor, dlast: Tensor
                 ) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) if t is not None else None
                      for t, need in zip(saved, ctx.needs_input_grad, strict=False)]
            o, last = gated_delta_rule_chunked(*leaves[:5], initial_state=leaves[5],
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
