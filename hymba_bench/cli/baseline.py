"""`hymba-bench baseline`: an efficiency baseline from a run, for `regress`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hymba_bench.cli.common import app, console
from hymba_bench.files import write_atomic


@app.command()
def baseline(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding results.jsonl.")],
    out: Annotated[Path, typer.Option(help="Baseline JSON to write.")],
    reference: Annotated[str, typer.Option(help="Design throughput is compared against.")] = "llama",
    allow_unstable: Annotated[bool, typer.Option(
        help="Accept throughput figures marked unstable (every later check is held to them).")] = False,
) -> None:
    """Write an efficiency baseline (exact metrics, throughput, machine) from a run."""
    from hymba_bench.bench.regress import make_baseline

    data = make_baseline(run_dir, reference, allow_unstable)
    write_atomic(out, json.dumps(data, indent=2) + "\n")
    console.print(f"baseline of {len(data['variants'])} designs written to {out}")
