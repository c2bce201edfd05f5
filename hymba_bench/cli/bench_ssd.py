"""`hymba-bench bench-ssd`: Mamba-2's chunked SSD against its per-step loop."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hymba_bench.cli.common import JsonOpt, app, console
from hymba_bench.cli.render import print_timings


@app.command("bench-ssd")
def bench_ssd_cmd(
    length: Annotated[int, typer.Option(min=1, help="Sequence length.")] = 8192,
    heads: Annotated[int, typer.Option(min=1, help="Mamba-2 heads.")] = 16,
    head_dim: Annotated[int, typer.Option(min=1, help="Head width P.")] = 64,
    state: Annotated[int, typer.Option(min=1, help="State size N.")] = 64,
    chunk_size: Annotated[int, typer.Option(min=1, help="Chunk length Q (32: fastest on a CPU "
                                                        "at these sizes).")] = 32,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats (median reported).")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark Mamba-2's chunked SSD against its per-step loop and Mamba-1's CPU scan."""
    from hymba_bench.bench.profile import bench_ssd

    with console.status("timing SSD (the per-step loop is slow) ..."):
        result = bench_ssd(batch, heads, head_dim, state, length, chunk_size, repeats=repeats)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    shape, m = result["shape"], result["machine"]
    console.print(f"SSD fp32, batch {shape['batch']}, {shape['heads']} heads of {shape['head_dim']}, "
                  f"state {shape['state']}, length {shape['length']}, chunk {shape['chunk_size']} "
                  f"on {m['cpu']} ({m['threads']} threads)")
    print_timings(result, console)
    console.print(f"chunked vs its loop: {result['chunked_vs_loop']:.1f}x (target >= 10x); "
                  f"vs Mamba-1's scan at the same width: {result['chunked_vs_mamba1']:.2f}x "
                  f"(target >= 1); max rel. diff {result['max_rel_err']:.1e}")
    if result["unstable"]:
        console.print(f"unstable (spread or load): {', '.join(result['unstable'])}")
