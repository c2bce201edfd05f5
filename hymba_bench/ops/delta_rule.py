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
- `gated_delta_rule_step`: one decode step, the state updated in place.

Shapes: q, k (B, L, H, K), v (B, L, H, V), g and beta (B, L, H); state (B, H, K, V). float32 inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
                             initial_state: Tensor | None = None, chunk_size: int = 64
                             ) -> tuple[Tensor, Tensor]:
    """The same function in chunks of `chunk_size` -> (o (B, L, H, V), final state (B, H, K, V))."""
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    c = chunk_size
    pad = -length % c
    qf, kf, vf, gf, bf = (t.float() for t in (q, k, v, g, beta))
    if pad:  # g = 0 and beta = 0 past the end: no decay, no write, the final state unchanged
        qf, kf, vf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (qf, kf, vf))
        gf, bf = (F.pad(t, (0, 0, 0, pad)) for t in (gf, bf))
    n = (length + pad) // c

    def chunks(t: Tensor) -> Tensor:  # (B, L, H, ...) -> (n, B, H, C, ...): a chunk's slice contiguous
        return t.view(batch, n, c, heads, *t.shape[3:]).permute(1, 0, 3, 2, *range(4, t.dim() + 1)) \
            .contiguous()

    qc, kc, vc, gc, bc = chunks(qf), chunks(kf), chunks(vf), chunks(gf), chunks(bf)
    G = gc.cumsum(-1)  # (n, B, H, C)
    upto = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    strict = upto.tril(-1)
    gap = G[..., :, None] - G[..., None, :]  # G_i - G_j
    decay_in = torch.exp(gap.masked_fill(~upto, float("-inf")))  # exp(G_i - G_j), j <= i
    A = (bc[..., :, None] * (kc @ kc.transpose(-1, -2))) * decay_in.masked_fill(~strict, 0.0)
    system = A + torch.eye(c, device=k.device)  # unit lower triangular
    # U = W_v - W_k S_0: both right-hand sides solved at once, for every chunk
    rhs = torch.cat([bc[..., None] * vc, (bc * torch.exp(G))[..., None] * kc], dim=-1)
    w = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    w_v, w_k = w[..., :dv], w[..., dv:]
    qk = (qc @ kc.transpose(-1, -2)) * decay_in  # (n, B, H, C, C)
    q_decayed = qc * torch.exp(G)[..., None]  # (n, B, H, C, K)
    k_to_end = (kc * torch.exp(G[..., -1:] - G)[..., None]).transpose(-1, -2)  # (n, B, H, K, C)
    chunk_decay = torch.exp(G[..., -1])[..., None, None]  # (n, B, H, 1, 1)

    state = (initial_state.float() if initial_state is not None
             else vf.new_zeros(batch, heads, dk, dv))
    outs = []
    for i in range(n):  # chunk to chunk: only the state is carried
        u = w_v[i] - w_k[i] @ state  # (B, H, C, V)
        outs.append(q_decayed[i] @ state + qk[i] @ u)
        state = torch.addcmul(k_to_end[i] @ u, chunk_decay[i], state)
    o = torch.stack(outs, dim=2)  # (B, H, n, C, V)
    o = o.permute(0, 2, 3, 1, 4).reshape(batch, n * c, heads, dv)[:, :length]
    return o.to(v.dtype), state


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
