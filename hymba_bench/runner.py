"""`hymba-bench run`: every variant through every stage, each figure written as soon as it exists.

Stages, in order: `cache` (parameters, allocated vs analytic cache bytes, paper-convention MB),
`throughput` (prefill and decode tokens/s, peak memory), `accuracy` (proxy training under the
profile's shared budget, then lm-eval; see `hymba_bench.accuracy`).
With `resume`, a (variant, metric) already in results.jsonl is not measured again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hymba_bench.errors import HymbaBenchError
from hymba_bench.registry import ResolvedVariant, get_profile, get_variant, names, resolve, variants
from hymba_bench.results import ResultsFile, base_context, make_record
from hymba_bench.table import extended_table, roadmap_table

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


def allocated_cache_bytes(cfg: Any, seq: int) -> int:
    """Bytes of a real FP16 batch-1 cache for `seq` tokens; an error if the formula disagrees."""
    import torch

    from hymba_bench.cache import InferenceCache, cache_bytes

    measured = InferenceCache(cfg, 1, seq, torch.float16, "cpu").nbytes()
    analytic = cache_bytes(cfg, 1, seq, torch.float16)
    if measured != analytic:
        raise MeasurementError(f"{cfg.name}: allocated cache holds {measured} bytes but the "
                               f"formula gives {analytic}")
    return measured


def measure_cache(rv: ResolvedVariant, device: str) -> dict[str, tuple[float, dict[str, Any]]]:
    import torch

    from hymba_bench.cache import cache_mb_paper
    from hymba_bench.model.lm import HybridLM

    cfg, seq = rv.config, rv.info["cache_seq_len"]
    with torch.device("meta"):
        params = HybridLM(cfg).num_parameters()
    extra = {"seq_len": seq, "batch": 1, "dtype": "float16"}
    measured = allocated_cache_bytes(cfg, seq)
    out: dict[str, tuple[float, dict[str, Any]]] = {
        "params": (params, {}),
        "cache_bytes": (measured, extra),
        "cache_bytes_analytic": (measured, extra),  # equal, or allocated_cache_bytes raised
        "cache_mb": (cache_mb_paper(cfg, seq), extra),
    }
    if device.startswith("cuda"):
        out["cache_bytes_device"] = (_device_cache_bytes(cfg, seq, device), extra)
    return out


def _device_cache_bytes(cfg: Any, seq: int, device: str) -> int:
    """The cache's footprint on the GPU as the allocator sees it (block rounding included)."""
    import torch

    from hymba_bench.cache import InferenceCache

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    cache = InferenceCache(cfg, 1, seq, torch.float16, device)
    torch.cuda.synchronize(device)
    used = torch.cuda.memory_allocated(device) - before
    del cache
    return int(used)


def measure_throughput(rv: ResolvedVariant, device: str, record: Callable[..., None],
                       wanted: set[str], log: Callable[[str], None],
                       overrides: dict[str, Any] | None = None) -> None:
    import torch

    from hymba_bench.model.lm import HybridLM
    from hymba_bench.throughput import (
        decode_bytes_per_step,
        decode_throughput,
        device_bandwidth,
        halve_on_oom,
        prefill_throughput,
        roofline_pct,
        settings_from_profile,
    )

    dev = torch.device(device)
    if not rv.profile.bench:
        raise HymbaBenchError(f"{rv.profile.path}: bench: the profile has no throughput settings")
    settings = settings_from_profile(rv.profile.bench, dev, overrides)
    torch.manual_seed(0)
    with dev:
        model = HybridLM(rv.config)
    model = model.to(settings.torch_dtype).eval()
    common = {"context": settings.context, "seq_len": settings.context,
              "gen_tokens": settings.gen_tokens, "dtype": settings.dtype,
              "warmup": settings.warmup, "repeats": settings.repeats}

    def halved(old: int, new: int) -> None:
        log(f"{rv.config.name}: out of memory at batch {old}, retrying at {new}")

    if "prefill_tok_s" in wanted:
        res, batch = halve_on_oom(lambda b: prefill_throughput(model, settings, b),
                                  settings.prefill_batch, halved)
        record("prefill_tok_s", res.tok_s, batch=batch, requested_batch=settings.prefill_batch,
               timing=res.timing.as_dict(), spread=res.timing.spread, **common)
    if wanted & {"decode_tok_s", "peak_memory_bytes", "decode_roofline_pct"}:
        dec, batch = halve_on_oom(lambda b: decode_throughput(model, settings, b),
                                  settings.batch, halved)
        extra = {"batch": batch, "requested_batch": settings.batch, **common}
        record("decode_tok_s", dec.tok_s, timing=dec.timing.as_dict(), spread=dec.timing.spread,
               decode_mode=dec.mode, decode_probe_ms=dec.probe_ms, **extra)
        record("peak_memory_bytes", dec.peak_memory_bytes, memory_source=dec.memory_source,
               peak_memory_nvml_net_bytes=dec.nvml_net_bytes, stage_measured="decode", **extra)
        moved = decode_bytes_per_step(rv.config, model.num_parameters(), batch, settings.context,
                                      settings.torch_dtype)
        bandwidth = device_bandwidth(device)
        record("decode_roofline_pct", roofline_pct(dec.tok_s, batch, moved, bandwidth),
               decode_bytes_per_step=moved, bandwidth_bytes_s=bandwidth,
               roofline_tok_s=batch * bandwidth / moved, decode_mode=dec.mode, **extra)


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
    budget, paper_data = None, False
    if "accuracy" not in opts.skip:  # bad budgets and data dirs fail before anything is written
        from hymba_bench.accuracy import AccuracyBudget, hub_reachable, use_data_dir

        budget = AccuracyBudget.from_profile(get_profile(opts.profile), opts.train)
        use_data_dir(opts.data_dir)
        paper_data = opts.data_dir is not None or hub_reachable()
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

    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} stages"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("measuring", total=len(resolved) * len(stages))
        for rv in resolved:
            name = rv.config.name
            vctx = {**context, "profile": opts.profile, "table_label": rv.info["table_label"],
                    "table_section": rv.info["table_section"],
                    "design_reason": rv.info["design_reason"],
                    "order": rv.variant.keys.get("order", 1000),
                    "variant_file": str(rv.variant.path)}

            def record(metric: str, value: float, name: str = name, vctx: dict = vctx,
                       **extra: Any) -> None:
                results.append(make_record(name, metric, value, vctx, **extra))

            for stage in stages:
                progress.update(task, description=f"{name}: {stage}")
                wanted = {m for m in STAGE_METRICS[stage] if (name, m, opts.profile) not in done}
                if stage == "cache" and wanted:
                    for metric, (value, extra) in measure_cache(rv, opts.device).items():
                        if metric in wanted or metric not in STAGE_METRICS["cache"]:
                            record(metric, value, **extra)
                elif stage == "throughput" and wanted:
                    measure_throughput(rv, opts.device, record, wanted, progress.console.print,
                                       opts.bench)
                elif stage == "accuracy" and wanted:
                    from hymba_bench.accuracy import measure_accuracy

                    assert budget is not None
                    steps = progress.add_task(f"{name}: training", total=budget.steps)

                    def on_step(step: int, loss: float, steps: Any = steps, name: str = name) -> None:
                        progress.update(steps, completed=step,
                                        description=f"{name}: training, loss {loss:.2f}")

                    measure_accuracy(rv, opts.out, opts.device, budget, record, wanted, on_step,
                                     paper_data)
                    progress.remove_task(steps)
                progress.advance(task)
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
    if console is not None:
        print_table(table, console, title=f"Table 1 layout ({out / 'roadmap.md'})")
        compact = ["Configuration", "Decode (tok/s)", "Decode vs Llama", "Paper throughput vs Llama",
                   "Cache (MB)", "Cache vs Llama", "Paper cache vs Llama"]
        print_table(ext, console, title=f"Beside the paper ({out / 'roadmap_extended.md'})",
                    columns=compact)


def print_table(table: Any, console: Console, title: str = "",
                columns: list[str] | None = None) -> None:
    from rich.table import Table as RichTable

    frame = table.display_frame()
    if columns is not None:
        frame = frame[columns]
    rt = RichTable(*frame.columns, title=title, show_lines=False)
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
