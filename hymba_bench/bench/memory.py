"""Peak memory during a measurement.

GPU: torch's allocator peak over the block (`peak_bytes`), after freeing what earlier blocks left
cached and resetting the peak, so that one design's figure does not carry another's; beside it
NVML's device-wide used memory (what `nvidia-smi` shows, CUDA context and allocator slack
included), sampled by a background thread, net of what was in use when the block began
(`nvml_net_bytes`).
CPU: growth of the process's resident set over the block, sampled the same way from /proc.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from types import TracebackType

import torch

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a core dependency, but keep CPU-only installs working
    pynvml = None

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class _Sampler(threading.Thread):
    def __init__(self, read: Callable[[], int | None], interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.peak = read() or 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            value = self.read()
            if value is not None and value > self.peak:
                self.peak = value

    def stop(self) -> int:
        self.stop_event.set()
        self.join()
        value = self.read()
        return max(self.peak, value or 0)


def _nvml_reader(device: torch.device) -> Callable[[], int | None] | None:
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no driver / no permission: fall back to torch's allocator
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.peak_bytes` and `peak.source`."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.nvml_net_bytes: int | None = None
        self.source = "none"
        self._sampler: _Sampler | None = None
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # what earlier rows left cached is not this row's
            torch.cuda.reset_peak_memory_stats(self.device)
            nvml = _nvml_reader(self.device)
            self.source = "torch.cuda.max_memory_allocated"
            self._base = (nvml() or 0) if nvml else 0
            reader: Callable[[], int | None] | None = nvml
        else:
            reader = _rss_bytes if _rss_bytes() is not None else None
            self.source = "rss-growth" if reader else "none"
            self._base = _rss_bytes() or 0
        if reader is not None:
            self._sampler = _Sampler(reader)
            self._sampler.start()
        return self

    def reset_peak(self) -> None:
        """Start the peak again from what is held now: a set-up's transient (the prefill that
        fills a decode cache) is not the figure; what stays allocated (weights, cache) still is."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # NVML sees reserved blocks: give the transient's back
            torch.cuda.reset_peak_memory_stats(self.device)
        if self._sampler is not None:
            self._sampler.peak = self._sampler.read() or 0

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        sampled = self._sampler.stop() if self._sampler is not None else 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            if self._sampler is not None:
                self.nvml_net_bytes = max(0, sampled - self._base)
        else:
            self.peak_bytes = max(0, sampled - self._base)
