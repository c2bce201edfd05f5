"""A run's vocabulary: what a stage is asked, what it yields, where its units execute.

A run takes designs (`Design`) through stages (`Stage`). For each stage, the designs that still
need it become `Job`s, and each job a `Unit` (one design's stage, or a part of it, with the stamp
its records carry). An `Executor` runs a stage's units (in this process, a local pool, Ray or
Slurm: `hymba_bench.executors`) and appends their records to the run's `ResultsFile` as they
come. A unit is independent (it reads nothing but its job) and idempotent (run again, it measures
the same things; the latest record wins), so any executor may run it anywhere.

Front ends give a `Reporter` for progress; `Silent` says nothing. This module imports no stage,
executor or front end: they import it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import Record, RecordSet, ResultsFile

if TYPE_CHECKING:
    from hymba_bench.design.config import ModelConfig
    from hymba_bench.design.registry import ResolvedVariant


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
    """A `Reporter` (and `Training`) that says nothing: library calls, tests, an engine's worker."""

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
    """Turns designs into records: `needed` says which metrics a design still lacks, given the
    run directory's records; `run` yields records as they are measured."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def timed(self) -> bool: ...  # it measures time: an engine runs it alone on its node
    @property
    def per_process(self) -> bool: ...  # its designs may run side by side in local processes

    def needed(self, design: Design, records: RecordSet) -> set[str]: ...
    def run(self, jobs: list[Job], report: Reporter) -> Iterator[Record]: ...
    def split(self, job: Job) -> list[Job]: ...  # the parts an engine may run apart
    def cost(self, design: Design) -> float: ...  # expected time, any unit: largest first


class StageDefaults:
    """What most stages answer to `Stage`'s optional questions: untimed, in this process, one
    unit per design, all alike in cost."""

    timed: ClassVar[bool] = False
    per_process: ClassVar[bool] = False

    def split(self, job: Job) -> list[Job]:
        return [job]

    def cost(self, design: Design) -> float:
        return 0.0


@dataclass(frozen=True)
class Stamp:
    """What every record of a run carries beside its own fields: the machine and code, the
    profile, and each design's table placement."""

    context: dict[str, Any]
    profile: str
    placements: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, record: Record) -> Record:
        where = self.placements.get(record.variant, {"profile": self.profile})
        return Record(record.variant, record.metric, record.value,
                      {**self.context, **where, **record.fields}).checked()

    def with_context(self, **context: Any) -> Stamp:
        return Stamp({**self.context, **context}, self.profile, self.placements)


@dataclass(frozen=True)
class Unit:
    """One design's stage (or a part of it: some seeds), everything a fresh process needs."""

    stage: Stage
    job: Job
    stamp: Stamp
    threads: int | None = None  # torch threads where it runs (None: leave the default)
    share: float = 1.0  # the part of its design's stage it is (a seed's unit: 1/seeds)

    @property
    def name(self) -> str:
        seeds = "".join(f"/seed-{s}" for s in self.job.seeds or ())
        return f"{self.job.name}/{self.stage.name}{seeds}"


def run_unit(unit: Unit, report: Reporter | None = None) -> Iterator[Record]:
    """A unit, wherever it runs: its stage's records for its one design, stamped, as they come."""
    import torch

    if unit.threads:
        torch.set_num_threads(unit.threads)
    stamp = unit.stamp.with_context(threads=torch.get_num_threads())
    for record in unit.stage.run([unit.job], report or Silent()):
        yield stamp(record)


def execute(stage: Stage, jobs: list[Job], results: ResultsFile, stamp: Stamp,
            report: Reporter) -> int:
    """Run `stage` on `jobs` in this process, all at once (a timed stage interleaves them),
    appending each record as it comes; the number written."""
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


@dataclass(frozen=True)
class Failure:
    unit: str
    reason: str


class UnitsFailed(HymbaBenchError):
    """Some units failed; the others' records are kept. Exit status 1: the work, not the input."""

    exit_code = 1

    def __init__(self, failures: list[Failure]) -> None:
        listed = "; ".join(f"{f.unit}: {f.reason}" for f in failures)
        super().__init__(f"{len(failures)} unit{'s' if len(failures) > 1 else ''} failed "
                         f"(the rest are recorded; rerun with `resume` to retry them): {listed}")
        self.failures = failures


class Executor(Protocol):
    """Runs one stage's units and appends their records to `results`; the units that failed
    (an executor that stops at the first error raises it instead). `splits`: whether a design's
    job is worth splitting into parts (`Stage.split`) that it may run apart."""

    @property
    def name(self) -> str: ...
    @property
    def splits(self) -> bool: ...

    def run(self, units: list[Unit], results: ResultsFile, report: Reporter) -> list[Failure]: ...
