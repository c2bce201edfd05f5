"""`hymba-bench regress`: a run checked against a baseline (CI's efficiency check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hymba_bench.cli.common import app, console
from hymba_bench.files import write_atomic

NOT_JUDGED = 3  # the exit status when no throughput check could be judged


@app.command()
def regress(
    baseline: Annotated[Path, typer.Option(help="A baseline JSON (hymba-bench baseline).")],
    current: Annotated[Path, typer.Option(help="The run directory to check.")],
    tolerance: Annotated[float, typer.Option(help="Allowed drop of throughput vs the reference.")] = 0.15,
    abs_tolerance: Annotated[float | None, typer.Option(
        help="Allowed drop of absolute throughput on the same machine (default: --tolerance).")] = None,
    report_path: Annotated[Path | None, typer.Option("--report", help="Write the Markdown here.")] = None,
    retime: Annotated[int, typer.Option(
        min=0, help="Re-time the designs whose figures were timed on a busy machine (with the "
        "reference) up to this many times before giving up.")] = 0,
) -> None:
    """Compare a run with a baseline; exit 1 on a regression, 3 when no throughput check could be
    judged (a busy machine), printing a Markdown report."""
    from hymba_bench.bench.regress import check, report

    with console.status("comparing with the baseline ...") as status:
        cmp = check(baseline, current, tolerance, abs_tolerance, retime,
                    on_retime=lambda busy, k: status.update(
                        f"re-timing {', '.join(busy)} (timed on a busy machine; try {k} of {retime}) ..."))
    text = report(cmp, tolerance, abs_tolerance)
    print(text, end="")
    if report_path is not None:
        write_atomic(report_path, text)
    if cmp.failed:
        raise typer.Exit(1)
    if cmp.judged_nothing:
        raise typer.Exit(NOT_JUDGED)
