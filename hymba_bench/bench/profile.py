"""Kernel benchmarks: the fast paths against their reference twins, in one run, as ratios."""

from __future__ import annotations

import functools
import platform
from typing import TYPE_CHECKING, Any

import torch

from hymba_bench import ops
from hymba_bench.bench.timing import Timing, measure

if TYPE_CHECKING:
    from hymba_bench.settings import BenchSettings


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
        return [t.grad for t in leaves.values() if t.grad is not None]

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
            timings[label] = measure(functools.partial(run, fn), warmup=warmup, repeats=repeats)
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


def bench_ssd(batch: int = 1, heads: int = 16, head_dim: int = 64, state: int = 64,
              length: int = 8192, chunk_size: int = 32, groups: int = 1, repeats: int = 3,
              seed: int = 0) -> dict[str, Any]:
    """Mamba-2's chunked SSD forward against its per-step loop, and against the fastest CPU
    Mamba-1 scan at the same inner width (heads x head_dim channels) and state, in one run.

    The targets: chunked >= 10x the loop; per token no slower than Mamba-1's scan.
    """
    from hymba_bench.ops import cpu_kernel

    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    ssd_in: dict[str, Any] = {
              "x": r(batch, length, heads, head_dim), "dt": r(batch, length, heads, scale=0.5),
              "A": -torch.exp(r(heads, scale=0.5)), "B": r(batch, length, groups, state),
              "C": r(batch, length, groups, state), "D": r(heads)}
    channels = heads * head_dim
    scan_in: dict[str, Any] = {
               "u": r(batch, channels, length), "delta": r(batch, channels, length, scale=0.5),
               "A": -torch.exp(r(channels, state, scale=0.5)), "B": r(batch, state, length),
               "C": r(batch, state, length), "D": r(channels)}
    mamba1 = "cpu-kernel" if cpu_kernel.available() else "torch-chunked"
    scan = ops.selective_scan_cpu if mamba1 == "cpu-kernel" else ops.selective_scan_chunked
    arms = {
        "ssd chunked": lambda: ops.ssd_chunked(**ssd_in, dt_softplus=True, chunk_size=chunk_size),
        "ssd per-step loop": lambda: ops.ssd_ref(**ssd_in, dt_softplus=True),
        f"mamba-1 scan ({mamba1})": lambda: scan(**scan_in, delta_softplus=True),
    }
    with torch.no_grad():
        want, _ = arms["ssd per-step loop"]()
        got, _ = arms["ssd chunked"]()
        err = ((got - want).abs().max() / want.abs().max()).item()
        timings = {label: measure(fn, warmup=1, repeats=repeats)
                   for label, fn in arms.items()}
    loop, chunked = timings["ssd per-step loop"], timings["ssd chunked"]
    m1 = timings[f"mamba-1 scan ({mamba1})"]
    rows = [{"path": label, **t.as_dict(),
             "us_per_token": 1e6 * t.median_s / (batch * length)} for label, t in timings.items()]
    return {
        "shape": {"batch": batch, "heads": heads, "head_dim": head_dim, "state": state,
                  "groups": groups, "length": length, "chunk_size": chunk_size},
        "dtype": "float32",
        "rows": rows,
        "chunked_vs_loop": loop.median_s / chunked.median_s,
        "chunked_vs_mamba1": m1.median_s / chunked.median_s,
        "max_rel_err": err,
        "unstable": [label for label, t in timings.items() if t.unstable_reason],
        "machine": machine(),
    }


def bench_delta_rule(batch: int = 1, heads: int = 16, head_dim: int = 64, length: int = 8192,
                     chunk_size: int = 32, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """The gated delta rule's chunked forward against its recurrent loop, in one run (the target:
    chunked >= 5x the loop at L 8192)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    x = {"q": F.normalize(r(batch, length, heads, head_dim), dim=-1) * head_dim ** -0.5,
         "k": F.normalize(r(batch, length, heads, head_dim), dim=-1),
         "v": r(batch, length, heads, head_dim), "g": -F.softplus(r(batch, length, heads)),
         "beta": torch.sigmoid(r(batch, length, heads))}
    from hymba_bench.ops import cpu_kernel

    arms = {"chunked": lambda: ops.gated_delta_rule_chunked(**x, chunk_size=chunk_size),
            "recurrent loop": lambda: ops.gated_delta_rule_ref(**x)}
    if cpu_kernel.available():  # the path the dispatch takes on this CPU
        arms["cpu-kernel"] = lambda: ops.gated_delta_rule_cpu(**x)
    with torch.no_grad():
        want, _ = arms["recurrent loop"]()
        got, _ = arms["chunked"]()
        err = ((got - want).abs().max() / want.abs().max()).item()
        timings = {label: measure(fn, warmup=1, repeats=repeats)
                   for label, fn in arms.items()}
    rows = [{"path": label, **t.as_dict(), "us_per_token": 1e6 * t.median_s / (batch * length)}
            for label, t in timings.items()]
    return {
        "shape": {"batch": batch, "heads": heads, "head_dim": head_dim, "length": length,
                  "chunk_size": chunk_size},
        "dtype": "float32",
        "rows": rows,
        "chunked_vs_loop": timings["recurrent loop"].median_s / timings["chunked"].median_s,
        "cpu_kernel_vs_loop": (timings["recurrent loop"].median_s / timings["cpu-kernel"].median_s
                               if "cpu-kernel" in timings else None),
        "max_rel_err": err,
        "unstable": [label for label, t in timings.items() if t.unstable_reason],
        "machine": machine(),
    }


def _is_launch(name: str) -> bool:
    return name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                    "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


def profile_decode(name: str, profile: str = "tiny", device: str = "cpu",
                   settings: BenchSettings | None = None, top: int = 8) -> dict[str, Any]:
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
