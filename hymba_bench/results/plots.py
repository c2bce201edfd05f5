"""The roadmap at a glance: decode throughput against cache size, ours beside the paper's.

Both axes are ratios to a reference design measured in the same run (Llama for the roadmap, the
first design for `compare`), and the paper's points are ratios to its own Llama: a tiny CPU run
and the paper's A100 figures can share a plot only as ratios. Recall, where measured, is in each
point's label. A point whose throughput was timed unstably is drawn as a cross and its label
marked †, as the tables mark it. Labels are placed where they overlap no other label or point.
With nothing to plot (an accuracy-only run), no picture is written. Context-length sweeps have
their own plots (`sweep.plot`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from hymba_bench.api.metrics import METRICS
from hymba_bench.files import write_atomic
from hymba_bench.results.records import RecordSet
from hymba_bench.results.tables import BASELINE, UNSTABLE, measured, paper_reference


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG, written atomically (never through a link), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def roadmap_plot(records: RecordSet, path: Path, designs: list[str] | None = None) -> Path | None:
    """The picture at `path`, or None (nothing written) when no design has both figures."""
    current = measured(records)
    shown = [v for v in current.variants() if designs is None or v in designs]
    get = records.value
    reference = designs[0] if designs else BASELINE
    x_metric, y_metric = "decode_tok_s", "cache_bytes"
    base_tps, base_cache = get(reference, x_metric), get(reference, y_metric)
    points = []
    for name in shown:
        tps, cache = get(name, x_metric), get(name, y_metric)
        if not any(math.isnan(x) for x in (tps, cache, base_tps, base_cache)):
            points.append((name, tps / base_tps, cache / base_cache))
    if not points:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    paper = paper_reference().set_index("configuration")
    p_base = paper.loc["Transformer (Llama)"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    labels: list[tuple[str, float, float]] = []
    hollow: list[tuple[float, float]] = []
    any_unstable = any_paper = False
    for k, (name, x, y) in enumerate(points):
        color = f"C{k % 10}"
        timing = records.get(name, x_metric)
        unstable = bool(timing is not None and timing.get("unstable"))
        any_unstable |= unstable
        if unstable:
            ax.scatter(x, y, s=70, marker="X", color=color, zorder=3)
        else:
            ax.scatter(x, y, s=60, color=color, zorder=3)
        recall = get(name, "recall_pct")  # in the label
        labels.append((name + ("" if math.isnan(recall) else f" ({recall:.0f}% recall)")
                       + (UNSTABLE if unstable else ""), x, y))
        table_label = current.placement(name).get("table_label")
        if designs is None and table_label in paper.index:  # the paper's point, paired
            any_paper = True
            p = paper.loc[table_label]
            px = p["throughput_tok_s"] / p_base["throughput_tok_s"]
            py = p["cache_mb"] / p_base["cache_mb"]
            ax.scatter(px, py, s=60, facecolors="none", edgecolors=color, zorder=2)
            hollow.append((px, py))
            ax.plot([x, px], [y, py], color=color, linewidth=0.7, alpha=0.5, zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{_words(x_metric)}, x {reference}")
    ax.set_ylabel(f"{_words(y_metric)}, x {reference}")
    first = current[0]
    ax.set_title(f"{len(points)} designs, {first.profile} profile on {first.get('device', '')}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    legend = [Line2D([], [], marker="o", linestyle="", color="grey", label="this run")]
    if any_unstable:
        legend.append(Line2D([], [], marker="X", linestyle="", color="grey",
                             label=f"this run, throughput unstable ({UNSTABLE.strip()})"))
    if any_paper:
        legend.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                             color="grey", label="the paper (A100), joined to our point"))
    ax.legend(handles=legend, fontsize=8, loc="best")
    fig.tight_layout()
    _place_labels(fig, ax, labels, hollow)
    return save_figure(fig, path)


def _words(metric: str) -> str:
    """A metric's axis words without their unit ("decode throughput"): a ratio has none."""
    return METRICS[metric].label.split(" (")[0]


# Offsets (points) tried in turn for a label: beside the dot first, then further out, all round.
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3, 4, 5, 6, 8) for dx, dy in
            ((6, 4), (6, -11), (-6, 4), (-6, -11), (0, 12), (0, -18), (6, 14), (-6, -20))]


def _place_labels(fig: Any, ax: Any, labels: list[tuple[str, float, float]],
                  others: list[tuple[float, float]]) -> None:
    """Each label at the first offset where its box stays inside the axes and overlaps no placed
    label and no dot, ours or the paper's (a greedy placement: enough for the dozen points of a
    roadmap). Where no offset is free, the one overlapping least is kept."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y in [(x, y) for _, x, y in labels] + others:  # the dots themselves, as small boxes
        cx, cy = ax.transData.transform((x, y))
        taken.append((cx - 5, cy - 5, cx + 5, cy + 5))
    for text, x, y in labels:
        best: tuple[float, tuple[float, float, float, float], Any] | None = None
        for dx, dy in _OFFSETS:
            note = ax.annotate(text, (x, y), fontsize=8, xytext=(dx, dy),
                               textcoords="offset points", ha="left" if dx >= 0 else "right",
                               arrowprops={"arrowstyle": "-", "linewidth": 0.4, "alpha": 0.5}
                               if abs(dx) > 6 or abs(dy) > 14 else None)
            box = note.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            outside = (max(0.0, frame.x0 - box.x0) + max(0.0, box.x1 - frame.x1)
                       + max(0.0, frame.y0 - box.y0) + max(0.0, box.y1 - frame.y1))
            cost = sum(_overlap_area(rect, t) for t in taken) + 1e3 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[2].remove()
                best = (cost, rect, note)
            else:
                note.remove()
            if cost == 0:
                break
        assert best is not None
        taken.append(best[1])


def _overlap_area(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

