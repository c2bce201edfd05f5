"""An independent, written-out transcription of the released Hymba's forward pass, for tests.

It reads a state dict in the Hugging Face key layout and a `config.json` dict directly, and spells
out each formula of NVIDIA's `modeling_hymba.py` the plain way (per-step loops, masks as boolean
tables built element by element, `rotate_half` RoPE), sharing no code with `hymba_bench`. Only
what decides the function is transcribed; padding, caching and kernels are not.

    x = [meta tokens; embed(ids)]               RoPE positions 0..M-1 for meta, M.. for tokens
    per layer: h = RMSNorm(x)
        Q | K | V | x_ssm | z = h @ in_proj^T   (no K, V slices in KV-reuse consumers)
        attn = softmax(q k^T / sqrt(d_qk) + mask) v          mask below
        ssm  = Mamba-1(x_ssm, z) with RMSNorm on dt, B, C
        x = x + out_proj((RMSNorm_1(attn) + RMSNorm_2(ssm)) / 2)
        x = x + down(silu(gate(RMSNorm(x))) * up(RMSNorm(x)))
    logits = RMSNorm(x)[M:] @ embed^T           (tied head)

The sliding-window mask is the one the weights were trained with: k <= q and (q - k <= W or k < M).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def inv_freq(hf: dict[str, Any], dim: int) -> Tensor:
    """NVIDIA's rotary inverse frequencies for `rope_type` None / 'default' / 'ntk' (factor 2)."""
    base = float(hf.get("rope_theta", 10000.0))
    if hf.get("rope_type") == "ntk":
        factor = 2
        ratio = hf["max_position_embeddings"] / hf["orig_max_position_embeddings"]
        base = base * (factor * ratio - (factor - 1)) ** (dim / (dim - 2))
    elif hf.get("rope_type") not in (None, "default"):
        raise ValueError(hf["rope_type"])
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, positions: Tensor, freqs: Tensor) -> Tensor:
    """x (B, H, n, d): x * cos + rotate_half(x) * sin, with emb = [freqs, freqs]."""
    angles = positions.float()[:, None] * freqs[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def mask_table(n: int, window: int | None, n_meta: int) -> Tensor:
    """(n, n) bool, True where query q may see key k; built one entry at a time."""
    table = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            table[q, k] = k <= q and (window is None or q - k <= window or k < n_meta)
    return table


def rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba(xs: Tensor, z: Tensor, p: dict[str, Tensor], hf: dict[str, Any]) -> Tensor:
    """Mamba-1 with Hymba's dt/B/C norms, one time step at a time. xs, z: (B, n, inner)."""
    eps = hf.get("rms_norm_eps", 1e-6)
    batch, n, inner = xs.shape
    kernel = p["conv1d.weight"][:, 0]  # (inner, K)
    width = kernel.shape[1]
    conv = torch.zeros_like(xs)
    for t in range(n):
        acc = p["conv1d.bias"].expand(batch, inner).clone()
        for j in range(width):
            src = t - (width - 1) + j
            if src >= 0:
                acc = acc + kernel[:, j] * xs[:, src]
        conv[:, t] = F.silu(acc)
    rank, n_state = p["dt_proj.0.weight"].shape[1], p["A_log.0"].shape[1]
    dt, b, c = (conv @ p["x_proj.0.weight"].T).split([rank, n_state, n_state], dim=-1)
    dt = rms(dt, p["dt_layernorm.weight"], eps)
    b = rms(b, p["B_layernorm.weight"], eps)
    c = rms(c, p["C_layernorm.weight"], eps)
    delta = F.softplus(dt @ p["dt_proj.0.weight"].T + p["dt_proj.0.bias"])  # (B, n, inner)
    a = -torch.exp(p["A_log.0"])  # (inner, N)
    state = torch.zeros(batch, inner, n_state)
    ys = []
    for t in range(n):
        decay = torch.exp(delta[:, t, :, None] * a)
        state = decay * state + (delta[:, t] * conv[:, t])[:, :, None] * b[:, t, None, :]
        ys.append((state * c[:, t, None, :]).sum(-1) + p["D.0"] * conv[:, t])
    return torch.stack(ys, dim=1) * F.silu(z)


def forward(state: dict[str, Tensor], hf: dict[str, Any], ids: Tensor) -> Tensor:
    """ids (B, L) -> logits (B, L, vocab) of the released model's no-cache forward."""
    eps = hf.get("rms_norm_eps", 1e-6)
    d, heads, kv_heads = hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"]
    inner = hf["mamba_expand"] * d
    d_qk, d_v = d // heads, inner // heads
    n_meta = hf.get("num_memory_tokens", 0)
    consumers = {c: g[0] for g in hf.get("kv_reuse_group") or [] for c in g[1:]}
    x = state["model.embed_tokens.weight"][ids]
    if n_meta:
        x = torch.cat([state["model.memory_tokens"].expand(ids.shape[0], -1, -1), x], dim=1)
    batch, n, _ = x.shape
    positions = torch.arange(n)
    freqs = inv_freq(hf, d_qk)
    window = hf.get("sliding_window")
    global_mask = mask_table(n, None, n_meta)
    local_mask = mask_table(n, window, n_meta) if window else global_mask
    kv: dict[int, tuple[Tensor, Tensor]] = {}
    for i in range(hf["num_hidden_layers"]):
        p = {k[len(f"model.layers.{i}."):]: v for k, v in state.items()
             if k.startswith(f"model.layers.{i}.")}
        m = {k[len("mamba."):]: v for k, v in p.items() if k.startswith("mamba.")}
        h = rms(x, p["input_layernorm.weight"], eps)
        proj = h @ m["in_proj.weight"].T
        widths = [heads * d_qk] + ([] if i in consumers else [kv_heads * d_qk, kv_heads * d_v])
        parts = proj.split([*widths, inner, inner], dim=-1)
        q = parts[0].view(batch, n, heads, d_qk).transpose(1, 2)
        if hf.get("rope"):
            q = apply_rope(q, positions, freqs)
        if i in consumers:
            k, v = kv[consumers[i]]
        else:
            k = parts[1].view(batch, n, kv_heads, d_qk).transpose(1, 2)
            v = parts[2].view(batch, n, kv_heads, d_v).transpose(1, 2)
            if hf.get("rope"):
                k = apply_rope(k, positions, freqs)
            kv[i] = (k, v)
        group = heads // kv_heads  # query head j reads KV head j // group
        k_full = torch.stack([k[:, j // group] for j in range(heads)], dim=1)
        v_full = torch.stack([v[:, j // group] for j in range(heads)], dim=1)
        is_global = window is None or i in (hf.get("global_attn_idx") or [])
        scores = q @ k_full.transpose(-1, -2) / math.sqrt(d_qk)
        scores = scores.masked_fill(~(global_mask if is_global else local_mask), float("-inf"))
        attn = (scores.softmax(-1) @ v_full).transpose(1, 2).reshape(batch, n, heads * d_v)
        ssm = mamba(parts[-2], parts[-1], m, hf)
        fused = (rms(attn, m["pre_avg_layernorm1.weight"], eps)
                 + rms(ssm, m["pre_avg_layernorm2.weight"], eps)) / 2
        x = x + fused @ m["out_proj.weight"].T
        h = rms(x, p["pre_moe_layernorm.weight"], eps)
        e = {k[len("moe.experts.0."):]: v for k, v in p.items() if k.startswith("moe.experts.0.")}
        x = x + (F.silu(h @ e["gate_proj.weight"].T) * (h @ e["up_proj.weight"].T)) @ e["down_proj.weight"].T
    x = rms(x, state["model.final_layernorm.weight"], eps)[:, n_meta:]
    head = state["model.embed_tokens.weight"] if hf.get("tie_word_embeddings") else state["lm_head.weight"]
    return x @ head.T
