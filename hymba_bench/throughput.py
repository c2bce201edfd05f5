"""Generation throughput, measured the way a benchmark harness does it.

Decode: the cache is set up first and already holds `context` tokens; the timed region is
`gen_tokens` greedy steps for the whole batch, repeated from a checkpoint of the same cache
state; throughput = batch x gen_tokens / median decode time. The cache is filled by prefilling
one sequence and copying its state to every row: the decode cost does not depend on what the rows
hold, and it keeps an 8K x batch-128 fill within memory and time.

Prefill: `prefill_batch` x `context` tokens into a fresh cache, timed separately.

On out-of-memory the batch is halved until it fits (as the paper did), and the batch that ran is
recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from hymba_bench.cache import InferenceCache
from hymba_bench.errors import HymbaBenchError
from hymba_bench.memory import PeakMemory
from hymba_bench.timing import Timing, measure

T = TypeVar("T")


@dataclass(frozen=True)
class BenchSettings:
    batch: int
    context: int
    gen_tokens: int
    prefill_batch: int = 1
    warmup: int = 1
    repeats: int = 3
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class DecodeResult:
    tok_s: float
    batch: int
    timing: Timing
    peak_memory_bytes: int
    memory_source: str


@dataclass
class PrefillResult:
    tok_s: float
    batch: int
    timing: Timing


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def halve_on_oom(fn: Callable[[int], T], batch: int,
                 on_halve: Callable[[int, int], None] | None = None) -> tuple[T, int]:
    """Run fn(batch), halving the batch after each out-of-memory error; returns (result, batch)."""
    while True:
        try:
            return fn(batch), batch
        except Exception as exc:
            if not is_oom(exc) or batch <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if on_halve is not None:
                on_halve(batch, batch // 2)
            batch //= 2


def _prompt(model: nn.Module, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, length), generator=g)
    return ids.to(next(model.parameters()).device)


@torch.no_grad()  # not inference_mode: callers may keep decoding into this cache outside it
def filled_cache(model: nn.Module, batch: int, context: int, gen_tokens: int) -> InferenceCache:
    """A cache for `batch` rows holding `context` prompt tokens, with room for `gen_tokens` more."""
    one = model.allocate_cache(1, context + gen_tokens)
    model(_prompt(model, 1, context), one)
    return one.tile(batch) if batch > 1 else one


@torch.inference_mode()
def decode_throughput(model: nn.Module, settings: BenchSettings, batch: int) -> DecodeResult:
    device = next(model.parameters()).device
    with PeakMemory(device) as peak:
        cache = filled_cache(model, batch, settings.context, settings.gen_tokens)
        first = _prompt(model, batch, 1, seed=1)
        restore = cache.checkpoint(settings.gen_tokens)

        def generate() -> None:
            token = first
            for _ in range(settings.gen_tokens):
                token = model(token, cache)[:, -1].argmax(-1, keepdim=True)

        timing = measure(generate, warmup=settings.warmup, repeats=settings.repeats,
                         device=device, setup=restore)
    return DecodeResult(batch * settings.gen_tokens / timing.median_s, batch, timing,
                        peak.peak_bytes, peak.source)


@torch.inference_mode()
def prefill_throughput(model: nn.Module, settings: BenchSettings, batch: int) -> PrefillResult:
    device = next(model.parameters()).device
    ids = _prompt(model, batch, settings.context)
    cache = model.allocate_cache(batch, settings.context)
    timing = measure(lambda: model(ids, cache), warmup=settings.warmup, repeats=settings.repeats,
                     device=device, setup=cache.reset)
    return PrefillResult(batch * settings.context / timing.median_s, batch, timing)


def settings_from_profile(bench: dict[str, Any], device: torch.device,
                          overrides: dict[str, Any] | None = None) -> BenchSettings:
    """The profile's `bench` block for this device kind (cpu or cuda), with overrides applied."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    values = {**bench[kind], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for key, value in values.items():
        if key != "dtype" and (not isinstance(value, int) or value < (0 if key == "warmup" else 1)):
            raise HymbaBenchError(f"{key}: expected a positive integer, got {value!r}")
    if not isinstance(getattr(torch, str(values.get("dtype")), None), torch.dtype):
        raise HymbaBenchError(f"dtype: expected a torch dtype name, got {values.get('dtype')!r}")
    return BenchSettings(**values)
