"""Tables on the terminal: Table 1's layout and its footnotes, rendered with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table as RichTable

if TYPE_CHECKING:  # pandas: imported by the commands that build a table, not at start
    from hymba_bench.results.records import RunDir
    from hymba_bench.results.tables import Table

COMPACT = ["Configuration", "Decode (tok/s)", "Decode vs Llama", "Paper throughput vs Llama",
           "Cache (MB)", "Cache vs Llama", "Paper cache vs Llama"]


def print_table(table: Table, console: Console, title: str = "",
                columns: list[str] | None = None) -> None:
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


def print_run(run_dir: RunDir, console: Console) -> None:
    """A finished run's tables: Table 1's layout, then the compact comparison with the paper."""
    from hymba_bench.results.tables import extended_table, roadmap_table

    records = run_dir.records()
    tables = {"roadmap": roadmap_table(records), "roadmap_extended": extended_table(records)}
    print_table(tables["roadmap"], console,
                title=f"Table 1 layout ({run_dir.table('roadmap', 'md')})")
    print_table(tables["roadmap_extended"], console,
                title=f"Beside the paper ({run_dir.table('roadmap_extended', 'md')})", columns=COMPACT)
    console.print(f"wrote {run_dir.plot('roadmap')}")


def print_timings(result: dict[str, Any], console: Console) -> None:
    """A kernel benchmark's rows (`bench-ssd`, `bench-delta-rule`): each path's median, min and
    max seconds and its time per token."""
    table = RichTable("path", "median s", "min s", "max s", "us / token")
    for row in result["rows"]:
        table.add_row(row["path"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}",
                      f"{row['max_s']:.3f}", f"{row['us_per_token']:.2f}")
    console.print(table)
