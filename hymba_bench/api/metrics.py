"""Every metric a run records, declared once: its unit, which way is better, how a table shows
it, its column, and the stage that measures it.

Stages name the metrics they owe (`owed(stage)`); records take their unit from here; tables,
the plots, the unstable marks and the regression check read the rest. A new metric is its
stage's code and one line below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from hymba_bench.accuracy.evaluate import TASK_METRICS

# how a table shows a value: thousands-separated integer, the paper's MB (one decimal from 10 up,
# else three significant digits), a plain figure (one decimal below 10^4), three significant
# digits (seconds, where one decimal would show 40 ms as 0.0), a ratio ("1.23x")
Format = Literal["count", "mb", "number", "sig3", "ratio"]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    stage: str  # the run stage that measures it
    higher_is_better: bool | None  # None: neither (a property, such as a parameter count)
    format: Format = "number"
    column: str | None = None  # its column in the extended and compare tables
    paper_column: str | None = None  # its column in Table 1's layout
    label: str = ""  # a plot axis's words
    exact: bool = False  # a property of the design: a regression check holds it equal
    timed: bool = False  # a timing: compared within its samples' noise, marked when unstable
    owed: bool = True  # its stage counts it missing until recorded (False: only on some devices
    # or as part of another figure)


PCT = "%"
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("params", "count", "cache", None, "count", column="Params", exact=True),
    Metric("cache_bytes", "bytes", "cache", False, "count", column="Cache (bytes)",
           label="cache bytes (allocated)", exact=True),
    Metric("cache_bytes_analytic", "bytes", "cache", False, "count", exact=True),
    Metric("cache_bytes_device", "bytes", "cache", False, "count", owed=False),
    Metric("cache_mb", "MB (10^6 B, paper convention)", "cache", False, "mb", column="Cache (MB)",
           paper_column="Cache Size (MB)", label="cache (MB, paper convention)"),
    Metric("decode_tok_s", "tokens/s", "throughput", True, column="Decode (tok/s)",
           paper_column="Throughput (token/sec)", label="decode throughput (tokens/s)", timed=True),
    Metric("prefill_tok_s", "tokens/s", "throughput", True, column="Prefill (tok/s)",
           label="prefill throughput (tokens/s)", timed=True),
    Metric("peak_memory_bytes", "bytes", "throughput", False, "count"),
    Metric("decode_roofline_pct", "% of the memory-bandwidth bound", "throughput", True,
           column="Decode roofline (%)"),
    Metric("commonsense_pct", PCT, "accuracy", True, column="Commonsense (%)",
           paper_column="Commonsense Reasoning (%)"),
    Metric("recall_pct", PCT, "accuracy", True, column="Recall (%)", paper_column="Recall (%)",
           label="recall (%)"),
    Metric("recall_synthetic_pct", PCT, "accuracy", True, owed=False),
    Metric("train_loss", "nats/token", "accuracy", False, column="Train loss", owed=False),
    # each paper task's own score (`piqa_acc`), part of its suite's mean
    *(Metric(name, PCT, "accuracy", True, owed=False) for name in TASK_METRICS),
)}
PER_SEED = "_seed"  # a training seed's own figure of a metric (`recall_pct_seed`)


def metric(name: str) -> Metric | None:
    """The declaration of `name` (a seed's own figure, `<metric>_seed`, is its metric's), or None
    for a name no stage records."""
    if name in METRICS:
        return METRICS[name]
    base = METRICS.get(name.removesuffix(PER_SEED))
    return replace(base, name=name, owed=False, column=None, paper_column=None) if base else None


def owed(stage: str) -> tuple[str, ...]:
    """The metrics `stage` owes each design, in declaration order."""
    return tuple(m.name for m in METRICS.values() if m.stage == stage and m.owed)


def unit(name: str) -> str:
    m = metric(name)
    return m.unit if m is not None else ""


def stage_of(name: str) -> str:
    """The stage that measures `name` ("a stage" for a name none declares)."""
    m = metric(name)
    return m.stage if m is not None else "a stage"


def exact() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.exact)


def timed() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.timed)


def fmt(format: Format, value: float) -> str:
    """`value` as a table shows a metric of `format`."""
    if format == "ratio":
        return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.3g}x"
    if format == "count":
        return f"{value:,.0f}"
    if format == "mb":
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if format == "sig3":
        return f"{value:.3g}"
    return f"{value:.1f}" if abs(value) < 1e4 else f"{value:,.0f}"
