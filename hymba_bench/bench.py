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


SCAN_PATHS = {  # label -> ops attribute: the fast CPU paths and the per-step reference
    "cpu-kernel": "selective_scan_cpu",
    "torch-chunked": "selective_scan_chunked",
    "reference loop": "selective_scan_ref",
}


def bench_scan(batch: int = 1, channels: int = 512, state: int = 16, length: int = 8192,
               repeats: int = 3, seed: int = 0, backward: bool = True) -> dict[str, Any]:
    """Time every CPU selective-scan path on the same fp32 inputs, forward and (when `backward`)
    forward+backward, each held to the reference loop's values and gradients."""
    from hymba_bench.ops import cpu_kernel

    g = torch.Generator().manual_seed(seed)
    inputs = {
        "u": torch.randn(batch, channels, length, generator=g),
        "delta": torch.randn(batch, channels, length, generator=g),
        "A": -torch.exp(torch.randn(channels, state, generator=g) * 0.5),
        "B": torch.randn(batch, state, length, generator=g),
        "C": torch.randn(batch, state, length, generator=g),
        "D": torch.randn(channels, generator=g),
        "z": torch.randn(batch, channels, length, generator=g),
    }
    dy = torch.randn(batch, channels, length, generator=g)
    paths = {label: getattr(ops, attr) for label, attr in SCAN_PATHS.items()
             if label != "cpu-kernel" or cpu_kernel.available()}

    def forward(fn: Any) -> Any:
        with torch.no_grad():
            return fn(**inputs, delta_softplus=True)

    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}

    def forward_backward(fn: Any) -> list[torch.Tensor]:
        for t in leaves.values():
            t.grad = None
        fn(**leaves, delta_softplus=True).backward(dy)
        return [t.grad for t in leaves.values()]

    def rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
        return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                   for a, b in zip(got, want, strict=True))

    rows = []
    passes = [("forward", forward)] + ([("forward+backward", forward_backward)] if backward else [])
    for pass_name, run in passes:
        ref_out = run(ops.selective_scan_ref)
        want = ref_out if isinstance(ref_out, list) else [ref_out]
        timings = {}
        for label, fn in paths.items():
            got = run(fn)
            err = rel_err(got if isinstance(got, list) else [got], want)
            warmup = 0 if fn is ops.selective_scan_ref else 1  # the loop has nothing to warm
            timings[label] = measure(lambda fn=fn, run=run: run(fn), warmup=warmup, repeats=repeats)
            rows.append({"path": label, "pass": pass_name, **timings[label].as_dict(),
                         "max_rel_err": err})
        for row in rows:
            if row["pass"] == pass_name:
                row["speedup_vs_ref"] = timings["reference loop"].median_s / row["median_s"]
    return {
        "shape": {"batch": batch, "channels": channels, "state": state, "length": length},
        "dtype": "float32",
        "rows": rows,
        "cpu_kernel": "built" if cpu_kernel.available() else cpu_kernel.unavailable_reason(),
        "machine": machine(),
    }
