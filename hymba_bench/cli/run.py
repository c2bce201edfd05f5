"""`hymba-bench run`: designs through every stage, written as Table 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hymba_bench.cli.common import (
    CheckpointsOpt,
    DataDirOpt,
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
    split,
)
from hymba_bench.executors import ExecutorOptions
from hymba_bench.results.records import RunDir
from hymba_bench.settings import BenchOverrides, BudgetOverrides


@app.command()
@executor_options
@bench_options("batch", "context", "gen_tokens", "repeats", "decode", "sliding_prefill",
               "decode_kernels")
def run(
    variants: Annotated[str | None, typer.Option(
        help="'all' (the roadmap), 'others' (Jamba, Zamba, ...) or comma-separated names "
        "(default: all, or only the --checkpoint designs when there are some).")] = None,
    checkpoint: CheckpointsOpt = None,
    profile: ProfileOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Run directory (results.jsonl, tables).")] = Path(
        "runs/latest"),
    skip: Annotated[list[str] | None, typer.Option(
        help="Stage to skip: accuracy, throughput or cache; repeatable.")] = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    bench: BenchOverrides = BenchOverrides(),
    train_steps: Annotated[int | None, typer.Option(
        min=1, help="Proxy-training steps per design (default: the profile's train block).")] = None,
    seeds: Annotated[int | None, typer.Option(
        min=1, help="Training seeds per design: Recall is their mean, with the standard deviation "
        "across seeds (default: the profile's train block).")] = None,
    log_samples: Annotated[bool, typer.Option(
        help="Also write lm-eval's per-sample logs (<out>/lm_eval/<design>/seed-<k>).")] = False,
    data_dir: DataDirOpt = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Designs trained at once in the accuracy stage, a process each (default: "
        "one per CPU core on the CPU, 1 on a GPU).")] = None,
    engine: ExecutorOptions = ExecutorOptions(),
) -> None:
    """Measure variants and write Table 1 (results.jsonl, roadmap.csv, roadmap.md)."""
    import dataclasses

    from hymba_bench.cli.progress import RunProgress
    from hymba_bench.cli.render import print_run
    from hymba_bench.runner import STAGES
    from hymba_bench.runner import run as run_all
    from hymba_bench.workers import default_workers

    opts = run_options(variants, checkpoint, "all", variant_file, device,
                       profile=profile, out=out, skip=set(split(skip)), resume=resume,
                       bench=bench, train=BudgetOverrides(steps=train_steps, seeds=seeds),
                       data_dir=data_dir, log_samples=log_samples, executor=engine)
    opts.executor = dataclasses.replace(
        engine, workers=workers or default_workers(opts.device, len(opts.variants)))
    stages = [s for s in STAGES if s not in opts.skip]
    with keeping(RunDir(out)), RunProgress(console, len(opts.variants), len(stages),
                                           stage_names=stages) as progress:
        run_dir = run_all(opts, progress)
    print_run(run_dir, console)
