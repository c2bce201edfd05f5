"""`hymba-bench sweep`: decode throughput and cache size against context length, with plots.

Records go to DIR/sweep.jsonl as they are measured (resumable, keyed by variant, metric and
context); DIR/sweep_throughput.png and DIR/sweep_cache.png show where each design's curve bends:
full attention's cache grows linearly with context and its decode slows with it, a sliding
window flattens both once the context passes W, and an SSM stays flat throughout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hymba_bench.api.metrics import METRICS
from hymba_bench.api.run import Reporter, Silent, Stage
from hymba_bench.bench.stages import ContextStage
from hymba_bench.bench.throughput import check_fits
from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.plots import save_figure
from hymba_bench.results.records import RecordSet, RunDir
from hymba_bench.runner import RunOptions, measure
from hymba_bench.settings import bench_settings


def parse_seq_lens(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HymbaBenchError(f"expected comma-separated integers, got {text!r}",
                              param="seq_lens") from None
    if not values or any(v <= 0 for v in values):
        raise HymbaBenchError(f"expected positive integers, got {text!r}", param="seq_lens")
    return sorted(set(values))


def sweep(opts: RunOptions, seq_lens: list[int], report: Reporter | None = None) -> list[Path]:
    """Every design at every context: a run (`runner.measure`) whose stages are one
    `ContextStage` per length, into `opts.out` as a sweep directory; then the plots, their
    paths. `opts.skip`, `data_dir` and the training settings do not apply."""
    report = report or Silent()
    if not seq_lens or any(s <= 0 for s in seq_lens):
        raise HymbaBenchError(f"expected positive integers, got {seq_lens!r}", param="seq_lens")
    resolved = [resolve(n, opts.profile, opts.variant_files) for n in opts.variants]
    dev = torch.device(opts.device)
    bench = {}  # each design's bench settings, resolved once
    for rv in resolved:  # bad --batch / --decode, or a context that cannot fit, fail before work
        s = bench[rv.config.name] = bench_settings(rv.profile, dev, opts.bench)
        check_fits(rv.config, 1, max(seq_lens) + s.gen_tokens, s.torch_dtype, dev)
    stages: list[Stage] = [ContextStage(seq, bench, opts.device) for seq in sorted(set(seq_lens))]
    paths = measure(RunDir(opts.out, "sweep"), resolved, stages, opts, report,
                    finish=lambda run_dir, records: plot(records, run_dir), finish_interrupted=False)
    return paths or []


def plot(records: RecordSet, run_dir: RunDir) -> list[Path]:
    """Two PNGs: decode tokens/s and cache bytes against context, one line per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not records.metrics():
        return []
    frame = records.frame().drop_duplicates(["variant", "metric", "context"], keep="last")
    paths = []
    # the metric, its plot, log scale, and what the cache's figure is (batch 1, FP16, allocated)
    specs = [("decode_tok_s", "sweep_throughput", False, METRICS["decode_tok_s"].label),
             ("cache_bytes", "sweep_cache", True, "cache at batch 1, FP16 (bytes, allocated)")]
    for metric, filename, logy, ylabel in specs:
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
        paths.append(save_figure(fig, run_dir.plot(filename)))
    return paths
