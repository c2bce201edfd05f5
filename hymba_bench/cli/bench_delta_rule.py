"""`hymba-bench bench-delta-rule`: the gated delta rule's chunked form against its loop."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hymba_bench.cli.common import JsonOpt, app, console
from hymba_bench.cli.render import print_timings


@app.command("bench-delta-rule")
def bench_delta_rule_cmd(
    length: Annotated[int, typer.Option(min=1, help="Sequence length.")] = 8192,
    heads: Annotated[int, typer.Option(min=1, help="Heads.")] = 16,
    head_dim: Annotated[int, typer.Option(min=1, help="Head width (K = V).")] = 64,
    chunk_size: Annotated[int, typer.Option(min=1, help="Chunk length (32: fastest on a CPU at "
                                                        "these sizes).")] = 32,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats (median reported).")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark the gated delta rule's chunked form against its recurrent loop."""
    from hymba_bench.bench.profile import bench_delta_rule

    with console.status("timing the gated delta rule (the recurrent loop is slow) ..."):
        result = bench_delta_rule(batch, heads, head_dim, length, chunk_size, repeats=repeats)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    shape, m = result["shape"], result["machine"]
    console.print(f"gated delta rule fp32, batch {shape['batch']}, {shape['heads']} heads of "
                  f"{shape['head_dim']}, length {shape['length']}, chunk {shape['chunk_size']} on "
                  f"{m['cpu']} ({m['threads']} threads)")
    print_timings(result, console)
    compiled = result["cpu_kernel_vs_loop"]
    console.print(f"chunked vs the loop: {result['chunked_vs_loop']:.1f}x (target >= 5x); "
                  + (f"the compiled CPU path (the dispatch's) vs the loop: {compiled:.1f}x; "
                     if compiled is not None else "")
                  + f"max rel. diff {result['max_rel_err']:.1e}")
    if result["unstable"]:
        console.print(f"unstable (spread or load): {', '.join(result['unstable'])}")
