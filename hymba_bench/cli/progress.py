"""Progress of long work: a rich bar with an ETA on a terminal, plain lines everywhere else.

`hymba-bench run > log 2>&1` must show where it is too (a CI log, a batch job), so when the
console is not a terminal every unit's start is one flushed line: the position ("design 3 of 9"),
the elapsed time and an ETA from the mean time per finished unit.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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


class RunProgress:
    """`with RunProgress(console, designs=9, stages=3) as p: p.start(k, name, stage); ...; p.advance()`:
    the `hymba_bench.runner.Reporter` the CLI gives a run."""

    def __init__(self, console: Console, designs: int, stages: int, unit: str = "stages") -> None:
        self.console = console
        self.designs, self.total, self.unit = designs, designs * stages, unit
        self.done = 0.0
        self._t0 = time.perf_counter()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started = False

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
                                 TextColumn(f"{{task.fields[done]}}/{{task.total}} {self.unit}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=self.total, done="0")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif exc is None and self._started:
            self.console.print(f"done: {_count(self.done)}/{self.total} {self.unit} in "
                               f"{_clock(time.perf_counter() - self._t0)}")

    def start(self, index: int, name: str, what: str) -> None:
        """Unit `what` of design `name`, the `index`-th (from 1) of the run's designs."""
        self._begin()
        label = f"design {index} of {self.designs}, {name}: {what}"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=label)
            return
        elapsed = time.perf_counter() - self._t0
        eta = f", ETA {_clock(elapsed / self.done * (self.total - self.done))}" if self.done else ""
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {label} ({self.unit} {_count(self.done)}/"
                           f"{self.total} done, {_clock(elapsed)} elapsed{eta})")

    def advance(self, share: float = 1.0) -> None:
        """`share` of a design's stage is done (a seed's unit on an engine: 1/seeds)."""
        self._begin()
        self.done += share
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=share, done=_count(self.done))

    def subtask(self, description: str, total: int) -> SubTask:
        self._begin()
        return SubTask(self, description, total)

    def training(self, name: str, steps: int, seeds: int) -> TrainingBar:
        return TrainingBar(self, name, steps, seeds)

    def log(self, message: str) -> None:
        self.console.print(message)
