"""`hymba-bench table`: a run's results rendered again as Table 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hymba_bench.cli.common import app
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import RunDir


@app.command()
def table(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding results.jsonl.")],
    format: Annotated[str, typer.Option("--format", help="md, csv or json.")] = "md",
    extended: Annotated[bool, typer.Option(help="Ours beside the paper's figures, with ratios.")] = False,
    profile: Annotated[str | None, typer.Option(
        help="Only this profile's records (a directory holding several).")] = None,
    device: Annotated[str | None, typer.Option(
        help="Only records measured on this device (a part of its name).")] = None,
) -> None:
    """Render a run's results again as Table 1."""
    from hymba_bench.results.tables import extended_table, roadmap_table, select

    if format not in ("md", "csv", "json"):
        raise HymbaBenchError(f"--format: expected md, csv or json, got {format!r}")
    records = RunDir(run_dir).records()
    if profile is not None or device is not None:
        records = select(records, profile, device)
    built = extended_table(records) if extended else roadmap_table(records)
    print({"md": built.to_markdown, "csv": built.to_csv, "json": built.to_json}[format](), end="")
