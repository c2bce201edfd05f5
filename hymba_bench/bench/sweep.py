"""`hymba-bench sweep`: decode throughput and cache size against context length, with plots.

Records go to DIR/sweep.jsonl as they are measured (resumable, keyed by variant, metric and
context); DIR/sweep_throughput.png and DIR/sweep_cache.png show where each design's curve bends:
full attention's cache grows linearly with context and its decode slows with it, a sliding
window flattens both once the context passes W, and an SSM stays flat throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from hymba_bench.cli.progress import RunProgress
from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import base_context, make_record, run_lock
from hymba_bench.run import allocated_cache_bytes, prepare_out_dir


@dataclass
class SweepOptions:
    variants: list[str]
    seq_lens: list[int]
    profile: str = "tiny"
    out: Path = Path("runs/sweep")
    resume: bool = False
    device: str = "cpu"
    variant_files: list[Path] = field(default_factory=list)
    bench: dict[str, Any] = field(default_factory=dict)


def parse_seq_lens(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HymbaBenchError(f"--seq-lens: expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise HymbaBenchError(f"--seq-lens: expected positive integers, got {text!r}")
    return sorted(set(values))


def sweep(opts: SweepOptions, console: Console | None = None) -> Path:
    import torch

    from hymba_bench.bench.throughput import (
        check_fits,
        decode_throughput,
        halve_on_oom,
        settings_from_profile,
    )
    from hymba_bench.model.cache import cache_mb_paper
    from hymba_bench.model.lm import instantiate

    console = console or Console()
    resolved = [resolve(n, opts.profile, opts.variant_files) for n in opts.variants]
    dev = torch.device(opts.device)
    bench = {}  # each design's bench settings, resolved once
    for rv in resolved:  # bad --batch / --decode, or a context that cannot fit, fail before work
        s = bench[rv.config.name] = settings_from_profile(rv.profile.bench, dev, opts.bench)
        check_fits(rv.config, 1, max(opts.seq_lens) + s.gen_tokens, s.torch_dtype, dev)
    with run_lock(opts.out):
        results = prepare_out_dir(opts.out, opts.resume, "sweep.jsonl")
        done = {(r["variant"], r["metric"], r.get("context")) for r in results.load()}
        context = base_context(opts.device)
        with RunProgress(console, len(resolved), len(opts.seq_lens), unit="contexts") as progress:
            for index, rv in enumerate(resolved, 1):
                cfg = rv.config
                settings = bench[cfg.name]
                vctx = {**context, "profile": opts.profile, "table_label": rv.info["table_label"],
                        "window": cfg.sliding_window, "dtype_cache": "float16"}
                model = None
                for seq in opts.seq_lens:
                    progress.start(index, cfg.name, f"context {seq}")
                    if (cfg.name, "cache_bytes", seq) not in done:
                        allocated, _ = allocated_cache_bytes(cfg, seq)  # equal, or it raised
                        results.append(make_record(cfg.name, "cache_bytes", allocated, vctx,
                                                   context=seq, seq_len=seq, batch=1))
                        results.append(make_record(cfg.name, "cache_mb", cache_mb_paper(cfg, seq), vctx,
                                                   context=seq, seq_len=seq, batch=1))
                    if (cfg.name, "decode_tok_s", seq) not in done:
                        if model is None:
                            model = instantiate(cfg, dev, settings.torch_dtype).eval()
                        run_settings = type(settings)(**{**settings.__dict__, "context": seq})
                        res, batch = halve_on_oom(
                            lambda b, s=run_settings, m=model: decode_throughput(m, s, b), settings.batch)
                        results.append(make_record(
                            cfg.name, "decode_tok_s", res.tok_s, vctx, context=seq, seq_len=seq,
                            batch=batch, requested_batch=settings.batch, gen_tokens=settings.gen_tokens,
                            dtype=settings.dtype, repeats=settings.repeats, decode_mode=res.mode,
                            timing=res.timing.as_dict(), spread=res.timing.spread))
                    progress.advance()
        paths = plot(results.load(), opts.out)
    for path in paths:
        console.print(f"wrote {path}")
    return opts.out


def plot(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Two PNGs: decode tokens/s and cache bytes against context, one line per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(records)
    paths = []
    specs = [("decode_tok_s", "decode throughput (tokens/s)", "sweep_throughput.png", False),
             ("cache_bytes", "cache at batch 1, FP16 (bytes, allocated)", "sweep_cache.png", True)]
    for metric, ylabel, filename, logy in specs:
        sub = frame[frame["metric"] == metric]
        if sub.empty:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, rows in sub.groupby("variant", sort=False):
            rows = rows.sort_values("context")
            ax.plot(rows["context"], rows["value"], marker="o", label=variant)
        windows = sorted({int(w) for w in sub.get("window", pd.Series(dtype=float)).dropna()})
        for w in (w for w in windows if w >= sub["context"].min()):  # only inside the data
            ax.axvline(w, color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"W={w}", (w, 1), xycoords=("data", "axes fraction"), fontsize=8,
                        color="grey", xytext=(2, -12), textcoords="offset points")
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        first = sub.iloc[0]
        ax.set_title(f"{ylabel.split(' (')[0]} vs context — {first.get('profile', '')} profile, "
                     f"{first.get('device', '')}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
