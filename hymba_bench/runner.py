"""A run: every design through every stage, each record written the moment it exists.

`run` plans the stages `RunOptions` asks for (`cache` and `throughput` from
`hymba_bench.bench.stages`, `accuracy` from `hymba_bench.accuracy.stage`), checks their settings
before any work, and hands them to `measure`, the one loop every run shares (`sweep` too, with
its context stages): for each stage, the designs that still need it become units, the executor
runs them, and each record is stamped with the run's context and the design's table placement
and appended. With `resume`, a (variant, metric) already recorded is not measured again.

The vocabulary (designs, jobs, stages, units, executors, progress) is `hymba_bench.api.run`.
Front ends give a `Reporter` for progress and render what comes back; this module prints
nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch

import hymba_bench
from hymba_bench.accuracy import task_data
from hymba_bench.accuracy.stage import AccuracyStage, hub_reachable, use_data_dir
from hymba_bench.api.run import (
    Design,
    Executor,
    Failure,
    Job,
    Reporter,
    Silent,
    Stage,
    Stamp,
    Unit,
    UnitsFailed,
    execute,
    jobs_for,
)
from hymba_bench.bench.profile import machine
from hymba_bench.bench.stages import CacheStage, ThroughputStage
from hymba_bench.bench.throughput import check_fits
from hymba_bench.design.masks import window_keys
from hymba_bench.design.registry import (
    ResolvedVariant,
    checkpoint_path,
    checkpoint_variant,
    get_profile,
    get_variant,
    names,
    resolve,
    variants,
)
from hymba_bench.errors import HymbaBenchError
from hymba_bench.executors import ExecutorOptions, make_executor
from hymba_bench.files import write_atomic
from hymba_bench.ops import backend_report
from hymba_bench.results.plots import roadmap_plot
from hymba_bench.results.records import (
    Record,
    RecordSet,
    ResultsFile,
    RunDir,
    placement,
)
from hymba_bench.results.tables import Table, compare_table, extended_table, roadmap_table
from hymba_bench.settings import (
    BenchOverrides,
    BudgetOverrides,
    bench_settings,
    eval_budget,
    train_budget,
)

STAGES = ("cache", "throughput", "accuracy")
T = TypeVar("T")


def open_run(run_dir: RunDir, resume: bool, device: str, profile: str,
             designs: list[Design]) -> tuple[ResultsFile, Stamp]:
    """Under `run_dir.lock()`: the results file, checked for a run of `profile` on `device`,
    and the stamp every record of the run carries."""
    context = base_context(device)
    results = run_dir.open(resume, {"profile": profile, "device": context["device"]})
    return results, Stamp(context, profile, {d.name: placement(d.rv, profile) for d in designs})


def select_variants(spec: str, variant_files: list[Path] | None = None) -> list[str]:
    """Names and groups, comma-separated -> validated names (unknown ones raise, listing the valid).

    `all`: the registered roadmap plus any user design files; `others`: the registered designs
    outside the roadmap (Jamba, Zamba, StripedHyena, Samba). A Hugging Face checkpoint's path
    (its directory or config.json) is a design too: it is added to `variant_files`.
    """
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "all":
            chosen += names(variant_files, only_all=True)
        elif item == "others":
            chosen += [n for n, v in variants(variant_files).items()
                       if v.keys.get("table_section") == "other" and v.keys.get("in_all") is False]
        elif item and checkpoint_path(item) is not None and variant_files is not None:
            # a checkpoint given as a design: its config.json joins the design files
            path = Path(item)
            if path not in variant_files:
                variant_files.append(path)
            chosen.append(checkpoint_variant(path).name)
        elif item:
            get_variant(item, variant_files)
            chosen.append(item)
    if not chosen:
        raise HymbaBenchError("expected 'all', 'others' or a comma-separated list of names",
                              param="variants")
    return list(dict.fromkeys(chosen))


@dataclass
class RunOptions:
    variants: list[str]
    profile: str = "tiny"
    out: Path = Path("runs/latest")
    skip: set[str] = field(default_factory=set)
    resume: bool = False
    device: str = "cpu"
    variant_files: list[Path] = field(default_factory=list)
    bench: BenchOverrides = field(default_factory=BenchOverrides)  # of the profile's bench block
    train: BudgetOverrides = field(default_factory=BudgetOverrides)  # of its train and eval blocks
    data_dir: Path | None = None  # local copies of lm-eval's datasets (a datasets cache)
    log_samples: bool = False  # lm-eval's per-sample logs beside its results JSON
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)

    def __post_init__(self) -> None:
        # a library caller may give an option group as a dict of its fields (or an engine's name)
        self.bench = BenchOverrides.of(self.bench, "bench")
        self.train = BudgetOverrides.of(self.train, "train")
        self.executor = ExecutorOptions.of(self.executor)


LONG_BUDGET = 4  # a training budget past this many times the profile's gets an up-front estimate


def plan_stages(opts: RunOptions, resolved: list[ResolvedVariant],
                report: Reporter | None = None) -> list[Stage]:
    """The stages `opts` asks for, their settings resolved and checked (bad --batch, a design
    that cannot fit, a bad budget or data directory fail here, before anything is written);
    input that is legal but unwise is said through `report` as a warning."""
    report = report or Silent()
    for stage in opts.skip:
        if stage not in STAGES:
            raise HymbaBenchError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}", param="skip")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise HymbaBenchError("cuda: no CUDA device is visible to torch", param="device")
    stages: list[Stage] = []
    if "cache" not in opts.skip:
        stages.append(CacheStage(opts.device))
    if "throughput" not in opts.skip:
        dev, bench = torch.device(opts.device), {}
        for rv in resolved:
            s = bench[rv.config.name] = bench_settings(rv.profile, dev, opts.bench)
            # batch 1 is where halving would end: if even that cannot fit, say so now
            check_fits(rv.config, 1, s.context + s.gen_tokens, s.torch_dtype, dev)
            window = rv.config.sliding_window
            if window is not None and window_keys(window) >= s.context + s.gen_tokens:
                report.log(f"warning: {rv.config.name}: its sliding window ({window}) never binds "
                           f"at a context of {s.context}: its throughput is timed as global "
                           f"attention's, while its cache is reported at "
                           f"{rv.info['cache_seq_len']} tokens")
        stages.append(ThroughputStage(bench, opts.device))
    if "accuracy" not in opts.skip:
        profile = get_profile(opts.profile)
        use_data_dir(opts.data_dir)
        budget = train_budget(profile, opts.train)
        accuracy = AccuracyStage(budget, eval_budget(profile, opts.train), RunDir(opts.out),
                                 opts.device, paper_data=opts.data_dir is not None or hub_reachable(),
                                 local_data=task_data.source(),
                                 log_samples=opts.log_samples, data_dir=opts.data_dir)
        accuracy.check(resolved)
        usual = train_budget(profile)
        if budget.steps * budget.seeds > LONG_BUDGET * usual.steps * usual.seeds:
            seconds, how = accuracy.estimate(resolved, opts.executor.side_by_side(opts.device))
            report.log(f"{'warning: ' if seconds > 3600 else ''}the accuracy stage will train for "
                       f"about {_duration(seconds)} ({how})")
        stages.append(accuracy)
    if opts.executor.workers > (os.cpu_count() or 1):
        report.log(f"warning: workers: {opts.executor.workers} is more than this machine's "
                   f"{os.cpu_count()} cores: designs trained at once would share cores and each "
                   "run slower")
    return stages


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def run(opts: RunOptions, report: Reporter | None = None) -> RunDir:
    """Measure `opts.variants` through every stage not skipped; the run directory, its tables
    written."""
    report = report or Silent()
    get_profile(opts.profile)
    resolved = [resolve(name, opts.profile, opts.variant_files) for name in opts.variants]
    if "accuracy" not in opts.skip:
        for rv in resolved:
            if checkpoint_path(rv.variant.path) is not None:
                # proxy training would measure the architecture from scratch, not the weights
                raise HymbaBenchError(
                    f"{rv.variant.name}: a checkpoint's accuracy is its weights' (`hymba-bench "
                    f"eval --checkpoint {rv.info['checkpoint']}`); run it with --skip accuracy",
                    param="variants")
    stages = plan_stages(opts, resolved, report)
    run_dir = RunDir(opts.out)
    notes = [Record.note("*", skipped, f"{skipped} skipped (--skip {skipped})")
             for skipped in sorted(opts.skip)]
    measure(run_dir, resolved, stages, opts, report, notes=notes, finish=_tables_if_measured)
    return run_dir


def measure(run_dir: RunDir, resolved: list[ResolvedVariant], stages: list[Stage],
            opts: RunOptions, report: Reporter, notes: list[Record] | None = None,
            finish: Callable[[RunDir, RecordSet], T] | None = None,
            finish_interrupted: bool = True) -> T | None:
    """The loop every run shares: under the run directory's lock, each stage's missing work as
    units on the executor, records appended as they come; `notes` recorded once (a resumed run
    does not repeat them); then `finish(run_dir, records)` (with `finish_interrupted`, also
    after an interruption, with what was kept). Raises `UnitsFailed` after `finish` when an
    engine's units failed."""
    executor = make_executor(opts.executor, run_dir.path, opts.device)
    designs = [Design(i, rv) for i, rv in enumerate(resolved, 1)]
    failures: list[Failure] = []
    with run_dir.lock():
        results, stamp = open_run(run_dir, opts.resume, opts.device, opts.profile, designs)
        noted = {(r.variant, r.get("stage"), r.value) for r in results.load() if r.kind == "note"}
        for note in notes or []:
            if (note.variant, note.get("stage"), note.value) not in noted:
                results.append(stamp(note))
        try:
            for stage in stages:
                report.stage(stage.name)
                jobs = jobs_for(stage, designs, results.load(), report)  # what earlier stages left
                if jobs:
                    failures += dispatch(executor, stage, jobs, results, stamp, report)
        except BaseException:
            # interrupted, or the disk filled: what was kept, if it can be written
            if finish is not None and finish_interrupted:
                with contextlib.suppress(HymbaBenchError, OSError):
                    finish(run_dir, results.load())
            raise
        done = finish(run_dir, results.load()) if finish is not None else None
    if failures:
        raise UnitsFailed(failures)
    return done


def dispatch(executor: Executor, stage: Stage, jobs: list[Job], results: ResultsFile,
             stamp: Stamp, report: Reporter) -> list[Failure]:
    """A stage's jobs as units on `executor`. Where the executor runs parts apart (an engine)
    and the stage splits a design's job (the accuracy stage: a unit per seed), each design whose
    parts all succeeded gets one more pass here: it trains nothing then, and records the mean
    over the seeds."""
    units = []
    for job in jobs:
        parts = stage.split(job) if executor.splits else [job]
        units += [Unit(stage, part, stamp, share=1 / len(parts)) for part in parts]
    failures = executor.run(units, results, report)
    if len(units) > len(jobs):
        failed = {f.unit.split("/")[0] for f in failures}
        records = results.load()
        finish = [Job(j.design, j.wanted, records.of(j.name)) for j in jobs if j.name not in failed]
        execute(stage, finish, results, stamp, Silent())
    return failures


def _tables_if_measured(run_dir: RunDir, records: RecordSet) -> None:
    if records.metrics():
        write_tables(run_dir)


def compare(opts: RunOptions, report: Reporter | None = None) -> tuple[RunDir, Table]:
    """`opts.variants` measured in one run (the accuracy stage skipped) and set side by side as
    ratios to the first; `compare.md`, `compare.csv` and `compare.png` written in the run
    directory."""
    if len(opts.variants) < 2:
        raise HymbaBenchError("name at least two designs", param="variants")
    run_dir = run(dataclasses.replace(opts, skip=opts.skip | {"accuracy"}), report)
    records = run_dir.records()
    table = compare_table(records, opts.variants)
    write_atomic(run_dir.table("compare", "md"), table.to_markdown())
    write_atomic(run_dir.table("compare", "csv"), table.to_csv())
    roadmap_plot(records, run_dir.plot("compare"), designs=opts.variants)
    return run_dir, table


def write_tables(run_dir: RunDir) -> dict[str, Any]:
    """Table 1's layout and the extended table (CSV and Markdown) and the roadmap picture, from
    the records; the tables, by name."""
    records = run_dir.records()
    built = {"roadmap": roadmap_table(records), "roadmap_extended": extended_table(records)}
    for name, table in built.items():
        write_atomic(run_dir.table(name, "csv"), table.to_csv())
        write_atomic(run_dir.table(name, "md"), table.to_markdown())
    roadmap_plot(records, run_dir.plot("roadmap"))
    return built


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit measured, "-dirty" when the working tree differs from it (uncommitted code, or
    a copy whose git metadata is older than its files): a figure names the code behind it."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7",
                              "--exclude=*"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(machine()["cpu"])


def base_context(device: str | torch.device) -> dict[str, Any]:
    """What every record of a run shares: machine, versions, commit."""
    return {
        "device": device_name(device),
        "device_type": str(torch.device(device).type),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hymba_bench": hymba_bench.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "backend": backend_report(device),
    }


def default_out() -> Path:
    return Path(os.environ.get("HYMBA_BENCH_OUT", "runs/latest"))
