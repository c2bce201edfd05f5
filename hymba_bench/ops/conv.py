"""Depthwise causal conv1d (causal-conv1d's `causal_conv1d_fn` / `causal_conv1d_update` semantics).

The decode state keeps the last `d_conv - 1` inputs, the minimum the next output needs; the
cache-size formula counts exactly that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hymba_bench.ops import cpu_kernel


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = None) -> Tensor:
    """x: (B, D, L), weight: (D, K) -> (B, D, L); output t sees inputs t-K+1..t."""
    k = weight.shape[1]
    out = F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d_cpu(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                      activation: str | None = None) -> Tensor:
    """The compiled CPU kernel (`csrc/causal_conv.cpp`), in float32; `causal_conv1d` where the
    kernel does not apply (another activation)."""
    if activation not in (None, "silu", "swish"):
        return causal_conv1d(x, weight, bias, activation)
    dtype, d = x.dtype, x.shape[1]
    x, weight = x.float(), weight.float().contiguous()  # x: read by its strides, not copied
    bias = None if bias is None else bias.float().contiguous()
    pad = -d % cpu_kernel.LANES  # the kernel works on whole blocks of channels
    if pad:
        x, weight = F.pad(x, (0, 0, 0, pad)), F.pad(weight, (0, 0, 0, pad))
        bias = None if bias is None else F.pad(bias, (0, pad))
    out = cpu_kernel.CausalConv1dCPU.apply(x, weight, bias, activation is not None)
    return out[:, :d].to(dtype)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                      activation: str | None = None) -> Tensor:
    k = weight.shape[1]
    padded = F.pad(x, (k - 1, 0))
    length = x.shape[-1]
    out = padded[:, :, :length] * weight[None, :, 0, None]
    for j in range(1, k):
        out = out + padded[:, :, j:j + length] * weight[None, :, j, None]
    if bias is not None:
        out = out + bias[None, :, None]
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    """One step. x: (B, D); conv_state: (B, D, K-1) holding the previous inputs, updated in place."""
    window = torch.cat([conv_state, x[..., None].to(conv_state.dtype)], dim=-1)  # (B, D, K)
    out = (window * weight[None]).sum(-1)
    if bias is not None:
        out = out + bias
    conv_state.copy_(window[:, :, 1:])
    return F.silu(out) if activation in ("silu", "swish") else out


def conv_state_from_prefix(x: Tensor, k: int) -> Tensor:
    """The decode state after a prefill over x (B, D, L): its last k-1 inputs, zero-padded on the left."""
    return F.pad(x, (k - 1, 0))[:, :, -(k - 1):] if k > 1 else x[:, :, :0]
