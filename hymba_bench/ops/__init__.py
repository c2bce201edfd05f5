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

from hymba_bench.ops import cpu_kernel
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
from hymba_bench.ops.long_conv import (
    long_conv_fft,
    long_conv_ref,
    modal_filter,
    modal_powers,
    modal_state,
    modal_step,
)
from hymba_bench.ops.moe import moe_combine, moe_combine_ref
from hymba_bench.ops.norm import rms_norm_cpu, rms_norm_ref, rms_norm_torch
from hymba_bench.ops.rotary import rotary, rotary_ref
from hymba_bench.ops.scan import (
    selective_scan_chunked,
    selective_scan_cpu,
    selective_scan_ref,
    selective_state_update_ref,
)

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
    fn = _state_update_path(x.is_cuda)[1]
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = None) -> Tensor:
    fn = _conv_path(x.is_cuda)[1]
    # by keyword: causal-conv1d's 4th positional parameter is seq_idx, not the activation
    return fn(x, weight, bias, activation=activation)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    fn = _conv_update_path(x.is_cuda)[1]
    return fn(x, conv_state, weight, bias, activation=activation)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x: (..., d), weight: (d,) -> RMSNorm(x) * weight, in float32, returned in x's dtype."""
    return _norm_path(x.is_cuda)[1](x, weight, eps)


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
        "moe": "torch-gather",
    }


__all__ = [
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
]
