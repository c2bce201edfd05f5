"""`hymba-bench sweep`: decode throughput and cache size against context length."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hymba_bench.cli.common import (
    CheckpointsOpt,
    DeviceOpt,
    ProfileOpt,
    ResumeOpt,
    VariantFiles,
    app,
    bench_options,
    console,
    executor_options,
    keeping,
    run_options,
)
from hymba_bench.executors import ExecutorOptions
from hymba_bench.results.records import RunDir
from hymba_bench.settings import BenchOverrides

DEFAULT = "llama,mamba,b-parallel,c-local-global,e-meta-tokens"


@app.command()
@executor_options
@bench_options("batch", "gen_tokens", "repeats", "decode", "decode_kernels")
def sweep(
    variants: Annotated[str | None, typer.Option(
        help="'all' or a comma-separated list of names (default: llama, mamba, b-parallel, "
        "c-local-global, e-meta-tokens; only the --checkpoint designs when there are some).")
    ] = None,
    checkpoint: CheckpointsOpt = None,
    seq_lens: Annotated[str, typer.Option(help="Context lengths, comma-separated.")] = (
        "256,512,1024,2048,4096,8192"),
    profile: ProfileOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Sweep directory (sweep.jsonl, PNG plots).")] = Path(
        "runs/sweep"),
    resume: ResumeOpt = False,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    bench: BenchOverrides = BenchOverrides(),
    engine: ExecutorOptions = ExecutorOptions(),
) -> None:
    """Decode throughput and cache size against context length, as results and PNG plots."""
    from hymba_bench.bench.sweep import parse_seq_lens
    from hymba_bench.bench.sweep import sweep as run_sweep
    from hymba_bench.cli.progress import RunProgress

    opts = run_options(variants, checkpoint, DEFAULT, variant_file, device,
                       profile=profile, out=out, resume=resume, bench=bench, executor=engine)
    lengths = parse_seq_lens(seq_lens)
    with keeping(RunDir(out, "sweep")), \
            RunProgress(console, len(opts.variants), len(lengths), unit="contexts") as progress:
        paths = run_sweep(opts, lengths, progress)
    for path in paths:
        console.print(f"wrote {path}")
