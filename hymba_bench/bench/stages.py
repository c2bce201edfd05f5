"""The efficiency stages of a run, and the sweep's: each turns designs into records.

`CacheStage`: parameters, allocated vs analytic cache bytes, paper-convention MB (and the
allocator's view on a GPU). `ThroughputStage`: prefill and decode tokens/s, peak memory and the
roofline percentage, the designs timed interleaved round by round when their caches fit together.
`ContextStage`: one context length of `hymba-bench sweep` (cache bytes and decode tokens/s there).
Each follows `hymba_bench.api.run.Stage`: `needed(design, records)` says which metrics are
missing, `run(jobs, report)` yields records as they are measured.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hymba_bench.api.metrics import owed
from hymba_bench.api.run import Design, Job, Reporter, StageDefaults
from hymba_bench.bench.throughput import (
    available_bytes,
    decode_bytes_per_step,
    decode_throughput,
    device_bandwidth,
    halve_on_oom,
    prepare_decode,
    prepare_prefill,
    roofline_pct,
    time_round_robin,
)
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.cache import InferenceCache, cache_bytes, cache_mb_paper
from hymba_bench.model.lm import count_parameters, instantiate
from hymba_bench.results.records import Record, RecordSet

if TYPE_CHECKING:
    from hymba_bench.bench.throughput import PreparedDecode, PreparedPrefill
    from hymba_bench.design.config import ModelConfig
    from hymba_bench.model.lm import HybridLM
    from hymba_bench.settings import BenchSettings


class MeasurementError(HymbaBenchError):
    """A measurement contradicts itself (e.g. allocated cache bytes differ from the formula)."""


def allocated_cache_bytes(cfg: ModelConfig, seq: int) -> tuple[int, int]:
    """(bytes of a real FP16 batch-1 cache for `seq` tokens, the formula's bytes); an error if
    they disagree."""
    measured = InferenceCache(cfg, 1, seq, torch.float16, "cpu").nbytes()
    analytic = cache_bytes(cfg, 1, seq, torch.float16)
    if measured != analytic:
        raise MeasurementError(f"{cfg.name}: allocated cache holds {measured} bytes but the "
                               f"formula gives {analytic}")
    return measured, analytic


def _device_cache_bytes(cfg: ModelConfig, seq: int, device: str) -> int:
    """The cache's footprint on the GPU as the allocator sees it (block rounding included)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    cache = InferenceCache(cfg, 1, seq, torch.float16, device)
    torch.cuda.synchronize(device)
    used = torch.cuda.memory_allocated(device) - before
    del cache
    return int(used)


@dataclass
class CacheStage(StageDefaults):
    device: str = "cpu"
    name: str = "cache"
    metrics: tuple[str, ...] = owed("cache")

    def needed(self, design: Design, records: RecordSet) -> set[str]:
        return records.missing(self.metrics, design.name, design.profile)

    def run(self, jobs: list[Job], report: Reporter) -> Iterator[Record]:
        for job in jobs:
            report.start(job.design.index, job.name, self.name)
            cfg, seq = job.design.config, job.design.rv.info["cache_seq_len"]
            shape = {"seq_len": seq, "batch": 1, "dtype": "float16"}
            measured, analytic = allocated_cache_bytes(cfg, seq)
            values = {"params": (count_parameters(cfg), {}), "cache_bytes": (measured, shape),
                      "cache_bytes_analytic": (analytic, shape),
                      "cache_mb": (cache_mb_paper(cfg, seq), shape)}
            if self.device.startswith("cuda"):  # beside the stage's own: not part of `needed`
                values["cache_bytes_device"] = (_device_cache_bytes(cfg, seq, self.device), shape)
            for metric, (value, extra) in values.items():
                if metric in job.wanted or metric not in self.metrics:
                    yield Record.measured(job.name, metric, value, **extra)
            report.advance()


DECODE_METRICS = {"decode_tok_s", "peak_memory_bytes", "decode_roofline_pct"}


@dataclass
class _Timed:
    """One design's throughput work: its bench model, then its prepared prefill and decode."""

    job: Job
    settings: BenchSettings
    model: HybridLM | None = None
    prefill: PreparedPrefill | None = None
    prepared: PreparedDecode | None = None
    batch: int = 0

    @property
    def common(self) -> dict[str, Any]:
        s = self.settings
        return {"context": s.context, "seq_len": s.context, "gen_tokens": s.gen_tokens,
                "dtype": s.dtype, "warmup": s.warmup, "repeats": s.repeats}


@dataclass
class ThroughputStage(StageDefaults):
    """`settings`: each design's resolved bench settings, by name (resolved, and checked to fit,
    before any work)."""

    settings: dict[str, BenchSettings]
    device: str = "cpu"
    name: str = "throughput"
    timed: ClassVar[bool] = True  # an engine runs it alone on its node: it measures the design
    metrics: tuple[str, ...] = owed("throughput")

    def needed(self, design: Design, records: RecordSet) -> set[str]:
        return records.missing(self.metrics, design.name, design.profile)

    def run(self, jobs: list[Job], report: Reporter) -> Iterator[Record]:
        together = len(jobs) > 1 and self.fits_together(jobs)
        ready: list[_Timed] = []
        for job in jobs:
            report.start(job.design.index, job.name, self.name)
            timed = _Timed(job, self.settings[job.name])
            self._set_up(timed, report.log)
            if together:
                ready.append(timed)
            else:  # timed alone, and its memory freed before the next design
                yield from self._time([timed])
            report.advance()
        if ready:
            report.log(f"timing prefill and decode of {len(ready)} designs, interleaved round by "
                       "round")
            yield from self._time(ready, report.log)

    def fits_together(self, jobs: list[Job]) -> bool:
        """Can every design's decode cache be held at once (within half the free memory)?
        Interleaving needs that; at paper scale on a GPU it usually does not, and designs are
        timed one after another instead."""

        free = available_bytes(torch.device(self.device))
        if free is None:
            return False
        need = 0
        for job in jobs:
            s = self.settings[job.name]
            need += cache_bytes(job.design.config, s.batch + 1, s.context + s.gen_tokens,
                                s.torch_dtype)
        return need <= free // 2

    def _set_up(self, timed: _Timed, log: Callable[[str], None]) -> None:
        """The bench model, then prefill and decode set up (caches filled, step built, warmed
        up) for `_time` to time beside the other designs'."""

        settings, name, wanted = timed.settings, timed.job.name, timed.job.wanted
        timed.model = model = instantiate(timed.job.design.config, self.device,
                                          settings.torch_dtype).eval()

        def halved(old: int, new: int) -> None:
            log(f"{name}: out of memory at batch {old}, retrying at {new}")

        if "prefill_tok_s" in wanted:
            timed.prefill, _ = halve_on_oom(lambda b: prepare_prefill(model, settings, b),
                                            settings.prefill_batch, halved)
        if wanted & DECODE_METRICS:  # filled from the warmed-up prefill's cache: no second prefill
            seed = timed.prefill.cache if timed.prefill is not None else None
            timed.prepared, timed.batch = halve_on_oom(
                lambda b: prepare_decode(model, settings, b, seed), settings.batch, halved)

    def _time(self, timed: list[_Timed],
              log: Callable[[str], None] | None = None) -> Iterator[Record]:
        """Time the prepared prefills, then decodes, interleaved round by round."""

        prefills = [(t, t.prefill) for t in timed if t.prefill is not None]
        if prefills:
            repeats = prefills[0][0].settings.repeats
            timings = time_round_robin([p for _, p in prefills], repeats,
                                       _rounds(log, "prefill", repeats))
            for (t, prefill), timing in zip(prefills, timings, strict=True):
                res = prefill.result(timing)
                sliding = t.job.design.config.sliding_window is not None
                yield Record.measured(
                    t.job.name, "prefill_tok_s", res.tok_s, batch=res.batch,
                    sliding_prefill=t.settings.sliding_prefill if sliding else None,
                    requested_batch=t.settings.prefill_batch, timing=timing.as_dict(),
                    spread=timing.spread, unstable=timing.unstable_reason,
                    interleaved_with=len(prefills) - 1, **t.common)
                t.prefill = None  # its cache is freed before the decodes are timed
        decodes = [(t, t.prepared, t.model) for t in timed
                   if t.prepared is not None and t.model is not None]
        if not decodes:
            return
        repeats = decodes[0][0].settings.repeats
        timings = time_round_robin([p for _, p, _ in decodes], repeats,
                                   _rounds(log, "decode", repeats))
        bandwidth = device_bandwidth(self.device)
        for (t, prepared, model), timing in zip(decodes, timings, strict=True):
            dec, name = prepared.result(timing), t.job.name
            extra = {"batch": t.batch, "requested_batch": t.settings.batch,
                     "interleaved_with": len(decodes) - 1, **t.common}
            yield Record.measured(name, "decode_tok_s", dec.tok_s, timing=timing.as_dict(),
                                  spread=timing.spread, unstable=timing.unstable_reason,
                                  decode_mode=dec.mode, decode_probe_ms=dec.probe_ms,
                                  decode_kernels=t.settings.decode_kernels, **extra)
            yield Record.measured(name, "peak_memory_bytes", dec.peak_memory_bytes,
                                  memory_source=dec.memory_source,
                                  peak_memory_nvml_net_bytes=dec.nvml_net_bytes,
                                  stage_measured="decode (cache filled, then steps built, warmed up)",
                                  **extra)
            moved = decode_bytes_per_step(t.job.design.config, model.num_parameters(), t.batch,
                                          t.settings.context, t.settings.torch_dtype)
            yield Record.measured(name, "decode_roofline_pct",
                                  roofline_pct(dec.tok_s, t.batch, moved, bandwidth),
                                  decode_bytes_per_step=moved, bandwidth_bytes_s=bandwidth,
                                  roofline_tok_s=t.batch * bandwidth / moved, decode_mode=dec.mode,
                                  **extra)


def _rounds(log: Callable[[str], None] | None, what: str,
            repeats: int) -> Callable[[int], None] | None:
    if log is None:
        return None
    return lambda r: log(f"  {what}: round {r + 1} of {repeats}")


@dataclass
class ContextStage(StageDefaults):
    """One context length of a sweep: the cache there (allocated, equal to the formula, and in
    the paper's MB) and decode tokens/s with the cache holding `context` tokens. Records carry
    `context`, which is part of what makes them done."""

    context: int
    settings: dict[str, BenchSettings]
    device: str = "cpu"
    metrics: tuple[str, ...] = ("cache_bytes", "cache_mb", "decode_tok_s")  # at this context
    timed: ClassVar[bool] = True  # decode tokens/s, as ThroughputStage

    @property
    def name(self) -> str:
        return f"context {self.context}"

    def needed(self, design: Design, records: RecordSet) -> set[str]:
        done = {r.metric for r in records.of(design.name) if r.get("context") == self.context}
        return {m for m in self.metrics if m not in done}

    def run(self, jobs: list[Job], report: Reporter) -> Iterator[Record]:

        seq = self.context
        for job in jobs:
            report.start(job.design.index, job.name, self.name)
            cfg = job.design.config
            shape = {"context": seq, "seq_len": seq, "batch": 1, "window": cfg.sliding_window,
                     "dtype_cache": "float16"}
            if "cache_bytes" in job.wanted or "cache_mb" in job.wanted:
                allocated, _ = allocated_cache_bytes(cfg, seq)  # equal to the formula, or it raised
                yield Record.measured(job.name, "cache_bytes", allocated, **shape)
                yield Record.measured(job.name, "cache_mb", cache_mb_paper(cfg, seq), **shape)
            if "decode_tok_s" in job.wanted:
                settings = self.settings[job.name]
                model = instantiate(cfg, self.device, settings.torch_dtype).eval()
                at = settings.at(context=seq)
                res, batch = halve_on_oom(functools.partial(decode_throughput, model, at),
                                          settings.batch)
                yield Record.measured(
                    job.name, "decode_tok_s", res.tok_s, **{**shape, "batch": batch},
                    requested_batch=settings.batch, gen_tokens=settings.gen_tokens,
                    dtype=settings.dtype, repeats=settings.repeats, decode_mode=res.mode,
                    decode_kernels=settings.decode_kernels,
                    timing=res.timing.as_dict(), spread=res.timing.spread)
                del model
            report.advance()
