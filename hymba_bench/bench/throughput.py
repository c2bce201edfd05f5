"""Generation throughput, measured the way a benchmark harness does it.

Decode: the cache is set up first and already holds `context` tokens; the timed region is
`gen_tokens` greedy steps for the whole batch, repeated from a checkpoint of the same cache
state; throughput = batch x gen_tokens / median decode time. The cache is filled by prefilling
one sequence and copying its state to every row: the decode cost does not depend on what the rows
hold, and it keeps an 8K x batch-128 fill within memory and time. Where the prefill benchmark ran
first at batch 1, its warmed-up cache is that one sequence (the same prompt): no second prefill.

Prefill: `prefill_batch` x `context` tokens into a fresh cache, timed separately.

How a decode step runs (`decode`): `eager` calls the model; `compiled` runs
`torch.compile(model, fullgraph=True)`, one graph for every position since the position lives in
the cache on the device; `graph` replays a CUDA graph of that step, captured after a warm-up (one
graph per batch size, as mamba-ssm's generation does), so the figure is the GPU's time, not the
interpreter's. `auto` measures: on CUDA it times eager and graph steps on the design and keeps
the faster; on the CPU it is eager, because compiling costs about 40 s per design on the 2-core
machine (measured) against well under a second saved over the profile's few timed steps; ask for
`--decode compiled` to measure compiled steps there. The mode that ran is in every record.

Roofline: a decode step must read every weight once and the cache (K/V of the context, the
recurrent states, which it also writes back); at the device's measured copy bandwidth that bounds
tokens/s, and `decode_roofline_pct` says how close a design gets.

On out-of-memory the batch is halved until it fits (as the paper did), and the batch that ran is
recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor

from hymba_bench.bench.memory import PeakMemory
from hymba_bench.bench.timing import CpuLoad, Timing, measure, synchronize, time_call
from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.cache import InferenceCache, cache_bytes, state_elements
from hymba_bench.ops.sliding import sliding_prefill
from hymba_bench.ops.triton_decode import decode_kernels
from hymba_bench.settings import DECODE_MODES, BenchSettings

if TYPE_CHECKING:
    from hymba_bench.model.lm import HybridLM

T = TypeVar("T")


Step = Callable[[Tensor], Tensor]  # (B, 1) token ids -> (B, 1, vocab) logits, advancing the cache
GRAPH_WARMUP = 2  # eager steps before a CUDA-graph capture (allocator and cuBLAS set-up)
SETUP_STEPS = GRAPH_WARMUP + 1  # positions a step's set-up writes (then undoes): the cache needs them
# Steps in one decode warm-up run. Every step reads the same cache (the context is in it already),
# so a few steps reach the steady state (allocator, first calls, caches) that a timed run of
# `gen_tokens` sees; on the CPU profile a full-length warm-up cost ~7 s of the default run.
WARMUP_STEPS = 4


@dataclass
class DecodeResult:
    tok_s: float
    batch: int
    timing: Timing
    peak_memory_bytes: int
    memory_source: str
    mode: str
    nvml_net_bytes: int | None = None  # device-wide NVML peak, net of what was in use before
    probe_ms: dict[str, float] | None = None  # auto: ms per step of each mode tried


@dataclass
class PrefillResult:
    tok_s: float
    batch: int
    timing: Timing


class DoesNotFit(HymbaBenchError):
    """The analytic cache size exceeds the memory free on the device: found before allocating."""


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new allocations: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(cfg: ModelConfig, batch: int, tokens: int, dtype: torch.dtype,
               device: torch.device) -> None:
    """Raise DoesNotFit, before any allocation, when a batch x tokens cache (plus the batch-1
    cache it is filled from) cannot fit in what the device has free."""
    need = cache_bytes(cfg, batch + 1, tokens, dtype)
    free = available_bytes(device)
    if free is not None and need > free:
        raise DoesNotFit(f"{cfg.name}: a cache for batch {batch} x {tokens:,} tokens needs "
                         f"{need / 1e9:,.1f} GB and {free / 1e9:,.1f} GB is free on {device}; "
                         "lower --batch, --context or --gen-tokens")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | DoesNotFit) or (
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


def _prompt(model: HybridLM, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, length), generator=g)
    return ids.to(next(model.parameters()).device)


@torch.no_grad()  # not inference_mode: callers may keep decoding into this cache outside it
def filled_cache(model: HybridLM, batch: int, context: int, gen_tokens: int,
                 prefilled: InferenceCache | None = None) -> InferenceCache:
    """A cache for `batch` rows holding `context` prompt tokens, with room for `gen_tokens` more.
    `prefilled`: a batch-1 cache already holding that prompt (the prefill benchmark's), tiled
    instead of prefilling the prompt again."""
    if prefilled is not None and (prefilled.batch, prefilled.pos, prefilled.max_seq_len) == (
            1, model.cfg.meta_tokens + context, context + gen_tokens):
        return prefilled.tile(batch)
    one = model.allocate_cache(1, context + gen_tokens)
    model(_prompt(model, 1, context), one)
    return one.tile(batch) if batch > 1 else one


def _graph_step(model: HybridLM, cache: InferenceCache, first: Tensor) -> Step:
    """A CUDA graph of one decode step, captured after warm-up steps (then undone)."""
    token = first.clone()  # the graph's input buffer: each call copies its token in
    undo = cache.checkpoint(SETUP_STEPS)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(GRAPH_WARMUP):
            model(token, cache)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model(token, cache)
    undo()

    def step(t: Tensor) -> Tensor:
        token.copy_(t)
        graph.replay()
        cache.forget_host_position()  # the replay advanced the position on the device only
        return logits

    return step


def make_step(model: HybridLM, cache: InferenceCache, first: Tensor, mode: str) -> Step:
    """The decode step in `mode`, compiled or captured already (no compile time in a timing)."""
    if mode == "eager":
        return lambda t: model(t, cache)
    if mode == "graph":
        if first.device.type != "cuda":
            raise HymbaBenchError("graph: CUDA graphs need a CUDA device", param="decode")
        return _graph_step(model, cache, first)
    if mode == "compiled":
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        undo = cache.checkpoint(2)
        for _ in range(2):  # compile, and check the next position reuses the graph
            compiled(first, cache)
        undo()
        return lambda t: compiled(t, cache)
    raise HymbaBenchError(f"expected one of {', '.join(DECODE_MODES)}, got {mode!r}", param="decode")


@dataclass
class PreparedDecode:
    """One design's decode, set up and warmed up: the cache filled, the step compiled or
    captured, its state checkpointed. `once()` times `gen_tokens` greedy steps from that state;
    `time_round_robin` interleaves several designs' `once()`."""

    batch: int
    settings: BenchSettings
    device: torch.device
    mode: str
    probe_ms: dict[str, float] | None
    peak: PeakMemory
    _generate: Callable[[], None]
    _restore: Callable[[], None]

    @torch.inference_mode()
    def once(self) -> float:
        return time_call(self._generate, self.device, self._restore)

    @torch.inference_mode()
    def reset(self) -> None:
        """The cache back at its checkpointed state (where every timed run starts)."""
        self._restore()
        synchronize(self.device)

    @torch.inference_mode()
    def steps(self) -> None:
        """The `gen_tokens` steps, untimed, for a profiler to watch; `reset()` first."""
        self._generate()
        synchronize(self.device)

    def result(self, timing: Timing) -> DecodeResult:
        return DecodeResult(self.batch * self.settings.gen_tokens / timing.median_s, self.batch,
                            timing, self.peak.peak_bytes, self.peak.source, self.mode,
                            self.peak.nvml_net_bytes, self.probe_ms)


def _generator(step: Step, first: Tensor, n: int) -> Callable[[], None]:
    def generate() -> None:
        token = first
        for _ in range(n):
            token = step(token)[:, -1].argmax(-1, keepdim=True)

    return generate


def _probe_ms(step: Step, first: Tensor, cache: InferenceCache, n: int) -> float:
    """ms per step over `n` steps; the cache is left as it was found. A replayed graph cannot
    check for overflow, so each probe must not eat into the positions the timing needs."""
    restore = cache.checkpoint(n)
    timing = measure(_generator(step, first, n), warmup=1, repeats=3, device=first.device,
                     setup=restore)
    restore()
    return 1e3 * timing.median_s / n


def decode_room(settings: BenchSettings) -> int:
    """Positions a decode cache keeps after the context: the timed steps, or a step's set-up."""
    return max(settings.gen_tokens, SETUP_STEPS)


def _with_kernels(kind: str, fn: Callable[[], None]) -> Callable[[], None]:
    """`fn` run with the decode kernels `kind` (an eager step dispatches at each call)."""

    def run() -> None:
        with decode_kernels(kind):
            fn()

    return run


@torch.inference_mode()
def prepare_decode(model: HybridLM, settings: BenchSettings, batch: int,
                   prefilled: InferenceCache | None = None) -> PreparedDecode:
    """Fill the cache (from `prefilled`, the prefill benchmark's warmed-up batch-1 cache, when
    it holds the same prompt), build the step in `settings.decode` (auto: measured) with the
    kernels `settings.decode_kernels` names, warm it up."""
    with decode_kernels(settings.decode_kernels):  # a graph captures the kernels it names
        return _prepare_decode(model, settings, batch, prefilled)


def _prepare_decode(model: HybridLM, settings: BenchSettings, batch: int,
                    prefilled: InferenceCache | None) -> PreparedDecode:
    device = next(model.parameters()).device
    room = decode_room(settings)
    check_fits(model.cfg, batch, settings.context + room, settings.torch_dtype, device)
    with PeakMemory(device) as peak:
        cache = filled_cache(model, batch, settings.context, room, prefilled)
        peak.reset_peak()  # the figure is decoding's: weights, cache and steps, not the fill
        first = _prompt(model, batch, 1, seed=1)
        mode, probe = settings.decode, None
        if mode == "auto":
            mode = "eager"
            if device.type == "cuda":  # measured: the faster of eager and graph on this design
                n = min(8, settings.gen_tokens)
                steps = {m: make_step(model, cache, first, m) for m in ("eager", "graph")}
                probe = {m: _probe_ms(f, first, cache, n) for m, f in steps.items()}
                mode = min(probe, key=probe.__getitem__)
        step = make_step(model, cache, first, mode) if probe is None else steps[mode]
        restore = cache.checkpoint(settings.gen_tokens)
        kernels = settings.decode_kernels
        generate = _with_kernels(kernels, _generator(step, first, settings.gen_tokens))
        warm = _with_kernels(kernels, _generator(step, first, min(settings.gen_tokens,
                                                                   WARMUP_STEPS)))
        for _ in range(settings.warmup):
            restore()
            warm()
        synchronize(device)
    return PreparedDecode(batch, settings, device, mode, probe, peak, generate, restore)


def time_round_robin(prepared: list[PreparedDecode] | list[PreparedPrefill], repeats: int,
                     on_round: Callable[[int], None] | None = None) -> list[Timing]:
    """Time each design `repeats` times, interleaved: A B C, B C A, C A B, ... Drift and bursts
    of load then hit every design alike, and sample i of every design comes from round i, so
    ratios between designs can be taken round by round."""
    samples: list[list[float]] = [[] for _ in prepared]
    with CpuLoad() as load:
        for r in range(repeats):
            if on_round is not None:
                on_round(r)
            for k in range(len(prepared)):
                i = (r + k) % len(prepared)
                samples[i].append(prepared[i].once())
    return [Timing.of(s, load.others) for s in samples]


def decode_throughput(model: HybridLM, settings: BenchSettings, batch: int) -> DecodeResult:
    """One design's decode throughput, timed on its own."""
    prepared = prepare_decode(model, settings, batch)
    return prepared.result(time_round_robin([prepared], settings.repeats)[0])


def decode_bytes_per_step(cfg: ModelConfig, n_params: int, batch: int, context: int,
                          dtype: torch.dtype) -> int:
    """What one decode step must move at the least: every weight read once, the cache of
    `context` tokens read, the recurrent states written back."""
    elem = torch.empty((), dtype=dtype).element_size()
    return n_params * elem + cache_bytes(cfg, batch, context, dtype) + batch * state_elements(cfg) * elem


def measure_bandwidth(device: torch.device | str, nbytes: int | None = None) -> float:
    """Device memory bandwidth in bytes/s: a large on-device copy (read + write), median of 5."""
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), warmup=2, repeats=5, device=device)
    return 2 * nbytes / timing.median_s


@cache
def device_bandwidth(device: str) -> float:
    """`measure_bandwidth`, once per process and device: a run's rows share one figure."""
    return measure_bandwidth(device)


def roofline_pct(tok_s: float, batch: int, bytes_per_step: int, bandwidth: float) -> float:
    """Measured tokens/s as a percentage of the bandwidth bound batch * bandwidth / bytes."""
    return 100.0 * tok_s / (batch * bandwidth / bytes_per_step)


@dataclass
class PreparedPrefill:
    """One design's prefill, set up and warmed up; `once()` times `batch` x `context` tokens
    into a fresh cache, so `time_round_robin` can interleave it with other designs'."""

    model: HybridLM
    ids: Tensor
    cache: InferenceCache
    settings: BenchSettings
    batch: int

    @torch.inference_mode()
    def once(self) -> float:
        with sliding_prefill(self.settings.sliding_prefill):
            return time_call(lambda: self.model(self.ids, self.cache), self.ids.device,
                             self.cache.reset)

    def result(self, timing: Timing) -> PrefillResult:
        return PrefillResult(self.batch * self.settings.context / timing.median_s, self.batch, timing)


def prepare_prefill(model: HybridLM, settings: BenchSettings, batch: int) -> PreparedPrefill:
    """The prompt and a fresh cache, warmed up. The cache keeps the decode's room after the
    context (the same prefill work) so that, batch 1, it can seed the decode cache."""
    device = next(model.parameters()).device
    tokens = settings.context + decode_room(settings)
    check_fits(model.cfg, batch, tokens, settings.torch_dtype, device)
    ids = _prompt(model, batch, settings.context)
    prepared = PreparedPrefill(model, ids, model.allocate_cache(batch, tokens), settings, batch)
    for _ in range(settings.warmup):
        prepared.once()
    return prepared
