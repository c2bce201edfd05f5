"""`hymba-bench compare`: designs measured in one run, as ratios to the first."""

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


@app.command()
@executor_options
@bench_options("batch", "context", "repeats", "decode", "sliding_prefill",
               "decode_kernels")
def compare(
    designs: Annotated[list[str] | None, typer.Argument(
        help="Two or more variant names (with the --checkpoint designs); ratios are to the first.")
    ] = None,
    profile: ProfileOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Run directory (results.jsonl, compare.md).")] = Path(
        "runs/compare"),
    checkpoint: CheckpointsOpt = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    bench: BenchOverrides = BenchOverrides(),
    engine: ExecutorOptions = ExecutorOptions(),
) -> None:
    """Measure designs in one run and print them side by side, as ratios to the first."""
    from hymba_bench.cli.progress import RunProgress
    from hymba_bench.cli.render import print_table
    from hymba_bench.runner import compare as run_compare

    opts = run_options(",".join(designs or []), checkpoint, "", variant_file, device,
                       profile=profile, out=out, skip={"accuracy"}, resume=resume,
                       bench=bench, executor=engine)
    names = opts.variants
    with keeping(RunDir(out)), RunProgress(console, len(names), 2,
                                           stage_names=["cache", "throughput"]) as progress:
        run_dir, built = run_compare(opts, progress)
    print_table(built, console, title=f"{' vs '.join(names)} ({run_dir.table('compare', 'md')})")
    if run_dir.plot("compare").is_file():
        console.print(f"wrote {run_dir.plot('compare')}")
