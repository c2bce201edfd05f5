"""Designs run side by side on the CPU: one process per design, one thread each.

Why: a tiny design's training step is hundreds of small operators, and a second thread in the same
process barely shortens it (measured on the 2-core machine, ms per step at 1 and 2 threads: Llama
155 / 112, B 268 / 249, F 474 / 490), while two processes, one thread each, train two designs at
1.36x the throughput of one at a time (README, "Running the roadmap"). So on a CPU with more than
one core, `run` gives the accuracy stage's designs to `workers` processes (default: one per core).

Each worker runs one unit (`api.run.run_unit`: the stage's records for one design, stamped, and
appended to the run's results file as they come; appends take a lock and write one whole line);
progress comes back over a queue, so the bars and lines look as they do in one
process. On failure or Ctrl-C the pool is terminated: what a finished design recorded stays, a
design cut short resumes from its checkpoints under `--resume`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
from pathlib import Path
from typing import Any

from hymba_bench.api.run import Reporter, Training, Unit, run_unit
from hymba_bench.results.records import ResultsFile, RunDir

_QUEUE: Any = None  # the worker's end of the progress queue, set by `_init`


class _QueueTraining:
    def __init__(self, name: str) -> None:
        self.name = name

    def seed(self, k: int) -> None:
        _QUEUE.put((self.name, "seed", k, None))

    def step(self, step: int, loss: float) -> None:
        _QUEUE.put((self.name, "step", step, loss))

    def close(self) -> None:
        pass  # the parent closes the bar when the unit is done


class _QueueReporter:
    """The worker's side of the run's progress: messages to the parent."""

    def stage(self, name: str) -> None:
        pass  # the parent moves between stages

    def start(self, index: int, name: str, what: str) -> None:
        _QUEUE.put((name, "start", (index, what), None))

    def advance(self, share: float = 1.0) -> None:
        pass  # the parent advances when the unit is done

    def log(self, message: str) -> None:
        _QUEUE.put(("", "log", message, None))

    def training(self, name: str, steps: int, seeds: int) -> Training:
        _QUEUE.put((name, "training", steps, seeds))
        return _QueueTraining(name)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux's PR_SET_PDEATHSIG): a
    driver killed with SIGKILL cannot terminate its pool, and orphaned workers would go on
    appending records that a resumed run measures again. Where the call is not available, the
    run directory's writer lock (`RunDir.writing`) still keeps a resumed run from starting."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call: nothing will signal us
        os._exit(1)


def _init(progress_queue: Any, parent: int) -> None:
    global _QUEUE
    _QUEUE = progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it terminates the pool
    die_with_parent(parent)


def _run_unit(unit: Unit, results: Path) -> str:
    file = ResultsFile(results)
    with RunDir(results.parent).writing():
        for record in run_unit(unit, _QueueReporter()):
            file.append(record)
    return unit.job.name


def default_workers(device: str, designs: int) -> int:
    """One design per core on the CPU; one at a time on a GPU (they would share the device)."""
    if not device.startswith("cpu"):
        return 1
    return max(1, min(os.cpu_count() or 1, designs))


def run_in_parallel(units: list[Unit], results: Path, workers: int, report: Reporter,
                    cost: dict[str, float] | None = None) -> None:
    """Run `units` on a pool of `workers` processes, each appending its records to `results`,
    showing each design's progress; the first
    unit to fail stops the pool and its error is raised here. `cost`: expected time by design
    name, any unit; the largest start first, so the last to finish run beside others, not alone."""
    ctx = mp.get_context("spawn")  # a clean interpreter: no fork of torch's thread pools
    messages = ctx.Queue()
    bars: dict[str, Training] = {}
    pool = ctx.Pool(workers, initializer=_init, initargs=(messages, os.getpid()))
    try:
        order = sorted(units, key=lambda u: -(cost or {}).get(u.job.name, 0.0))
        pending = {u.job.name: pool.apply_async(_run_unit, (u, results)) for u in order}
        while pending:
            _show(messages, bars, report)
            for name in [n for n, r in pending.items() if r.ready()]:
                _show(messages, bars, report)
                pending.pop(name).get()  # the unit's own error, raised in this process
                if name in bars:
                    bars.pop(name).close()
                report.advance()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _show(messages: Any, bars: dict[str, Training], report: Reporter) -> None:
    """Apply every progress message waiting (up to a quarter of a second for the first)."""
    timeout: float | None = 0.25
    while True:
        try:
            name, kind, a, b = messages.get(timeout=timeout) if timeout else messages.get_nowait()
        except queue_mod.Empty:
            return
        timeout = None
        if kind == "start":
            report.start(a[0], name, a[1])
        elif kind == "log":
            report.log(a)
        elif kind == "training":
            bars[name] = report.training(name, a, b)
        elif kind == "seed" and name in bars:
            bars[name].seed(a)
        elif kind == "step" and name in bars:
            bars[name].step(a, b)
