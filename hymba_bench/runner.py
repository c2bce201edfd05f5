"""A run: every design through every stage, each record written the moment it exists.

A stage (`Stage`) is an object with a `name`, `needed(design, records)` (the metrics still
missing for a design, given what the run directory holds) and `run(jobs, report)`, which yields
records as they are measured. `run` is a plain loop over stages: for each, the designs that need
it become `Job`s, the stage runs them, and `execute` stamps every record with the run's context
and the design's table placement and appends it. Stages in order: `cache` and `throughput`
(`hymba_bench.bench.stages`), `accuracy` (`hymba_bench.accuracy.stage`). With `resume`, a
(variant, metric) already recorded is not measured again.

Front ends (the CLI) give a `Reporter` for progress and render what comes back; this module
prints nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch

import hymba_bench
from hymba_bench import workers
from hymba_bench.accuracy import task_data
from hymba_bench.accuracy.stage import AccuracyStage, hub_reachable, use_data_dir
from hymba_bench.bench.profile import machine
from hymba_bench.bench.stages import CacheStage, ThroughputStage
from hymba_bench.bench.throughput import check_fits
from hymba_bench.design.config import ModelConfig
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
from hymba_bench.executors import Failure, Unit, UnitsFailed, make_executor
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
from hymba_bench.settings import EvalBudget, TrainBudget, bench_settings, eval_budget, train_budget

STAGES = ("cache", "throughput", "accuracy")


class Training(Protocol):
    """One design's proxy-training progress."""

    def seed(self, k: int) -> None: ...
    def step(self, step: int, loss: float) -> None: ...
    def close(self) -> None: ...


class Reporter(Protocol):
    """Where a run says how far it is (the CLI: rich bars on a terminal, lines elsewhere)."""

    def stage(self, name: str) -> None: ...  # the run moves on to this stage
    def start(self, index: int, name: str, what: str) -> None: ...
    def advance(self, share: float = 1.0) -> None: ...  # share: the part of a design's stage
    def log(self, message: str) -> None: ...
    def training(self, name: str, steps: int, seeds: int) -> Training: ...


class Silent:
    """A `Reporter` that says nothing (library calls, tests)."""

    def stage(self, name: str) -> None:
        pass

    def start(self, index: int, name: str, what: str) -> None:
        pass

    def advance(self, share: float = 1.0) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def training(self, name: str, steps: int, seeds: int) -> Training:
        return self

    def seed(self, k: int) -> None:
        pass

    def step(self, step: int, loss: float) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Design:
    """A design in a run: its position (from 1, for progress) and its resolved variant."""

    index: int
    rv: ResolvedVariant

    @property
    def name(self) -> str:
        return self.rv.config.name

    @property
    def config(self) -> ModelConfig:
        return self.rv.config

    @property
    def profile(self) -> str:
        return self.rv.profile.name


@dataclass(frozen=True)
class Job:
    """What a stage is asked to do for one design: the metrics wanted, and the design's records
    already in the run directory (a resumed stage continues from them)."""

    design: Design
    wanted: frozenset[str]
    earlier: RecordSet = field(default_factory=RecordSet)
    seeds: tuple[int, ...] | None = None  # a unit of these training seeds only (None: all)

    @property
    def name(self) -> str:
        return self.design.name


class Stage(Protocol):
    name: str

    def needed(self, design: Design, records: RecordSet) -> set[str]: ...
    def run(self, jobs: list[Job], report: Reporter) -> Iterator[Record]: ...


@dataclass(frozen=True)
class Stamp:
    """What every record of a run carries beside its own fields: the machine and code
    (`base_context`), the profile, and each design's table placement."""

    context: dict[str, Any]
    profile: str
    placements: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, record: Record) -> Record:
        where = self.placements.get(record.variant, {"profile": self.profile})
        return Record(record.variant, record.metric, record.value,
                      {**self.context, **where, **record.fields}).checked()

    def with_context(self, **context: Any) -> Stamp:
        return Stamp({**self.context, **context}, self.profile, self.placements)


def execute(stage: Stage, jobs: list[Job], results: ResultsFile, stamp: Stamp,
            report: Reporter) -> int:
    """Run `stage` on `jobs`, appending each record as it comes; the number written."""
    written = 0
    for record in stage.run(jobs, report):
        results.append(stamp(record))
        written += 1
    return written


def jobs_for(stage: Stage, designs: list[Design], records: RecordSet,
             report: Reporter) -> list[Job]:
    """The designs that still need `stage`, given `records`; the others count as done."""
    jobs = []
    for d in designs:
        wanted = stage.needed(d, records)
        if wanted:
            jobs.append(Job(d, frozenset(wanted), records.of(d.name)))
        else:
            report.advance()
    return jobs


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
    bench: dict[str, Any] = field(default_factory=dict)  # overrides of the profile's bench block
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the train and eval blocks
    data_dir: Path | None = None  # local copies of lm-eval's datasets (a datasets cache)
    log_samples: bool = False  # lm-eval's per-sample logs beside its results JSON
    workers: int = 1  # designs trained at once in the accuracy stage (CPU: a process each)
    executor: str = "local"  # local | ray | slurm (hymba_bench.executors)
    executor_options: dict[str, Any] = field(default_factory=dict)  # ray_address, slurm_*


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
        known = {f.name for cls in (TrainBudget, EvalBudget) for f in dataclasses.fields(cls)}
        for key in sorted(set(opts.train) - known):
            raise HymbaBenchError(f"unknown train/eval setting {key!r} (known: {', '.join(sorted(known))})",
                                  param="train")
        use_data_dir(opts.data_dir)
        budget = train_budget(profile, opts.train)
        accuracy = AccuracyStage(budget, eval_budget(profile, opts.train), RunDir(opts.out),
                                 opts.device, paper_data=opts.data_dir is not None or hub_reachable(),
                                 local_data=task_data.source(),
                                 log_samples=opts.log_samples, data_dir=opts.data_dir)
        accuracy.check(resolved)
        usual = train_budget(profile)
        if budget.steps * budget.seeds > LONG_BUDGET * usual.steps * usual.seeds:
            seconds, how = accuracy.estimate(resolved, opts.workers if _parallel_ok(opts) else 1)
            report.log(f"{'warning: ' if seconds > 3600 else ''}the accuracy stage will train for "
                       f"about {_duration(seconds)} ({how})")
        stages.append(accuracy)
    if opts.workers > (os.cpu_count() or 1):
        report.log(f"warning: workers: {opts.workers} is more than this machine's "
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
    executor = make_executor(opts.executor, run_dir.path, opts.executor_options)
    designs = [Design(i, rv) for i, rv in enumerate(resolved, 1)]
    failures: list[Failure] = []
    with run_dir.lock():
        results, stamp = open_run(run_dir, opts.resume, opts.device, opts.profile, designs)
        noted = {(r.variant, r.get("stage"), r.value) for r in results.load() if r.kind == "note"}
        for skipped in sorted(opts.skip):
            text = f"{skipped} skipped (--skip {skipped})"
            if ("*", skipped, text) not in noted:  # a resumed run says it once
                results.append(stamp(Record.note("*", skipped, text)))
        try:
            for stage in stages:
                report.stage(stage.name)
                jobs = jobs_for(stage, designs, results.load(), report)  # what earlier stages left
                if not jobs:
                    continue
                if executor is not None:  # one unit per design (or seed), where the engine puts it
                    failures += _on_engine(executor, stage, jobs, results, stamp, report)
                elif stage.name == "accuracy" and _parallel(opts, jobs):
                    _train_side_by_side(stage, jobs, opts, results, stamp, report)
                else:
                    execute(stage, jobs, results, stamp, report)
        except BaseException:
            # interrupted, or the disk filled: the tables of what was kept, if they can be written
            with contextlib.suppress(HymbaBenchError, OSError):
                if results.load().metrics():
                    write_tables(run_dir)
            raise
        if results.load().metrics():
            write_tables(run_dir)
    if failures:
        raise UnitsFailed(failures)
    return run_dir


def _on_engine(executor: Any, stage: Stage, jobs: list[Job], results: ResultsFile, stamp: Stamp,
               report: Reporter) -> list[Failure]:
    """The stage's units on an engine. A stage that splits a design's job (the accuracy stage,
    a unit per seed) gets one more local pass per design whose parts all succeeded: it trains
    nothing then, and records the mean over the seeds."""
    split = getattr(stage, "split", None)
    units = []
    for job in jobs:
        parts = split(job) if split else [job]
        units += [Unit(stage, part, stamp, share=1 / len(parts)) for part in parts]
    failures = executor.run(units, results, report)
    if len(units) > len(jobs):
        failed = {f.unit.split("/")[0] for f in failures}
        records = results.load()
        finish = [Job(j.design, j.wanted, records.of(j.name)) for j in jobs if j.name not in failed]
        execute(stage, finish, results, stamp, Silent())
    return failures


def _parallel_ok(opts: RunOptions) -> bool:
    return opts.workers > 1 and opts.device.startswith("cpu") and opts.executor == "local"


def _parallel(opts: RunOptions, jobs: list[Job]) -> bool:
    """Several accuracy designs at once, each in its own process: only on the CPU."""
    return _parallel_ok(opts) and len(jobs) > 1


def _train_side_by_side(stage: Any, jobs: list[Job], opts: RunOptions, results: ResultsFile,
                        stamp: Stamp, report: Reporter) -> None:
    count = min(opts.workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // max(1, opts.workers))
    report.log(f"training {len(jobs)} designs, {count} at a time ({threads} thread"
               f"{'s' if threads > 1 else ''} each)")
    units = [workers.Unit(stage, job, results.path, stamp, threads) for job in jobs]
    workers.run_in_parallel(units, count, report, {j.name: stage.cost(j.design) for j in jobs})


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


def device_name(device: Any) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(machine()["cpu"])


def base_context(device: Any) -> dict[str, Any]:
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
