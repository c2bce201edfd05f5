"""Kernel benchmarks: the fast paths against their reference twins, in one run, as ratios."""

from __future__ import annotations

import platform
from typing import Any

import torch

from hymba_bench import ops
from hymba_bench.bench.timing import Timing, measure


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


def _is_launch(name: str) -> bool:
    return name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                    "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


def profile_decode(name: str, profile: str = "tiny", device: str = "cpu",
                   settings: Any = None, top: int = 8) -> dict[str, Any]:
    """Where one design's decode step spends its time: `gen_tokens` steps from the filled cache,
    timed (wall, synchronised) and traced by `torch.profiler` in the mode the throughput stage
    would use. Per step: wall ms; device ms (the sum of GPU kernel times on CUDA, of operators'
    self time on the CPU); host launches (kernel, copy and graph launches) or operators; the
    busiest kernels; and the bandwidth bound (weights + cache read, states written, at the
    device's measured copy rate). Wall >> device means the step is launch- or host-bound.
    On the CPU "launches" counts aten operators (nested ones included)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from hymba_bench.bench.throughput import (
        decode_bytes_per_step,
        device_bandwidth,
        halve_on_oom,
        prepare_decode,
    )
    from hymba_bench.design.registry import resolve
    from hymba_bench.model.lm import instantiate
    from hymba_bench.settings import bench_settings

    rv = resolve(name, profile)
    dev = torch.device(device)
    s = settings or bench_settings(rv.profile, dev)
    model = instantiate(rv.config, dev, s.torch_dtype).eval()
    prepared, batch = halve_on_oom(lambda b: prepare_decode(model, s, b), s.batch)
    wall = Timing.of([prepared.once() for _ in range(s.repeats)])  # warmed up by prepare_decode
    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prepared.reset()  # outside the profile: what it sees is the steps alone
    with torch_profile(activities=activities) as prof:
        prepared.steps()
    steps = s.gen_tokens
    busy: dict[str, float] = {}
    launches = kernels = 0
    for event in prof.events():
        on_device = event.device_type == torch.autograd.DeviceType.CUDA
        if cuda and on_device:
            busy[event.name] = busy.get(event.name, 0.0) + event.device_time
            kernels += 1
        elif cuda and _is_launch(event.name):
            launches += 1
        elif not cuda and event.name.startswith("aten::"):
            busy[event.name] = busy.get(event.name, 0.0) + event.self_cpu_time_total
            launches += 1
            kernels += 1
    moved = decode_bytes_per_step(rv.config, model.num_parameters(), batch, s.context, s.torch_dtype)
    bandwidth = device_bandwidth(str(dev))
    device_ms = sum(busy.values()) / 1e3 / steps
    ranked = sorted(busy.items(), key=lambda kv: -kv[1])[:top]
    return {
        "variant": name, "profile": profile, "device": torch.cuda.get_device_name(dev) if cuda
        else machine()["cpu"], "mode": prepared.mode, "batch": batch, "context": s.context,
        "steps": steps, "dtype": s.dtype, "cuda": cuda,
        "wall_ms_per_step": 1e3 * wall.median_s / steps,
        "device_ms_per_step": device_ms,
        "launches_per_step": launches / steps,
        "kernels_per_step": kernels / steps,  # GPU kernels and copies (in a graph too); CPU: operators
        "bytes_per_step": moved, "bandwidth_bytes_s": bandwidth,
        "roofline_ms_per_step": 1e3 * moved / bandwidth,
        "roofline_pct": 100.0 * (moved / bandwidth) / (wall.median_s / steps),
        "top": [{"name": n, "ms_per_step": t / 1e3 / steps, "share": t / max(sum(busy.values()), 1e-9)}
                for n, t in ranked],
    }
