"""Independent, written-out transcriptions of the 2024-26 mixers from their papers' equations,
used only to hold the harness's mixers to them (as `hymba_reference.py` does for Hymba).

Nothing here imports hymba_bench: each layer is computed from its weights, by mamba-ssm's and
fla's parameter names, one time step and one head at a time, with plain tensor arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _causal_depthwise_conv(u: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """u (L, C), weight (C, 1, K), bias (C,) -> (L, C): out_t = bias + sum_k w_k u_{t-K+1+k}."""
    length, channels = u.shape
    k = weight.shape[-1]
    out = torch.empty(length, channels, dtype=u.dtype)
    for t in range(length):
        acc = bias.clone()
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                acc = acc + weight[:, 0, j] * u[src]
        out[t] = acc
    return out


def _gated_group_rms_norm(y: Tensor, z: Tensor, weight: Tensor, groups: int, eps: float) -> Tensor:
    g = y * (z * torch.sigmoid(z))
    parts = []
    for part, w in zip(g.chunk(groups, dim=-1), weight.chunk(groups), strict=True):
        parts.append(part / torch.sqrt((part * part).mean(-1, keepdim=True) + eps) * w)
    return torch.cat(parts, dim=-1)


def mamba2_layer(p: dict[str, Tensor], u: Tensor, *, d_state: int, head_dim: int,
                 n_groups: int, eps: float) -> Tensor:
    """One Mamba-2 mixer (Dao & Gu 2024, Sec. 7 / mamba-ssm `Mamba2`) on one sequence u (L, D).

        [z, xBC, dt_raw] = in_proj(u)
        xBC = silu(conv1d(xBC));  x, B, C = split(xBC)
        dt = softplus(dt_raw + dt_bias);  A = -exp(A_log)             per head
        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T;  y_t = h_t C_t + D x_t   per head
        out = out_proj(RMSNorm_groups(y * silu(z)) * norm.weight)
    """
    length = u.shape[0]
    proj = u @ p["in_proj.weight"].T
    d_ssm = p["norm.weight"].shape[0]
    heads = d_ssm // head_dim
    gn = n_groups * d_state
    z, xbc, dt_raw = proj.split([d_ssm, d_ssm + 2 * gn, heads], dim=-1)
    xbc = F.silu(_causal_depthwise_conv(xbc, p["conv1d.weight"], p["conv1d.bias"]))
    x, b, c = xbc.split([d_ssm, gn, gn], dim=-1)
    dt = F.softplus(dt_raw + p["dt_bias"])
    a = -torch.exp(p["A_log"])
    y = torch.zeros(length, d_ssm, dtype=u.dtype)
    for h in range(heads):
        grp = h // (heads // n_groups)
        bh = b[:, grp * d_state:(grp + 1) * d_state]
        ch = c[:, grp * d_state:(grp + 1) * d_state]
        xh = x[:, h * head_dim:(h + 1) * head_dim]
        state = torch.zeros(head_dim, d_state, dtype=u.dtype)
        for t in range(length):
            state = math.e ** (dt[t, h] * a[h]) * state + dt[t, h] * torch.outer(xh[t], bh[t])
            y[t, h * head_dim:(h + 1) * head_dim] = state @ ch[t] + p["D"][h] * xh[t]
    normed = _gated_group_rms_norm(y, z, p["norm.weight"], n_groups, eps)
    return normed @ p["out_proj.weight"].T


def gated_deltanet_layer(p: dict[str, Tensor], u: Tensor, *, head_dim: int, v_heads_per_qk: int,
                         eps: float) -> Tensor:
    """One Gated DeltaNet layer (Yang et al. 2024, Eq. 10; Qwen3-Next's linear attention) on one
    sequence u (L, D), with the harness's projection layout [q k v | z | b | a].

        q, k, v = silu(shortconv(q k v));  q, k L2-normalised per head, q / sqrt(dk)
        beta = sigmoid(b);  alpha = exp(-exp(A_log) softplus(a + dt_bias))      per value head
        S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T        (S: dv x dk)
        o_t = S_t q_t;   out = out_proj(RMSNorm(o) * norm.weight * silu(z))     per head
    """
    length = u.shape[0]
    proj = u @ p["in_proj.weight"].T
    hv = p["A_log"].shape[0]
    hk = hv // v_heads_per_qk
    dh = head_dim
    conv_width = 2 * hk * dh + hv * dh
    qkv, z, b, a = proj.split([conv_width, hv * dh, hv, hv], dim=-1)
    qkv = F.silu(_causal_depthwise_conv(qkv, p["conv1d.weight"], torch.zeros(conv_width,
                                                                             dtype=u.dtype)))
    q, k, v = qkv.split([hk * dh, hk * dh, hv * dh], dim=-1)
    beta = torch.sigmoid(b)
    alpha = torch.exp(-torch.exp(p["A_log"]) * F.softplus(a + p["dt_bias"]))
    out = torch.zeros(length, hv * dh, dtype=u.dtype)
    for h in range(hv):
        src = h // v_heads_per_qk
        S = torch.zeros(dh, dh, dtype=u.dtype)  # (dv, dk), the paper's orientation
        for t in range(length):
            qt = q[t, src * dh:(src + 1) * dh]
            kt = k[t, src * dh:(src + 1) * dh]
            qt = qt / qt.norm() / math.sqrt(dh)
            kt = kt / kt.norm()
            vt = v[t, h * dh:(h + 1) * dh]
            S = alpha[t, h] * S @ (torch.eye(dh, dtype=u.dtype) - beta[t, h] * torch.outer(kt, kt)) \
                + beta[t, h] * torch.outer(vt, kt)
            o = S @ qt
            o = o / torch.sqrt((o * o).mean() + eps) * p["norm.weight"]
            zt = z[t, h * dh:(h + 1) * dh]
            out[t, h * dh:(h + 1) * dh] = o * (zt * torch.sigmoid(zt))
    return out @ p["out_proj.weight"].T
