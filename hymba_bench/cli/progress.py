"""Progress of long work: a rich bar with an ETA on a terminal, plain lines everywhere else.

`hymba-bench run > log 2>&1` must show where it is too (a CI log, a batch job), so when the
console is not a terminal every unit's start is one flushed line: the position ("design 3 of 9"),
the elapsed time and an ETA.

The ETA is reckoned per stage: a design's cache row takes milliseconds and its training can take
hours, so a rate learned in one stage says nothing about the next. Within a stage it is the
mean time of the units that stage has finished (units a resumed run already had do not count as
fast ones); stages still to come are named, not guessed.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _count(done: float) -> str:
    """Stages done: whole numbers as such; a design's stage part-done by its seed units as 2.3."""
    return f"{done:.0f}" if abs(done - round(done)) < 1e-6 else f"{done:.1f}"


class SubTask:
    """A nested count (training steps): a second bar, or a line every tenth of the way."""

    def __init__(self, owner: RunProgress, description: str, total: int) -> None:
        self.owner, self.total, self.description = owner, total, description
        self._next_line = 0
        self._task = owner._bar.add_task(description, total=total) if owner._bar else None

    def update(self, completed: int, description: str | None = None) -> None:
        if self.owner._bar is not None and self._task is not None:
            self.owner._bar.update(self._task, completed=completed,
                                   description=description or self.description)
        elif completed >= self._next_line:
            self.owner.console.print(f"    {description or self.description}: {completed}/{self.total}")
            self._next_line = completed + max(1, self.total // 10)

    def restart(self, description: str) -> None:
        """Count again from zero (the next training seed)."""
        self.description, self._next_line = description, 0
        self.update(0, description)

    def close(self) -> None:
        if self.owner._bar is not None and self._task is not None:
            self.owner._bar.remove_task(self._task)


class TrainingBar:
    """One design's proxy training: a SubTask per design, restarted per seed, with the loss."""

    def __init__(self, owner: RunProgress, name: str, steps: int, seeds: int) -> None:
        self.name, self.seeds = name, seeds
        self.bar = owner.subtask(f"{name}: training", steps)

    def seed(self, k: int) -> None:
        of = f" (seed {k + 1} of {self.seeds})" if self.seeds > 1 else ""
        self.bar.restart(f"{self.name}: training{of}")

    def step(self, step: int, loss: float) -> None:
        self.bar.update(step, f"{self.bar.description}, loss {loss:.2f}")

    def close(self) -> None:
        self.bar.close()


class _Count(ProgressColumn):
    """Units done of the run ("2.5/9 stages"), or steps done of a training bar."""

    def __init__(self, owner: RunProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        if task.id != self.owner._task:
            return Text(f"{task.completed:.0f}/{task.total:.0f} steps")
        return Text(f"{_count(self.owner.done)}/{self.owner.total} {self.owner.unit}")


class _StageEta(ProgressColumn):
    """The run bar's ETA, reckoned at each refresh so that it counts down between units."""

    def __init__(self, owner: RunProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        if task.id != self.owner._task:  # a training bar: its own steps' rate
            return TimeRemainingColumn().render(task)
        return Text(self.owner.eta(), style="progress.remaining")


class RunProgress:
    """`with RunProgress(console, designs=9, stages=3) as p: p.start(k, name, stage); ...; p.advance()`:
    the `hymba_bench.runner.Reporter` the CLI gives a run."""

    def __init__(self, console: Console, designs: int, stages: int, unit: str = "stages",
                 stage_names: list[str] | None = None) -> None:
        self.console = console
        self.designs, self.total, self.unit = designs, designs * stages, unit
        self.done = 0.0
        self._t0 = time.perf_counter()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started = False
        # without named stages the run is one stage of `total` like units (eval's tasks, a sweep)
        self._stages = list(stage_names or [])
        self._stage: str | None = None
        self._stage_units = self.total if not self._stages else designs
        self._stage_done = 0.0  # units of the current stage done, resumed ones included
        self._stage_timed = 0.0  # of them, those done by work timed since its first unit began
        self._stage_t0: float | None = None

    def __enter__(self) -> RunProgress:
        return self

    def _begin(self) -> None:
        """The bar starts with the first unit, so input rejected before any work shows none."""
        if self._started:
            return
        self._started = True
        self._t0 = time.perf_counter()
        if self.console.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 _Count(self),
                                 TimeElapsedColumn(), TextColumn("ETA"), _StageEta(self),
                                 console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=self.total)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif exc is None and self._started:
            self.console.print(f"done: {_count(self.done)}/{self.total} {self.unit} in "
                               f"{_clock(time.perf_counter() - self._t0)}")

    def stage(self, name: str) -> None:
        """The run moves on to stage `name`: its ETA is learned afresh. Without named stages
        (a sweep's contexts are alike) the run keeps one ETA throughout."""
        if not self._stages:
            return
        self._stage, self._stage_done, self._stage_timed, self._stage_t0 = name, 0.0, 0.0, None

    def eta(self) -> str:
        """The time left in this stage, from its own finished units, and the stages after it."""
        later = self._stages[self._stages.index(self._stage) + 1:] if self._stage in self._stages else []
        then = f" (then {', '.join(later)})" if later else ""
        left = max(0.0, self._stage_units - self._stage_done)
        if self._stage_t0 is None or not self._stage_timed:
            return ("?" if left else "0s") + then
        rate = (time.perf_counter() - self._stage_t0) / self._stage_timed
        return f"{_clock(rate * left)}{' for ' + self._stage if self._stage and then else ''}{then}"

    def start(self, index: int, name: str, what: str) -> None:
        """Unit `what` of design `name`, the `index`-th (from 1) of the run's designs."""
        self._begin()
        if self._stage_t0 is None:
            self._stage_t0 = time.perf_counter()
        label = f"design {index} of {self.designs}, {name}: {what}"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=label)
            return
        elapsed = time.perf_counter() - self._t0
        eta = f", ETA {self.eta()}" if self.done else ""
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {label} ({self.unit} {_count(self.done)}/"
                           f"{self.total} done, {_clock(elapsed)} elapsed{eta})")

    def advance(self, share: float = 1.0) -> None:
        """`share` of a design's stage is done (a seed's unit on an engine: 1/seeds)."""
        self._begin()
        self.done += share
        self._stage_done += share
        if self._stage_t0 is not None:
            self._stage_timed += share
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=share)

    def subtask(self, description: str, total: int) -> SubTask:
        self._begin()
        return SubTask(self, description, total)

    def training(self, name: str, steps: int, seeds: int) -> TrainingBar:
        return TrainingBar(self, name, steps, seeds)

    def log(self, message: str) -> None:
        self.console.print(message)
