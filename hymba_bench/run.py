"""`hymba-bench run`: every variant through every stage, each figure written as soon as it exists.

Stages, in order: `cache` (parameters, allocated vs analytic cache bytes, paper-convention MB),
`throughput` (prefill and decode tokens/s, peak memory), `accuracy` (proxy training under the
profile's shared budget, then lm-eval; see `hymba_bench.accuracy.stage`).
With `resume`, a (variant, metric) already in results.jsonl is not measured again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from hymba_bench.accuracy.workers import AccuracyUnit, train_in_parallel
from hymba_bench.cli.progress import RunProgress, TrainingBar
from hymba_bench.design.registry import ResolvedVariant, get_profile, get_variant, names, resolve, variants
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.plots import roadmap_plot
from hymba_bench.results.records import ResultsFile, base_context, make_record, recorder, run_lock
from hymba_bench.results.tables import extended_table, roadmap_table

STAGES = ("cache", "throughput", "accuracy")
STAGE_METRICS = {
    "cache": ("params", "cache_bytes", "cache_bytes_analytic", "cache_mb"),
    "throughput": ("prefill_tok_s", "decode_tok_s", "peak_memory_bytes", "decode_roofline_pct"),
    "accuracy": ("commonsense_pct", "recall_pct"),
}


class MeasurementError(HymbaBenchError):
    """A measurement contradicts itself (e.g. allocated cache bytes differ from the formula)."""


@dataclass
class RunOptions:
    variants: list[str]
    profile: str = "tiny"
    out: Path = Path("runs/latest")
    skip: set[str] = field(default_factory=set)
    resume: bool = False
    device: str = "cpu"
    variant_files: list[Path] = field(default_factory=list)
    bench: dict[str, Any] = field(default_factory=dict)  # overrides of the profile's bench block
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the profile's train block
    data_dir: Path | None = None  # local copies of lm-eval's datasets (a datasets cache)
    log_samples: bool = False  # lm-eval's per-sample logs beside its results JSON
    workers: int = 1  # designs trained at once in the accuracy stage (CPU: a process each)


def parse_variants(spec: str, variant_files: list[Path] | None = None) -> list[str]:
    """Names and groups, comma-separated -> validated names (unknown ones raise, listing the valid).

    `all`: the registered roadmap plus any user design files; `others`: the registered designs
    outside the roadmap (Jamba, Zamba, StripedHyena, Samba).
    """
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "all":
            chosen += names(variant_files, only_all=True)
        elif item == "others":
            chosen += [n for n, v in variants(variant_files).items()
                       if v.keys.get("table_section") == "other" and v.keys.get("in_all") is False]
        elif item:
            get_variant(item, variant_files)
            chosen.append(item)
    if not chosen:
        raise HymbaBenchError("--variants: expected 'all', 'others' or a comma-separated list of names")
    return list(dict.fromkeys(chosen))


def prepare_out_dir(out: Path, resume: bool, filename: str = "results.jsonl") -> ResultsFile:
    """The run's results file, checked writable and empty unless resuming (call under run_lock)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HymbaBenchError(f"--out: cannot write to {out}: {exc.strerror}") from None
    results = ResultsFile(out / filename)
    if results.load() and not resume:
        raise HymbaBenchError(f"{results.path} already holds results; pass --resume to continue "
                              "it, or choose another --out")
    return results


def allocated_cache_bytes(cfg: Any, seq: int) -> tuple[int, int]:
    """(bytes of a real FP16 batch-1 cache for `seq` tokens, the formula's bytes); an error if
    they disagree."""
    import torch

    from hymba_bench.model.cache import InferenceCache, cache_bytes

    measured = InferenceCache(cfg, 1, seq, torch.float16, "cpu").nbytes()
    analytic = cache_bytes(cfg, 1, seq, torch.float16)
    if measured != analytic:
        raise MeasurementError(f"{cfg.name}: allocated cache holds {measured} bytes but the "
                               f"formula gives {analytic}")
    return measured, analytic


def _parameters(rv: ResolvedVariant) -> int:
    from hymba_bench.model.lm import count_parameters

    return count_parameters(rv.config)


def measure_cache(rv: ResolvedVariant, device: str) -> dict[str, tuple[float, dict[str, Any]]]:

    from hymba_bench.model.cache import cache_mb_paper

    cfg, seq = rv.config, rv.info["cache_seq_len"]
    params = _parameters(rv)
    extra = {"seq_len": seq, "batch": 1, "dtype": "float16"}
    measured, analytic = allocated_cache_bytes(cfg, seq)
    out: dict[str, tuple[float, dict[str, Any]]] = {
        "params": (params, {}),
        "cache_bytes": (measured, extra),
        "cache_bytes_analytic": (analytic, extra),
        "cache_mb": (cache_mb_paper(cfg, seq), extra),
    }
    if device.startswith("cuda"):
        out["cache_bytes_device"] = (_device_cache_bytes(cfg, seq, device), extra)
    return out


def _device_cache_bytes(cfg: Any, seq: int, device: str) -> int:
    """The cache's footprint on the GPU as the allocator sees it (block rounding included)."""
    import torch

    from hymba_bench.model.cache import InferenceCache

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    cache = InferenceCache(cfg, 1, seq, torch.float16, device)
    torch.cuda.synchronize(device)
    used = torch.cuda.memory_allocated(device) - before
    del cache
    return int(used)


DECODE_METRICS = {"decode_tok_s", "peak_memory_bytes", "decode_roofline_pct"}


@dataclass
class ThroughputJob:
    """One design's throughput stage: its bench model and, once set up, its prepared decode."""

    rv: ResolvedVariant
    record: Callable[..., None]
    wanted: set[str]
    settings: Any = None
    model: Any = None
    prefill: Any = None  # PreparedPrefill
    prepared: Any = None  # PreparedDecode
    batch: int = 0

    @property
    def common(self) -> dict[str, Any]:
        s = self.settings
        return {"context": s.context, "seq_len": s.context, "gen_tokens": s.gen_tokens,
                "dtype": s.dtype, "warmup": s.warmup, "repeats": s.repeats}


def set_up_throughput(job: ThroughputJob, device: str, log: Callable[[str], None]) -> None:
    """The bench model, then prefill and decode set up (caches filled, step built, warmed up)
    for `time_throughput` to time beside the other designs'. `job.settings` is already resolved."""

    from hymba_bench.bench.throughput import halve_on_oom, prepare_decode, prepare_prefill
    from hymba_bench.model.lm import instantiate

    settings, name = job.settings, job.rv.config.name
    job.model = model = instantiate(job.rv.config, device, settings.torch_dtype).eval()

    def halved(old: int, new: int) -> None:
        log(f"{name}: out of memory at batch {old}, retrying at {new}")

    if "prefill_tok_s" in job.wanted:
        job.prefill, _ = halve_on_oom(lambda b: prepare_prefill(model, settings, b),
                                      settings.prefill_batch, halved)
    if job.wanted & DECODE_METRICS:  # filled from the warmed-up prefill's cache: no second prefill
        seed = job.prefill.cache if job.prefill is not None else None
        job.prepared, job.batch = halve_on_oom(lambda b: prepare_decode(model, settings, b, seed),
                                               settings.batch, halved)


def time_throughput(jobs: list[ThroughputJob], device: str,
                    log: Callable[[str], None] | None = None) -> None:
    """Time the prepared prefills, then decodes, interleaved round by round, and record them."""
    from hymba_bench.bench.throughput import (
        decode_bytes_per_step,
        device_bandwidth,
        roofline_pct,
        time_round_robin,
    )

    prefills = [j for j in jobs if j.prefill is not None]
    if prefills:
        repeats = prefills[0].settings.repeats
        timings = time_round_robin([j.prefill for j in prefills], repeats, _rounds(log, "prefill",
                                                                               repeats))
        for job, timing in zip(prefills, timings, strict=True):
            res = job.prefill.result(timing)
            job.record("prefill_tok_s", res.tok_s, batch=res.batch,
                       requested_batch=job.settings.prefill_batch, timing=timing.as_dict(),
                       spread=timing.spread, unstable=timing.unstable_reason,
                       interleaved_with=len(prefills) - 1, **job.common)
            job.prefill = None  # its cache is freed before the decodes are timed
    jobs = [j for j in jobs if j.prepared is not None]
    if not jobs:
        return
    repeats = jobs[0].settings.repeats
    timings = time_round_robin([j.prepared for j in jobs], repeats, _rounds(log, "decode", repeats))
    bandwidth = device_bandwidth(device)
    for job, timing in zip(jobs, timings, strict=True):
        dec = job.prepared.result(timing)
        extra = {"batch": job.batch, "requested_batch": job.settings.batch,
                 "interleaved_with": len(jobs) - 1, **job.common}
        job.record("decode_tok_s", dec.tok_s, timing=timing.as_dict(), spread=timing.spread,
                   unstable=timing.unstable_reason, decode_mode=dec.mode,
                   decode_probe_ms=dec.probe_ms, **extra)
        job.record("peak_memory_bytes", dec.peak_memory_bytes, memory_source=dec.memory_source,
                   peak_memory_nvml_net_bytes=dec.nvml_net_bytes,
                   stage_measured="decode (cache filled, then steps built, warmed up)", **extra)
        moved = decode_bytes_per_step(job.rv.config, job.model.num_parameters(), job.batch,
                                      job.settings.context, job.settings.torch_dtype)
        job.record("decode_roofline_pct", roofline_pct(dec.tok_s, job.batch, moved, bandwidth),
                   decode_bytes_per_step=moved, bandwidth_bytes_s=bandwidth,
                   roofline_tok_s=job.batch * bandwidth / moved, decode_mode=dec.mode, **extra)


def _rounds(log: Callable[[str], None] | None, what: str,
            repeats: int) -> Callable[[int], None] | None:
    if log is None:
        return None
    return lambda r: log(f"  {what}: round {r + 1} of {repeats}")


def fits_together(resolved: list[ResolvedVariant], settings: dict[str, Any], device: str) -> bool:
    """Can every design's decode cache be held at once (within half the free memory)?
    Interleaving needs that; at paper scale on a GPU it usually does not, and designs are timed
    one after another instead. `settings`: each design's resolved bench settings, by name."""
    import torch

    from hymba_bench.bench.throughput import available_bytes
    from hymba_bench.model.cache import cache_bytes

    free = available_bytes(torch.device(device))
    if free is None:
        return False
    need = 0
    for rv in resolved:
        s = settings[rv.config.name]
        need += cache_bytes(rv.config, s.batch + 1, s.context + s.gen_tokens, s.torch_dtype)
    return need <= free // 2


def run(opts: RunOptions, console: Console | None = None, show_tables: bool = True) -> Path:
    console = console or Console()
    for stage in opts.skip:
        if stage not in STAGES:
            raise HymbaBenchError(f"--skip: unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    get_profile(opts.profile)
    resolved = [resolve(name, opts.profile, opts.variant_files) for name in opts.variants]
    if opts.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise HymbaBenchError("--device cuda: no CUDA device is visible to torch")
    bench: dict[str, Any] = {}  # each design's bench settings, resolved once
    if "throughput" not in opts.skip:  # bad --batch / --context / --decode fail before any work
        import torch

        from hymba_bench.bench.throughput import check_fits, settings_from_profile

        dev = torch.device(opts.device)
        for rv in resolved:
            if not rv.profile.bench:
                raise HymbaBenchError(f"{rv.profile.path}: bench: the profile has no throughput "
                                      "settings")
            s = bench[rv.config.name] = settings_from_profile(rv.profile.bench, dev, opts.bench)
            # batch 1 is where halving would end: if even that cannot fit, say so now
            check_fits(rv.config, 1, s.context + s.gen_tokens, s.torch_dtype, dev)
    budget, paper_data = None, False
    if "accuracy" not in opts.skip:  # bad budgets and data dirs fail before anything is written
        from hymba_bench.accuracy.stage import AccuracyBudget, hub_reachable, use_data_dir

        budget = AccuracyBudget.from_profile(get_profile(opts.profile), opts.train)
        use_data_dir(opts.data_dir)
        paper_data = opts.data_dir is not None or hub_reachable()
    with run_lock(opts.out):
        results = prepare_out_dir(opts.out, opts.resume)
        done = results.done() if opts.resume else set()
        context = base_context(opts.device)
        noted = {(r["variant"], r.get("stage"), r["value"]) for r in results.load() if r["metric"] == "note"}
        for stage in sorted(opts.skip):
            if ("*", stage, f"{stage} skipped (--skip {stage})") in noted:
                continue  # a resumed run says it once
            results.append(make_record("*", "note", f"{stage} skipped (--skip {stage})", context,
                                       stage=stage, profile=opts.profile))
        stages = [s for s in STAGES if s not in opts.skip]
        # several accuracy designs at once, each in its own process, only on the CPU
        parallel = opts.workers > 1 and opts.device.startswith("cpu") and len(resolved) > 1
        threads = max(1, (os.cpu_count() or 1) // max(1, opts.workers))

        with RunProgress(console, len(resolved), len(stages)) as progress:
            records = {rv.config.name: recorder(results, rv, context, opts.profile)
                       for rv in resolved}
            for stage in stages:  # stage by stage, so that decode timings can be interleaved
                jobs: list[ThroughputJob] = []
                units: list[AccuracyUnit] = []  # accuracy designs for the worker pool
                # what each design recorded before this stage (seeds already evaluated): read once
                earlier = results.load() if stage == "accuracy" else []
                together = stage == "throughput" and fits_together(resolved, bench, opts.device)
                for index, rv in enumerate(resolved, 1):
                    name = rv.config.name
                    record = records[name]
                    if not (stage == "accuracy" and parallel):  # workers say when they start
                        progress.start(index, name, stage)
                    wanted = {m for m in STAGE_METRICS[stage] if (name, m, opts.profile) not in done}
                    if stage == "cache" and wanted:
                        for metric, (value, extra) in measure_cache(rv, opts.device).items():
                            if metric in wanted or metric not in STAGE_METRICS["cache"]:
                                record(metric, value, **extra)
                    elif stage == "throughput" and wanted:
                        job = ThroughputJob(rv, record, wanted, settings=bench[name])
                        set_up_throughput(job, opts.device, progress.log)
                        if together:
                            jobs.append(job)
                        else:  # timed alone, and its memory freed before the next design
                            time_throughput([job], opts.device)
                    elif stage == "accuracy" and wanted:
                        assert budget is not None
                        previous = [r for r in earlier if r.get("variant") == name]
                        if parallel:
                            units.append(AccuracyUnit(
                                name, index, opts.profile, opts.out, budget, wanted, context,
                                opts.variant_files, paper_data, previous, opts.log_samples,
                                opts.data_dir, threads, _parameters(rv)))
                            continue  # advanced when its worker finishes
                        from hymba_bench.accuracy.stage import measure_accuracy

                        bar = TrainingBar(progress, name, budget.steps, budget.seeds)
                        measure_accuracy(rv, opts.out, opts.device, budget, record, wanted,
                                         bar.step, paper_data, previous, opts.log_samples, bar.seed)
                        bar.close()
                    progress.advance()
                if units:
                    progress.log(f"training {len(units)} designs, {min(opts.workers, len(units))} at "
                                 f"a time ({threads} thread{'s' if threads > 1 else ''} each)")
                    train_in_parallel(units, min(opts.workers, len(units)), progress)
                if jobs:
                    progress.log(f"timing prefill and decode of {len(jobs)} designs, interleaved "
                                 "round by round")
                    time_throughput(jobs, opts.device, progress.log)
                del jobs
        write_tables(opts.out, console if show_tables else None)
    return opts.out


def write_tables(out: Path, console: Console | None = None) -> None:
    records = ResultsFile(out / "results.jsonl").load()
    table = roadmap_table(records)
    (out / "roadmap.csv").write_text(table.to_csv())
    (out / "roadmap.md").write_text(table.to_markdown())
    ext = extended_table(records)
    (out / "roadmap_extended.csv").write_text(ext.to_csv())
    (out / "roadmap_extended.md").write_text(ext.to_markdown())
    picture = roadmap_plot(records, out / "roadmap.png")
    if console is not None:
        print_table(table, console, title=f"Table 1 layout ({out / 'roadmap.md'})")
        compact = ["Configuration", "Decode (tok/s)", "Decode vs Llama", "Paper throughput vs Llama",
                   "Cache (MB)", "Cache vs Llama", "Paper cache vs Llama"]
        print_table(ext, console, title=f"Beside the paper ({out / 'roadmap_extended.md'})",
                    columns=compact)
        console.print(f"wrote {picture}")


def print_table(table: Any, console: Console, title: str = "",
                columns: list[str] | None = None) -> None:
    from rich.table import Table as RichTable

    frame = table.display_frame()
    if columns is not None:
        frame = frame[columns]
    rt = RichTable(title=title, show_lines=False)
    for i, column in enumerate(frame.columns):
        if i == 0:  # a design's name is never cut: other columns wrap instead
            rt.add_column(column, no_wrap=True, min_width=max(len(str(v)) for v in frame[column]))
        else:
            rt.add_column(column)
    for idx, row in enumerate(frame.itertuples(index=False)):
        cells = [str(c) for c in row]
        if idx in table.section_rows:
            rt.add_row(f"[bold]{cells[0]}[/]", *[""] * (len(cells) - 1))
        else:
            rt.add_row(*cells)
    console.print(rt)
    for i, note in enumerate(table.footnotes, 1):
        console.print(f"[dim]{i}. {note}[/]")


def default_out() -> Path:
    return Path(os.environ.get("HYMBA_BENCH_OUT", "runs/latest"))
