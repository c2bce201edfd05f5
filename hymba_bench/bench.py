"""Kernel benchmarks: the fast paths against their reference twins, in one run, as ratios."""

from __future__ import annotations

import platform
from typing import Any

import torch

from hymba_bench import ops
from hymba_bench.timing import measure


def machine() -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def bench_scan(batch: int = 1, channels: int = 512, state: int = 16, length: int = 8192,
               repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Time selective_scan_chunked against selective_scan_ref on identical fp32 inputs."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g)
    A = -torch.exp(torch.randn(channels, state, generator=g) * 0.5)
    B = torch.randn(batch, state, length, generator=g)
    C = torch.randn(batch, state, length, generator=g)
    D = torch.randn(channels, generator=g)
    z = torch.randn(batch, channels, length, generator=g)
    args = (u, delta, A, B, C, D, z, None, True)
    with torch.no_grad():
        fast_out = ops.selective_scan_chunked(*args)
        ref_out = ops.selective_scan_ref(*args)
        rel = ((fast_out - ref_out).abs().max() / ref_out.abs().max()).item()
        fast = measure(lambda: ops.selective_scan_chunked(*args), warmup=1, repeats=repeats)
        ref = measure(lambda: ops.selective_scan_ref(*args), warmup=0, repeats=repeats)
    return {
        "shape": {"batch": batch, "channels": channels, "state": state, "length": length},
        "dtype": "float32",
        "fast_s": fast.as_dict(),
        "ref_s": ref.as_dict(),
        "speedup": ref.median_s / fast.median_s,
        "max_rel_err": rel,
        "machine": machine(),
    }
