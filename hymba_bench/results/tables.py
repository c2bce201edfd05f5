"""Table 1's layout: results records -> pandas tables -> CSV / Markdown / JSON.

`roadmap_table` has exactly the paper's columns, its row labels and section rows; a cell with no
measurement is "—" and a footnote says why. `extended_table` puts the paper's own figures and the
ratios to Llama beside ours.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pandas as pd

from hymba_bench.api.metrics import METRICS, Format, fmt
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import PAPER_RECALL, Record, RecordSet

COLUMNS = [
    "Configuration",
    "Commonsense Reasoning (%)",
    "Recall (%)",
    "Throughput (token/sec)",
    "Cache Size (MB)",
    "Design Reason",
]
# which metric fills which of Table 1's columns (its declaration names the column)
CELLS = {c: m for c in COLUMNS for m in METRICS.values() if m.paper_column == c}
# the columns the extended and compare tables show a metric in
SHOWN = {m.column: m for m in METRICS.values() if m.column}
SECTIONS = {
    "ablation": "Ablations ({profile} profile)",
    "scaling": "Scaling ({profile} profile, larger size)",
    "other": "Other designs ({profile} profile)",
}
EMPTY = "—"
UNSTABLE = " †"  # after a figure whose timing could not be trusted (see timing.py)
BASELINE = "llama"


@dataclass
class Table:
    frame: pd.DataFrame  # numeric cells, NaN where empty; section rows have only Configuration
    footnotes: list[str] = field(default_factory=list)
    section_rows: list[int] = field(default_factory=list)
    flagged: set[tuple[int, str]] = field(default_factory=set)  # (row, column) marked UNSTABLE
    spread: dict[tuple[int, str], float] = field(default_factory=dict)  # shown as "± sd"
    # column -> the metric it shows (or a ratio of): its format, and the unstable marks
    sources: dict[str, str] = field(default_factory=dict)
    formats: dict[str, Format] = field(default_factory=dict)  # other columns' formats

    def format_of(self, column: str) -> Format:
        if column in self.formats:
            return self.formats[column]
        source = self.sources.get(column)
        return METRICS[source].format if source in METRICS else "number"

    def display_frame(self) -> pd.DataFrame:
        out = self.frame.astype(object).copy()
        for idx in range(len(out)):
            is_section = idx in self.section_rows
            for col in out.columns:
                value = out.iat[idx, out.columns.get_loc(col)]
                if isinstance(value, float) and math.isnan(value):
                    out.iat[idx, out.columns.get_loc(col)] = "" if is_section else EMPTY
                elif isinstance(value, float):
                    mark = UNSTABLE if (idx, col) in self.flagged else ""
                    sd = self.spread.get((idx, col))
                    form = self.format_of(col)
                    spread = f" ± {fmt(form, sd)}" if sd is not None else ""
                    out.iat[idx, out.columns.get_loc(col)] = fmt(form, value) + spread + mark
        return out

    def to_csv(self) -> str:
        """For programs: one row per design with its section as a column, numbers as numbers
        (ratios too), empty cells where nothing was measured; `pd.read_csv` gives float columns.
        Footnotes stay in the Markdown."""
        frame = self.frame.copy()
        if self.section_rows:
            titles = frame.iloc[:, 0].where(frame.index.isin(self.section_rows)).ffill()
            frame.insert(0, "Section", titles)
            frame = frame.drop(index=self.section_rows)
        buf = io.StringIO()
        frame.to_csv(buf, index=False, na_rep="")
        return buf.getvalue()

    def to_markdown(self) -> str:
        frame = self.display_frame()
        header = "| " + " | ".join(frame.columns) + " |"
        rule = "|" + "|".join("---" for _ in frame.columns) + "|"
        lines = [header, rule]
        for idx, row in enumerate(frame.itertuples(index=False)):
            cells = [str(c) for c in row]
            if idx in self.section_rows:
                cells[0] = f"**{cells[0]}**"
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"{i}. {note}" for i, note in enumerate(self.footnotes, 1)]
        return "\n".join(lines + (["", *notes] if notes else [])) + "\n"

    def to_json(self) -> str:
        rows = []
        for idx, row in self.frame.iterrows():
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in row.items()} | {"section_row": idx in self.section_rows})
        return json.dumps({"rows": rows, "footnotes": self.footnotes}, indent=2)


def measured(records: RecordSet) -> RecordSet:
    """The latest measurements, all of one profile on one device; an error when there are none,
    or when they mix several (one table compares designs measured alike)."""
    current = records.current()
    if not current:
        raise HymbaBenchError("no measurements in the results file")
    groups = Counter((r.profile, str(r.get("device", ""))) for r in current)
    if len(groups) > 1:
        listed = "; ".join(f"profile {p!r} on {d or 'an unnamed device'}: {n} figures"
                           for (p, d), n in groups.most_common())
        raise HymbaBenchError(f"the records mix {len(groups)} profiles or devices ({listed}), which "
                              "one table cannot compare: choose one with `profile` and `device`")
    return current


def select(records: RecordSet, profile: str | None = None, device: str | None = None) -> RecordSet:
    """The records of one profile and/or device (a substring of its name), notes of the whole
    run kept; an error naming what there is when nothing matches."""
    def keep(r: Record) -> bool:
        if r.kind != "metric" and r.variant == "*":
            return True
        return (profile is None or r.profile == profile) and \
            (device is None or device.lower() in str(r.get("device", "")).lower())

    chosen = records.where(keep)
    if not chosen.metrics():
        there = sorted({(r.profile, str(r.get("device", ""))) for r in records.metrics()})
        raise HymbaBenchError("no records match; the file has " + ", ".join(
            f"profile {p!r} on {d!r}" for p, d in there), param="profile" if profile else "device")
    return chosen


def _flag_unstable(table: Table, records: RecordSet, rows: dict[str, int]) -> None:
    """Mark the cells of timed figures recorded as unstable (every column showing the metric,
    or a ratio of it: `table.sources`) and say why in a footnote. rows: variant -> row index."""
    reasons = []
    for r in records.current():
        columns = [c for c, m in table.sources.items() if m == r.metric]
        if not columns or r.variant not in rows or not r.get("unstable"):
            continue
        for col in columns:
            table.flagged.add((rows[r.variant], col))
        reasons.append(f"{r.variant} {r.metric}: {r.get('unstable')}")
    if reasons:
        table.footnotes.append(f"{UNSTABLE.strip()} unstable, do not trust the figure (re-run on an "
                               f"idle machine; ratios within a run are safer): " + "; ".join(reasons))


def _modes(decode: list[Record]) -> str:
    """How the decode steps ran, e.g. 'eagerly' or 'as a CUDA graph (3 rows), eagerly (1 row)'."""
    words = {"eager": "eagerly", "compiled": "compiled (torch.compile, fullgraph)",
             "graph": "as a replayed CUDA graph"}
    counts = Counter(r.get("decode_mode", "eager") for r in decode)
    if len(counts) == 1:
        mode = next(iter(counts))
        return words.get(mode, mode)
    return ", ".join(f"{words.get(m, m)} ({n} row{'s' if n > 1 else ''})"
                     for m, n in counts.most_common())


def _conventions(records: RecordSet) -> list[str]:
    notes = []
    current = records.current()
    decode = [r for r in current if r.metric == "decode_tok_s"]
    if decode:
        r = decode[-1]
        notes.append(
            f"Throughput (token/sec): decode (generation) tokens/s = batch x generated tokens / "
            f"decode time, with the cache already holding {r.get('context', 0)} tokens; batch "
            f"{r.get('batch', 0)}, {r.get('gen_tokens', 0)} generated tokens, {r.get('dtype')}, "
            f"median of {r.get('repeats', 0)} repeats, on {r.get('device')}; decode step "
            f"run {_modes(decode)}. Prefill tokens/s and each row's percentage of the memory-"
            "bandwidth roofline are in the extended table."
        )
    common = [r for r in current if r.metric == "commonsense_pct" and r.get("eval_tasks")]
    if common:
        notes.append(_commonsense_note(common[-1], current))
    recall = [r for r in current if r.metric == "recall_pct"]
    if recall:
        notes.append(_seeds_note(recall))
    if any(r.get("recall_source") not in (None, PAPER_RECALL) for r in recall):
        r = recall[-1]
        notes.append(
            f"Recall (%): a proxy, not the paper's SWDE / SQuAD-C (their data was not reachable): "
            f"synthetic associative recall ({r.get('recall_pairs', 0)} key-value pairs, "
            f"{r.get('n', 0)} queries per design, greedy, exact value) after proxy training of "
            f"{r.get('train_steps', 0)} steps x {r.get('train_batch', 0)} sequences, the "
            "same budget for every design; standard errors are in the extended table. Proxy scale "
            "is not paper scale: the ranking is the finding, not the numbers."
        )
    cache = [r for r in current if r.metric == "cache_mb"]
    if cache:
        seq = sorted({int(r.get("seq_len")) for r in cache if r.get("seq_len") is not None})
        notes.append(
            "Cache Size (MB): the paper's convention, FP16, batch 1, MB = 10^6 bytes, meta tokens "
            f"not counted, at {', '.join(map(str, seq))} tokens; exact allocated bytes (meta tokens "
            "included) are in the extended table and results.jsonl."
        )
    return notes


TASK_NAMES = {"lambada_openai": "LAMBADA", "piqa": "PIQA", "arc_easy": "ARC-Easy",
              "arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag", "winogrande": "Winogrande",
              "truthfulqa_mc2": "TruthfulQA (MC2)", "social_iqa": "Social IQa"}


def _commonsense_note(r: Record, current: RecordSet) -> str:
    """Which of the paper's commonsense tasks the column averages, from which data, how much of
    it, and where chance lies."""
    from hymba_bench.accuracy.evaluate import METRIC, PAPER_TASKS, task_metric
    from hymba_bench.accuracy.task_data import ABSENT, LOCAL, PACKAGE

    ran = str(r.get("eval_tasks")).split(",")
    splits = dict(part.split(":", 1) for part in str(r.get("eval_split", "")).split(",") if ":" in part)
    chances = {c.metric: c.get("chance") for c in current
               if c.variant == r.variant and c.get("chance") is not None}
    tasks, known = [], []
    for task in ran:
        chance = chances.get(task_metric(task))
        known.append(chance)
        at = f", chance {100 * chance:.3g}" if chance is not None else ""
        tasks.append(f"{TASK_NAMES.get(task, task)} ({METRIC.get(task, 'acc')}, "
                     f"{splits.get(task, '?')}{at})")
    absent = [t for t in PAPER_TASKS["commonsense_pct"] if t not in ran]
    offline = str(r.get("eval_source", "")).startswith(PACKAGE)
    why = "; ".join(f"{TASK_NAMES.get(t, t)} not run "
                    f"({ABSENT[t] if offline and t in ABSENT else 'its data was not reachable'})"
                    for t in absent)
    stand_in = [TASK_NAMES.get(t, t) for t in ran
                if t in LOCAL and splits.get(t) not in (None, LOCAL[t].default_split)]
    items = r.get("eval_items")
    sample = (f"each task on {items} items drawn by seed {r.get('eval_items_seed')} from its split "
              "(the same items for every design)" if items else "each task on its whole split")
    near = (f" Chance for the mean is {100 * sum(known) / len(known):.1f}%, and at proxy scale "  # type: ignore[arg-type]
            "the designs sit near it" if known and all(c is not None for c in known)
            else " At proxy scale the designs sit near chance")
    return (f"Commonsense Reasoning (%): the mean over {len(ran)} of the paper's "
            f"{r.get('eval_tasks_total')} tasks, {', '.join(tasks)}, through lm-eval's own task "
            f"definitions, data from {r.get('eval_source')}; {sample}. {why + '. ' if why else ''}"
            + (f"Validation splits stand in where lm-eval scores the test split "
               f"({', '.join(stand_in)})." if stand_in else "")
            + f"{near}: the column shows the harness measuring the paper's tasks, not a ranking. "
            "Each task's score and standard error are records of their own in results.jsonl "
            "(e.g. piqa_acc).")


def _seeds_note(recall: list[Record]) -> str:
    counts = sorted({int(r.get("seeds")) for r in recall if r.get("seeds") is not None})
    if not counts or counts == [1]:
        return ("Accuracy: one training seed per design (the CPU default, which keeps the run short; "
                "`--seeds N` trains N): the spread across training runs is not "
                "measured, and the standard error in the extended table covers the evaluation "
                "sample only.")
    return (f"Accuracy: mean ± standard deviation across {' or '.join(map(str, counts))} training "
            "seeds per design (how the design trains); the evaluation standard error of the mean "
            "(how many items were asked) is in the extended table.")


def _spreads(table: Table, records: RecordSet, rows: dict[str, int],
             columns: dict[str, str]) -> None:
    """Across-seed standard deviations of the accuracy cells, for the "± sd" display."""
    for variant, row in rows.items():
        for metric, column in columns.items():
            sd = records.number(variant, metric, "seed_sd")
            if not math.isnan(sd):
                table.spread[(row, column)] = sd


def roadmap_table(records: RecordSet) -> Table:
    current = measured(records)
    designs = current.variants()
    why = records.why_missing()
    profiles = [current.placement(v).profile for v in designs]
    profile = next((p for p in profiles if p), "?")
    rows: list[dict[str, Any]] = []
    section_rows: list[int] = []
    footnotes: list[str] = []
    reasons: dict[str, int] = {}
    row_of: dict[str, int] = {}
    for section in SECTIONS:
        members = [current.placement(v) for v in designs
                   if current.placement(v).get("table_section", "other") == section]
        if not members:
            continue
        section_rows.append(len(rows))
        rows.append({"Configuration": SECTIONS[section].format(profile=profile)})
        for v in members:
            row_of[v.variant] = len(rows)
            row: dict[str, Any] = {"Configuration": v.get("table_label") or v.variant,
                                   "Design Reason": v.get("design_reason") or ""}
            for column, m in CELLS.items():
                value = records.value(v.variant, m.name)
                if math.isnan(value):
                    text = why.get((v.variant, m.stage)) or why.get(("*", m.stage)) \
                        or f"{m.stage} not measured in this run"
                    reasons.setdefault(f"{column}: {text}", len(reasons))
                row[column] = value
            rows.append(row)
    for text in reasons:
        footnotes.append(f"{EMPTY} in {text}")
    footnotes += _conventions(records)
    table = Table(pd.DataFrame(rows, columns=COLUMNS), footnotes, section_rows,
                  sources={column: m.name for column, m in CELLS.items()})
    _flag_unstable(table, records, row_of)
    _spreads(table, records, row_of, {"recall_pct": "Recall (%)",
                                      "commonsense_pct": "Commonsense Reasoning (%)"})
    return table


def compare_table(records: RecordSet, designs: list[str]) -> Table:
    """Designs side by side, each figure also as a ratio to the first design; unstable figures
    marked and gaps explained as in Table 1."""
    measured(records)
    get = records.value
    why = records.why_missing()
    first = designs[0]
    rows = []
    reasons: dict[str, None] = {}
    shown = ("params", "decode_tok_s", "prefill_tok_s", "cache_bytes", "cache_mb")
    for name in designs:
        for metric in shown:
            stage = METRICS[metric].stage
            if math.isnan(get(name, metric)):
                text = why.get((name, stage)) or why.get(("*", stage))
                if text:
                    reasons[f"{EMPTY} {name} {metric}: {text}"] = None
    sources: dict[str, str] = {}
    ratio_columns: list[str] = []
    ratios = ("decode_tok_s", "prefill_tok_s", "cache_bytes")  # also as a ratio to the first
    for name in designs:
        row: dict[str, Any] = {"Design": name}
        for metric in shown:
            column = METRICS[metric].column
            assert column is not None
            value, base = get(name, metric), get(first, metric)
            row[column] = value
            sources[column] = metric
            if metric in ratios:
                ratio = f"{column.split(' (')[0]} vs {first}"
                row[ratio] = value / base if base else math.nan
                sources[ratio] = metric
                if ratio not in ratio_columns:
                    ratio_columns.append(ratio)
        rows.append(row)
    table = Table(pd.DataFrame(rows), [*reasons, *_conventions(records)], [], sources=sources,
                  formats=dict.fromkeys(ratio_columns, "ratio"))
    row_of = {name: i for i, name in enumerate(designs)}
    _flag_unstable(table, records, row_of)
    if first in row_of:  # a ratio to an unstable first design is as unstable as it is
        for column in ratio_columns:
            r = records.get(first, sources[column])
            if r is not None and r.get("unstable"):
                table.flagged.update((i, column) for i in row_of.values())
    return table


def paper_reference() -> pd.DataFrame:
    """Table 1 as published (A100, 300M/1.5B), from the copy shipped with the package."""
    text = resources.files("hymba_bench.data").joinpath("hymba_table1.csv").read_text()
    return pd.read_csv(io.StringIO(text))


def _tasks_of(record: Record | None) -> str:
    """"7 of 8": how many of the paper's tasks a suite's mean covers."""
    if record is None or not record.get("eval_tasks"):
        return ""
    return f"{len(str(record.get('eval_tasks')).split(','))} of {record.get('eval_tasks_total')}"


def extended_table(records: RecordSet) -> Table:
    """Ours beside the paper's, with ratios to Llama on both sides."""
    current = measured(records)
    designs = current.variants()
    get = records.value
    paper = paper_reference().set_index("configuration")

    def ratio(a: float, b: float) -> float:
        return a / b if b and not math.isnan(b) else math.nan

    base_tps, base_mb = get(BASELINE, "decode_tok_s"), get(BASELINE, "cache_mb")
    p_base = paper.loc["Transformer (Llama)"]
    rows = []
    for name in designs:
        label = current.placement(name).get("table_label") or name
        p = paper.loc[label] if label in paper.index else None
        tps, mb = get(name, "decode_tok_s"), get(name, "cache_mb")
        row: dict[str, Any] = {
            "Configuration": label,
            "Params": get(name, "params"),
            "Decode (tok/s)": tps,
            "Prefill (tok/s)": get(name, "prefill_tok_s"),
            "Decode roofline (%)": get(name, "decode_roofline_pct"),
            "Cache (bytes)": get(name, "cache_bytes"),
            "Cache (MB)": mb,
            "Commonsense (%)": get(name, "commonsense_pct"),
            "Commonsense SE": records.number(name, "commonsense_pct", "stderr"),
            "Commonsense tasks": _tasks_of(records.get(name, "commonsense_pct")),
            "Recall (%)": get(name, "recall_pct"),
            "Recall SE": records.number(name, "recall_pct", "stderr"),
            "Recall seed SD": records.number(name, "recall_pct", "seed_sd"),
            "Seeds": records.number(name, "recall_pct", "seeds"),
            "Train loss": get(name, "train_loss"),
            "Decode vs Llama": ratio(tps, base_tps),
            "Cache vs Llama": ratio(mb, base_mb),
            "Paper throughput (tok/s)": float(p["throughput_tok_s"]) if p is not None else math.nan,
            "Paper throughput vs Llama": ratio(float(p["throughput_tok_s"]),
                                               float(p_base["throughput_tok_s"]))
            if p is not None else math.nan,
            "Paper cache (MB)": float(p["cache_mb"]) if p is not None else math.nan,
            "Paper cache vs Llama": ratio(float(p["cache_mb"]), float(p_base["cache_mb"]))
            if p is not None else math.nan,
        }
        for column, m in SHOWN.items():  # a metric declared with a column of its own
            row.setdefault(column, get(name, m.name))
        rows.append(row)
    notes = ["Paper figures: Table 1 of Dong et al. (2024), one A100, 300M models (rows to E) and "
             "1.5B (F, G), sequence length 8K, batch 128 halved until it fits."]
    notes += _conventions(records)
    sources = {**{c: m.name for c, m in SHOWN.items()}, "Commonsense SE": "commonsense_pct",
               "Recall SE": "recall_pct", "Recall seed SD": "recall_pct",
               "Decode vs Llama": "decode_tok_s", "Cache vs Llama": "cache_mb"}
    formats: dict[str, Format] = {"Seeds": "count", "Paper cache (MB)": "mb"}
    formats.update(dict.fromkeys(("Decode vs Llama", "Cache vs Llama", "Paper throughput vs Llama",
                                  "Paper cache vs Llama"), "ratio"))
    table = Table(pd.DataFrame(rows), notes, [], sources=sources, formats=formats)
    row_of = {name: i for i, name in enumerate(designs)}
    _flag_unstable(table, records, row_of)
    # the CSV has no † marks: say it in a column of its own
    table.frame["Decode unstable"] = [(i, "Decode (tok/s)") in table.flagged
                                      for i in range(len(table.frame))]
    return table
