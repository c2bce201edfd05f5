"""The timer every benchmark uses: warm-up, device synchronisation, repeats, median and spread,
and whether the figure can be trusted.

A figure is marked unstable (learned from pyperf) when its samples spread more than
`SPREAD_LIMIT` around the median, or when other processes used more than `LOAD_LIMIT` of the
machine's CPU while it was timed (`CpuLoad`, from /proc/stat and this process's own CPU time):
on a busy laptop or CI runner the numbers still come, with a mark, instead of silently wrong.
`significant` is the test `regress` uses: a permutation test on two runs' samples, so a change
must stand out from both runs' noise before it fails a build.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

SPREAD_LIMIT = 0.25  # (max - min) / median of the samples
LOAD_LIMIT = 0.10  # share of the machine's CPU time used by other processes while timing
# /proc/stat counts in clock ticks (10 ms): over a shorter window one stray tick of any other
# process reads as a busy machine, so the load of a shorter block is unknown, not measured
LOAD_MIN_WINDOW_S = 0.5


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    samples: tuple[float, ...]
    others_cpu: float | None = None  # share of the machine's CPU other processes used meanwhile

    @property
    def spread(self) -> float:
        """(max - min) / median: the run-to-run spread, recorded beside every figure."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s else 0.0

    @property
    def unstable_reason(self) -> str | None:
        """Why this figure should not be trusted, or None."""
        reasons = []
        if self.spread > SPREAD_LIMIT:
            reasons.append(f"samples spread {self.spread:.0%} (limit {SPREAD_LIMIT:.0%})")
        if self.others_cpu is not None and self.others_cpu > LOAD_LIMIT:
            reasons.append(f"other processes used {self.others_cpu:.0%} of the CPU "
                           f"(limit {LOAD_LIMIT:.0%})")
        return "; ".join(reasons) or None

    def as_dict(self) -> dict[str, float | list[float] | None]:
        out = asdict(self)
        out["samples"] = list(self.samples)
        out["spread"] = self.spread
        return out

    @classmethod
    def of(cls, samples: Sequence[float], others_cpu: float | None = None) -> Timing:
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples),
                   others_cpu)


def synchronize(device: torch.device | str | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_ticks() -> tuple[int, int] | None:
    """(machine busy ticks over all CPUs, this process's ticks), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime


class CpuLoad:
    """`with CpuLoad() as load: ...` then `load.others`: the share of the machine's CPU capacity
    that other processes used during the block (None where /proc is not available, or when the
    block was shorter than `LOAD_MIN_WINDOW_S`)."""

    def __enter__(self) -> CpuLoad:
        self._start = _cpu_ticks()
        self._t0 = time.monotonic()
        self.others: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_ticks()
        elapsed = time.monotonic() - self._t0
        if self._start is None or end is None or elapsed < LOAD_MIN_WINDOW_S:
            return
        ticks = elapsed * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        others = (end[0] - self._start[0]) - (end[1] - self._start[1])
        self.others = min(1.0, max(0.0, others / ticks))


def time_call(fn: Callable[[], object], device: torch.device | str | None = None,
              setup: Callable[[], object] | None = None) -> float:
    """Seconds for one call of `fn`, device work included; `setup` runs untimed before it."""
    if setup is not None:
        setup()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


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
    with CpuLoad() as load:
        samples = [time_call(fn, device, setup) for _ in range(repeats)]
    return Timing.of(samples, load.others)


def significant(before: Sequence[float], after: Sequence[float], alpha: float = 0.05) -> bool:
    """Do two sets of samples differ beyond their own noise? A two-sided permutation test on the
    difference of the means of the logs (exact up to 20 samples, else 20,000 random splits)."""
    a, b = [math.log(x) for x in before], [math.log(x) for x in after]
    if 2 / math.comb(len(a) + len(b), len(a)) >= alpha:
        # too few samples for any split to reach alpha (3 + 3 cannot): the tolerance alone decides
        return True
    pooled, n = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    total = sum(pooled)

    def extreme(first: Sequence[float]) -> bool:
        mean_a = sum(first) / n
        mean_b = (total - sum(first)) / (len(pooled) - n)
        return abs(mean_a - mean_b) >= observed - 1e-12

    if len(pooled) <= 20:
        splits = list(itertools.combinations(pooled, n))
        p = sum(extreme(s) for s in splits) / len(splits)
    else:
        rng = random.Random(0)
        draws = 20_000
        p = sum(extreme(rng.sample(pooled, n)) for _ in range(draws)) / draws
    return p < alpha
