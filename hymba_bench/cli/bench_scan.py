"""`hymba-bench bench-scan`: the CPU selective-scan paths against the per-step reference loop."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from hymba_bench.cli.common import JsonOpt, app, console
from hymba_bench.errors import HymbaBenchError


@app.command("bench-scan")
def bench_scan_cmd(
    length: Annotated[int, typer.Option(help="Sequence length.")] = 8192,
    channels: Annotated[int, typer.Option(help="SSM channels (d_inner).")] = 512,
    state: Annotated[int, typer.Option(help="SSM state size.")] = 16,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats (median reported).")] = 3,
    backward: Annotated[bool, typer.Option(help="Also time forward+backward (training).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark the CPU selective-scan paths against the per-step reference loop."""
    from hymba_bench.bench.profile import bench_scan

    for key, value in (("--length", length), ("--channels", channels), ("--state", state),
                       ("--batch", batch)):
        if value <= 0:
            raise HymbaBenchError(f"{key}: expected a positive integer, got {value}")
    with console.status("timing selective_scan (the reference loop is slow) ..."):
        result = bench_scan(batch, channels, state, length, repeats, backward=backward)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    shape = result["shape"]
    console.print(f"selective_scan fp32, batch {shape['batch']}, {shape['channels']} channels, "
                  f"state {shape['state']}, length {shape['length']} on {result['machine']['cpu']} "
                  f"({result['machine']['threads']} threads); compiled kernel: {result['cpu_kernel']}")
    table = Table("pass", "path", "median s", "min s", "max s", "vs reference", "max rel. diff")
    for row in result["rows"]:
        table.add_row(row["pass"], row["path"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}",
                      f"{row['max_s']:.3f}", f"{row['speedup_vs_ref']:.1f}x", f"{row['max_rel_err']:.1e}")
    console.print(table)
