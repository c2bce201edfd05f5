"""The roadmap at a glance: decode throughput against cache size, ours beside the paper's.

Both axes are ratios to a reference design measured in the same run (Llama for the roadmap, the
first design for `compare`), and the paper's points are ratios to its own Llama: a tiny CPU run
and the paper's A100 figures can share a plot only as ratios. Recall, where measured, is in each
point's label. Context-length sweeps have their own plots (`sweep.plot`).
"""

from __future__ import annotations

import math
from pathlib import Path

from hymba_bench.results.records import RecordSet
from hymba_bench.results.tables import BASELINE, measured, paper_reference


def roadmap_plot(records: RecordSet, path: Path,
                 designs: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    current = measured(records)
    shown = [v for v in current.variants() if designs is None or v in designs]
    get = records.value
    reference = designs[0] if designs else BASELINE
    base_tps, base_cache = get(reference, "decode_tok_s"), get(reference, "cache_bytes")
    paper = paper_reference().set_index("configuration")
    p_base = paper.loc["Transformer (Llama)"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    plotted = 0
    offsets = [(6, 4), (6, -11), (6, 14), (-6, -11)]  # staggered: close points stay readable
    for name in shown:
        tps, cache = get(name, "decode_tok_s"), get(name, "cache_bytes")
        if any(math.isnan(x) for x in (tps, cache, base_tps, base_cache)):
            continue
        x, y = tps / base_tps, cache / base_cache
        recall = get(name, "recall_pct")
        label = name + ("" if math.isnan(recall) else f" ({recall:.0f}% recall)")
        dx, dy = offsets[plotted % len(offsets)]
        dot = ax.scatter(x, y, s=60, zorder=3)
        ax.annotate(label, (x, y), fontsize=8, xytext=(dx, dy), textcoords="offset points",
                    ha="left" if dx > 0 else "right")
        plotted += 1
        table_label = current.placement(name).get("table_label")
        if designs is None and table_label in paper.index:  # the paper's point, paired
            p = paper.loc[table_label]
            px = p["throughput_tok_s"] / p_base["throughput_tok_s"]
            py = p["cache_mb"] / p_base["cache_mb"]
            color = dot.get_facecolor()[0]
            ax.scatter(px, py, s=60, facecolors="none", edgecolors=color, zorder=2)
            ax.plot([x, px], [y, py], color=color, linewidth=0.7, alpha=0.5, zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"decode throughput, x {reference}")
    ax.set_ylabel(f"cache bytes, x {reference}")
    first = current[0]
    ax.set_title(f"{plotted} designs, {first.profile} profile on {first.get('device', '')}"
                 + ("; hollow: the paper (A100)" if designs is None else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
