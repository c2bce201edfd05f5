"""The timer every benchmark uses: warm-up, device synchronisation, repeats, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    samples: tuple[float, ...]

    @property
    def spread(self) -> float:
        """(max - min) / median: the run-to-run spread, recorded beside every figure."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s else 0.0

    def as_dict(self) -> dict[str, float | list[float]]:
        out = asdict(self)
        out["samples"] = list(self.samples)
        out["spread"] = self.spread
        return out


def synchronize(device: torch.device | str | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5,
            device: torch.device | str | None = None,
            setup: Callable[[], object] | None = None) -> Timing:
    """Time `fn` `repeats` times after `warmup` untimed calls; `setup` runs untimed before each."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), max(samples), tuple(samples))
