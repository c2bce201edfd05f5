"""Kernels and the one place that chooses between fast and reference paths.

Every op has a pure-PyTorch implementation that runs anywhere and a `*_ref` twin with the same
signature. On CUDA, with the optional `cuda` extra installed, the mamba-ssm / causal-conv1d
kernels are used instead; on the CPU the selective scan, the causal conv and RMSNorm use the
compiled kernels of `cpu_kernel.py` when a C++ compiler is there. `backend_report(device)` says which
ran, for the results file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hymba_bench.ops import cpu_kernel, triton_decode
from hymba_bench.ops.attention import attention, attention_ref, decode_path
from hymba_bench.ops.conv import (
    causal_conv1d as causal_conv1d_torch,
)
from hymba_bench.ops.conv import (
    causal_conv1d_cpu,
    causal_conv1d_ref,
    conv_state_from_prefix,
)
from hymba_bench.ops.conv import (
    causal_conv1d_update as causal_conv1d_update_torch,
)
from hymba_bench.ops.delta_rule import (
    gated_delta_rule_chunked,
    gated_delta_rule_cpu,
    gated_delta_rule_ref,
    gated_delta_rule_step,
)
from hymba_bench.ops.long_conv import (
    long_conv_fft,
    long_conv_ref,
    modal_filter,
    modal_powers,
    modal_state,
    modal_step,
)
from hymba_bench.ops.moe import moe_combine, moe_combine_ref
from hymba_bench.ops.norm import gated_rms_norm, rms_norm_cpu, rms_norm_ref, rms_norm_torch
from hymba_bench.ops.rotary import rotary, rotary_ref
from hymba_bench.ops.scan import (
    selective_scan_chunked,
    selective_scan_cpu,
    selective_scan_ref,
    selective_state_update_ref,
)
from hymba_bench.ops.sliding import (
    SLIDING_PREFILL,
    sliding_attention,
    sliding_attention_blocked,
    sliding_attention_flex,
    sliding_attention_ref,
    sliding_prefill,
    sliding_prefill_backend,
)
from hymba_bench.ops.ssd import ssd_chunked, ssd_ref, ssd_step
from hymba_bench.ops.triton_decode import DECODE_KERNELS, decode_kernels, fused_norms_ref

try:  # optional CUDA kernels: absent is fine, used only on CUDA tensors
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _scan_cuda
except ImportError:
    _scan_cuda = None
try:
    from mamba_ssm.ops.triton.selective_state_update import (
        selective_state_update as _state_update_cuda,
    )
except ImportError:
    _state_update_cuda = None
try:  # Mamba-2's chunked scan (its decode step is selective_state_update with heads)
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _ssd_cuda
except ImportError:
    _ssd_cuda = None
try:  # flash-linear-attention's gated-delta-rule kernels (Triton)
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as _gdr_cuda
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as _gdr_step_cuda
except ImportError:
    _gdr_cuda = _gdr_step_cuda = None
try:
    from causal_conv1d import causal_conv1d_fn as _conv_cuda
    from causal_conv1d import causal_conv1d_update as _conv_update_cuda
except ImportError:
    _conv_cuda = _conv_update_cuda = None


KernelPath = tuple[str, Callable[..., Any]]  # (name for backend_report, implementation)


def _cuda_or(cuda: bool, kernel: Callable[..., Any] | None, name: str, fallback: KernelPath) -> KernelPath:
    """The CUDA kernel where it is installed and the tensors are on CUDA, else `fallback`."""
    return (name, kernel) if cuda and kernel is not None else fallback


def _compiled_or(cuda: bool, kernel: Callable[..., Any], fallback: KernelPath) -> KernelPath:
    """The compiled CPU kernel where it is built and the tensors are on the CPU, else `fallback`.
    Under torch.compile the fallback too, asked first: Dynamo cannot trace the build check or a
    ctypes call (Inductor fuses the torch path instead)."""
    use = not cuda and not torch.compiler.is_compiling() and cpu_kernel.available()
    return ("cpu-kernel", kernel) if use else fallback


# Each op's path: the dispatch calls it and `backend_report` names it, so they cannot disagree.
def _scan_path(cuda: bool) -> KernelPath:
    cpu = _compiled_or(cuda, selective_scan_cpu, ("torch-chunked", selective_scan_chunked))
    return _cuda_or(cuda, _scan_cuda, "mamba_ssm", cpu)


def _norm_path(cuda: bool) -> KernelPath:
    return _compiled_or(cuda, rms_norm_cpu, ("torch", rms_norm_torch))


def _state_update_path(cuda: bool) -> KernelPath:
    return _cuda_or(cuda, _state_update_cuda, "mamba_ssm-triton", ("torch", selective_state_update_ref))


def _conv_path(cuda: bool) -> KernelPath:
    cpu = _compiled_or(cuda, causal_conv1d_cpu, ("torch-conv1d", causal_conv1d_torch))
    return _cuda_or(cuda, _conv_cuda, "causal_conv1d", cpu)


def _conv_update_path(cuda: bool) -> KernelPath:
    return _cuda_or(cuda, _conv_update_cuda, "causal_conv1d", ("torch", causal_conv1d_update_torch))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    fn = _scan_path(u.is_cuda)[1]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None,
                           dt_bias: Tensor | None = None, dt_softplus: bool = False) -> Tensor:
    if triton_decode.use_triton(x):
        return triton_decode.state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    fn = _state_update_path(x.is_cuda)[1]
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _ssd_path(cuda: bool) -> KernelPath:
    return _cuda_or(cuda, _ssd_cuda, "mamba_ssm-triton", ("torch-chunked", ssd_chunked))


def _ssd_step_path(cuda: bool) -> KernelPath:
    return _cuda_or(cuda, _state_update_cuda, "mamba_ssm-triton", ("torch", ssd_step))


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
        dt_bias: Tensor | None = None, dt_softplus: bool = False,
        initial_state: Tensor | None = None, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Mamba-2's scan over a sequence (`ops.ssd`): x (B, L, H, P), dt (B, L, H), A (H,),
    B, C (B, L, G, N) -> y (B, L, H, P), final state (B, H, P, N)."""
    name, fn = _ssd_path(x.is_cuda)
    if name == "torch-chunked":
        return fn(x, dt, A, B, C, D, dt_bias, dt_softplus, initial_state, chunk_size)
    y, final = fn(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state,
                  dt_softplus=dt_softplus, return_final_states=True)
    return y, final


def ssd_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Tensor | None = None, dt_bias: Tensor | None = None,
                     dt_softplus: bool = False) -> Tensor:
    """One Mamba-2 decode step, the state (B, H, P, N) updated in place -> y (B, H, P)."""
    name, fn = _ssd_step_path(x.is_cuda)
    if name == "torch":
        return fn(state, x, dt, A, B, C, D, dt_bias, dt_softplus)
    heads, p, n = state.shape[1:]
    # mamba-ssm's kernel takes per-channel dt and A: a head's scalars, broadcast (stride 0)
    return fn(state, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(heads, p, n),
              B, C, D[:, None].expand(heads, p) if D is not None else None, None,
              dt_bias[:, None].expand(heads, p) if dt_bias is not None else None, dt_softplus)


def _gdr_path(cuda: bool) -> KernelPath:
    cpu = _compiled_or(cuda, gated_delta_rule_cpu, ("torch-chunked", gated_delta_rule_chunked))
    return _cuda_or(cuda, _gdr_cuda, "fla-triton", cpu)


def _gdr_step_path(cuda: bool) -> KernelPath:
    return _cuda_or(cuda, _gdr_step_cuda, "fla-triton", ("torch", gated_delta_rule_step))


def gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                     initial_state: Tensor | None = None, chunk_size: int = 64
                     ) -> tuple[Tensor, Tensor]:
    """The gated delta rule over a sequence (`ops.delta_rule`); q already scaled: q, k
    (B, L, H, K), v (B, L, H, V), g, beta (B, L, H) -> o (B, L, H, V), final state (B, H, K, V)."""
    name, fn = _gdr_path(q.is_cuda)
    if name in ("torch-chunked", "cpu-kernel"):
        return fn(q, k, v, g, beta, initial_state, chunk_size)
    o, final = fn(q, k, v, g, beta, scale=1.0, initial_state=initial_state,
                  output_final_state=True)
    return o, final


def gated_delta_rule_update(state: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor,
                            beta: Tensor) -> Tensor:
    """One decode step of the gated delta rule, the state (B, H, K, V) updated in place."""
    name, fn = _gdr_step_path(q.is_cuda)
    if name == "torch":
        return fn(state, q, k, v, g, beta)
    o, final = fn(q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], scale=1.0,
                  initial_state=state, output_final_state=True)
    state.copy_(final)
    return o[:, 0]


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = None) -> Tensor:
    fn = _conv_path(x.is_cuda)[1]
    # by keyword: causal-conv1d's 4th positional parameter is seq_idx, not the activation
    return fn(x, weight, bias, activation=activation)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    if triton_decode.use_triton(x) and activation in (None, "silu", "swish"):
        return triton_decode.conv_update(x, conv_state, weight, bias, activation is not None)
    fn = _conv_update_path(x.is_cuda)[1]
    return fn(x, conv_state, weight, bias, activation=activation)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x: (..., d), weight: (d,) -> RMSNorm(x) * weight, in float32, returned in x's dtype."""
    return _norm_path(x.is_cuda)[1](x, weight, eps)


def fused_norms(a: Tensor, s: Tensor, wa: Tensor, ws: Tensor, eps: float) -> Tensor:
    """Hymba's fusion of its two branches, (RMSNorm(a) * wa + RMSNorm(s) * ws) / 2: one Triton
    kernel under `decode_kernels("triton")`, else the two norms, an add and a scale."""
    if triton_decode.use_triton(a):
        return triton_decode.fused_norms(a, s, wa, ws, eps)
    return (rms_norm(a, wa, eps) + rms_norm(s, ws, eps)) / 2


def long_conv(u: Tensor, h: Tensor) -> Tensor:
    """Hyena's long causal convolution: FFT everywhere (no fused kernel is needed at these sizes)."""
    return long_conv_fft(u, h)


def backend_report(device: torch.device | str) -> dict[str, str]:
    """Which implementation each op uses on `device`: recorded beside every measurement."""
    cuda = torch.device(device).type == "cuda"
    return {
        "selective_scan": _scan_path(cuda)[0],
        "selective_state_update": _state_update_path(cuda)[0],
        "causal_conv1d": _conv_path(cuda)[0],
        "causal_conv1d_update": _conv_update_path(cuda)[0],
        "attention": f"{decode_path(cuda)[0]} decode, torch-sdpa prefill",
        "rms_norm": _norm_path(cuda)[0],
        "long_conv": "torch-fft",
        "ssd": _ssd_path(cuda)[0],
        "gated_delta_rule": _gdr_path(cuda)[0],
        "gated_delta_rule_update": _gdr_step_path(cuda)[0],
        "ssd_state_update": _ssd_step_path(cuda)[0],
        "moe": "torch-gather",
    }


__all__ = [
    "DECODE_KERNELS",
    "SLIDING_PREFILL",
    "attention",
    "attention_ref",
    "backend_report",
    "causal_conv1d",
    "causal_conv1d_cpu",
    "causal_conv1d_ref",
    "causal_conv1d_torch",
    "causal_conv1d_update",
    "causal_conv1d_update_torch",
    "conv_state_from_prefix",
    "decode_kernels",
    "fused_norms",
    "fused_norms_ref",
    "gated_delta_rule",
    "gated_delta_rule_chunked",
    "gated_delta_rule_cpu",
    "gated_delta_rule_ref",
    "gated_delta_rule_step",
    "gated_delta_rule_update",
    "gated_rms_norm",
    "long_conv",
    "long_conv_fft",
    "long_conv_ref",
    "modal_filter",
    "modal_powers",
    "modal_state",
    "modal_step",
    "moe_combine",
    "moe_combine_ref",
    "rms_norm",
    "rms_norm_cpu",
    "rms_norm_ref",
    "rms_norm_torch",
    "rotary",
    "rotary_ref",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_cpu",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "sliding_attention",
    "sliding_attention_blocked",
    "sliding_attention_flex",
    "sliding_attention_ref",
    "sliding_prefill",
    "sliding_prefill_backend",
    "ssd",
    "ssd_chunked",
    "ssd_ref",
    "ssd_state_update",
    "ssd_step",
]
