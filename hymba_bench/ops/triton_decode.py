"""Fused decode-step kernels in Triton, each beside its `*_ref` twin.

A hybrid layer's decode step is some hundred small kernels, mostly elementwise work on one token
per row (norms upcast to fp32, gates, the SSM state update), each paying a launch. These fuse the
runs that need no matmul between them:
- `fused_norms`: Hymba's fusion of the two branches, (RMSNorm_a(a) + RMSNorm_s(s)) / 2, in one
  pass per row instead of two norms, an add and a scale;
- `conv_update`: the depthwise causal conv's decode step, bias and SiLU, shifting its state;
- `state_update`: the selective SSM's step (dt bias and softplus, the state's decay and input,
  the read-out, the D skip and the z gate) in one kernel per block of channels.

Triton is optional (`pip install triton`): the module imports without it, and a kernel raises
one line when called without it. On the CPU the kernels run under Triton's interpreter
(`TRITON_INTERPRET=1`, set before the process imports triton; how CI holds them to their
twins). The model uses them where `ops.decode_kernels("triton")` says so.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from hymba_bench.errors import HymbaBenchError, expect_one_of

DECODE_KERNELS = ("torch", "triton")
# the kernels decode steps use (`decode_kernels` sets it): a plain module global, which a
# compiled step reads as a constant and guards on (a ContextVar would break its graph)
_active = "torch"


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(device_type: str | None = None) -> str | None:
    """Why the Triton kernels cannot run here (on `device_type`, cpu or cuda, when given), or
    None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    if interpreted():
        return None
    if device_type == "cpu":
        return "on the CPU the Triton kernels run only under its interpreter (TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():
        return "Triton kernels need a CUDA device, or TRITON_INTERPRET=1 to run on the CPU"
    return None


@contextlib.contextmanager
def decode_kernels(kind: str) -> Iterator[None]:
    """Within the block, decode steps use `kind`'s fused kernels where there are some."""
    expect_one_of(kind, DECODE_KERNELS, "decode_kernels")
    if kind == "triton" and (why := unavailable_reason()) is not None:
        raise HymbaBenchError(why, param="decode_kernels")
    global _active
    previous, _active = _active, kind
    try:
        yield
    finally:
        _active = previous


def use_triton(t: Tensor) -> bool:
    """Whether a decode op on `t` takes its Triton kernel."""
    return _active == "triton" and (t.is_cuda or interpreted())


# ----------------------------------------------------------------------------- references


def fused_norms_ref(a: Tensor, s: Tensor, wa: Tensor, ws: Tensor, eps: float) -> Tensor:
    """(RMSNorm(a) * wa + RMSNorm(s) * ws) / 2 over the last dimension, in float32 (the norms'
    own twin, `norm.rms_norm_ref`, on float32 inputs)."""
    from hymba_bench.ops.norm import rms_norm_ref

    return ((rms_norm_ref(a.float(), wa, eps) + rms_norm_ref(s.float(), ws, eps)) / 2).to(a.dtype)


def conv_update_ref(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None,
                    silu: bool) -> Tensor:
    """x: (B, D), conv_state: (B, D, K-1) updated in place, weight (D, K) -> (B, D): the torch
    step the kernel stands in for (`conv.causal_conv1d_update`)."""
    from hymba_bench.ops.conv import causal_conv1d_update

    return causal_conv1d_update(x, conv_state, weight, bias, "silu" if silu else None)


def state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None,
                     dt_softplus: bool) -> Tensor:
    """The selective SSM's step: state (B, D, N) updated in place; x, dt, z (B, D); A (D, N);
    B, C (B, N) -> y (B, D)."""
    from hymba_bench.ops.scan import selective_state_update_ref

    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


# ----------------------------------------------------------------------------- kernels


@functools.cache
def _kernels() -> Any:
    try:
        import triton
        import triton.language as tl
    except ImportError:
        raise HymbaBenchError("triton is not installed (pip install triton)",
                              param="decode_kernels") from None

    @triton.jit
    def fused_norms_kernel(a_ptr, s_ptr, wa_ptr, ws_ptr, out_ptr, width, stride_a, stride_s,
                           stride_o, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        keep = cols < width
        a = tl.load(a_ptr + row * stride_a + cols, mask=keep, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + row * stride_s + cols, mask=keep, other=0.0).to(tl.float32)
        wa = tl.load(wa_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        ws = tl.load(ws_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        ra = 1.0 / tl.sqrt(tl.sum(a * a, axis=0) / width + eps)
        rs = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / width + eps)
        out = (a * ra * wa + s * rs * ws) * 0.5
        tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def conv_update_kernel(x_ptr, state_ptr, w_ptr, b_ptr, out_ptr, channels,
                           stride_xb, stride_sb, stride_sd, stride_sk, stride_wd, stride_ob,
                           TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                           BLOCK: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = d < channels
        x = tl.load(x_ptr + b * stride_xb + d, mask=keep, other=0.0).to(tl.float32)
        acc = x * tl.load(w_ptr + d * stride_wd + (TAPS - 1), mask=keep, other=0.0).to(tl.float32)
        row = state_ptr + b * stride_sb + d * stride_sd
        for j in tl.static_range(TAPS - 1):
            held = tl.load(row + j * stride_sk, mask=keep, other=0.0).to(tl.float32)
            acc += held * tl.load(w_ptr + d * stride_wd + j, mask=keep, other=0.0).to(tl.float32)
            # shift left: slot j takes slot j + 1's input, the last slot this step's
            if j + 1 < TAPS - 1:
                nxt = tl.load(row + (j + 1) * stride_sk, mask=keep, other=0.0)
            else:
                nxt = x
            tl.store(row + j * stride_sk, nxt.to(state_ptr.dtype.element_ty), mask=keep)
        if HAS_BIAS:
            acc += tl.load(b_ptr + d, mask=keep, other=0.0).to(tl.float32)
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        tl.store(out_ptr + b * stride_ob + d, acc.to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
                            bias_ptr, out_ptr, channels, n_state,
                            stride_sb, stride_sd, stride_sn, stride_xb, stride_dtb, stride_ad,
                            stride_an, stride_bb, stride_cb, stride_zb, stride_ob,
                            HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                            SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        keep_d = d < channels
        keep = keep_d[:, None] & (n[None, :] < n_state)
        x = tl.load(x_ptr + b * stride_xb + d, mask=keep_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + b * stride_dtb + d, mask=keep_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += tl.load(bias_ptr + d, mask=keep_d, other=0.0).to(tl.float32)
        if SOFTPLUS:  # torch's softplus: the identity past 20
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        A = tl.load(A_ptr + d[:, None] * stride_ad + n[None, :] * stride_an, mask=keep,
                    other=0.0).to(tl.float32)
        Bv = tl.load(B_ptr + b * stride_bb + n, mask=n < n_state, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + b * stride_cb + n, mask=n < n_state, other=0.0).to(tl.float32)
        at = state_ptr + b * stride_sb + d[:, None] * stride_sd + n[None, :] * stride_sn
        st = tl.load(at, mask=keep, other=0.0).to(tl.float32)
        st = st * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
        tl.store(at, st.to(state_ptr.dtype.element_ty), mask=keep)
        y = tl.sum(st * Cv[None, :], axis=1)
        if HAS_D:
            y += x * tl.load(D_ptr + d, mask=keep_d, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + b * stride_zb + d, mask=keep_d, other=0.0).to(tl.float32)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(out_ptr + b * stride_ob + d, y.to(out_ptr.dtype.element_ty), mask=keep_d)

    return triton, fused_norms_kernel, conv_update_kernel, state_update_kernel


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def fused_norms(a: Tensor, s: Tensor, wa: Tensor, ws: Tensor, eps: float) -> Tensor:
    """`fused_norms_ref` in one Triton kernel: a row per program."""
    _, kernel, _, _ = _kernels()
    shape, width = a.shape, a.shape[-1]
    a2, s2 = a.reshape(-1, width), s.reshape(-1, width)
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    if s2.stride(-1) != 1:
        s2 = s2.contiguous()
    out = torch.empty_like(a2)
    kernel[(a2.shape[0],)](a2, s2, wa, ws, out, width, a2.stride(0), s2.stride(0), out.stride(0),
                           eps, BLOCK=_pow2(width))
    return out.view(shape)


def conv_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None,
                silu: bool) -> Tensor:
    """`conv_update_ref` in one Triton kernel: a block of channels per program."""
    triton, _, kernel, _ = _kernels()
    batch, channels = x.shape
    taps = weight.shape[-1]
    out = torch.empty_like(x)
    block = min(256, _pow2(channels))
    grid = (batch, triton.cdiv(channels, block))
    kernel[grid](x, conv_state, weight, bias if bias is not None else x, out, channels,
                 x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
                 weight.stride(0), out.stride(0), TAPS=taps, HAS_BIAS=bias is not None,
                 SILU=silu, BLOCK=block)
    return out


def state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                 dt_softplus: bool = False) -> Tensor:
    """`state_update_ref` in one Triton kernel: a block of channels of one row per program."""
    triton, _, _, kernel = _kernels()
    batch, channels = x.shape
    n_state = state.shape[-1]
    out = torch.empty_like(x)
    block_n = _pow2(n_state)
    block_d = max(1, min(64, 4096 // block_n))
    grid = (batch, triton.cdiv(channels, block_d))
    kernel[grid](state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
                 dt_bias if dt_bias is not None else x, out, channels, n_state,
                 state.stride(0), state.stride(1), state.stride(2), x.stride(0), dt.stride(0),
                 A.stride(0), A.stride(1), B.stride(0), C.stride(0),
                 z.stride(0) if z is not None else 0, out.stride(0),
                 HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
                 SOFTPLUS=dt_softplus, BLOCK_D=block_d, BLOCK_N=block_n)
    return out
