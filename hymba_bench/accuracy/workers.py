"""The accuracy stage's designs trained side by side on the CPU: one process per design, one
thread each.

Why: a tiny design's training step is hundreds of small operators, and a second thread in the same
process barely shortens it (measured on the 2-core machine, ms per step at 1 and 2 threads: Llama
155 / 112, B 268 / 249, F 474 / 490), while two processes, one thread each, train two designs at
1.36x the throughput of one at a time (README, "Running the roadmap"). So on a CPU with more
than one core, `run` trains `workers` designs at once (default: one per core). Each worker
appends its own records to the run's results file (appends take a lock and write one whole line);
progress comes back over a queue, so the bars and lines look as they do in one process. On
failure or Ctrl-C the pool is terminated: what a finished design recorded stays, a design cut short
resumes from its checkpoints under `--resume`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hymba_bench.cli.progress import RunProgress, TrainingBar

_QUEUE: Any = None  # the worker's end of the progress queue, set by `_init`


@dataclass
class AccuracyUnit:
    """One design's accuracy stage, everything a fresh process needs to run it."""

    variant: str
    index: int  # the design's place in the run (1-based), for progress lines
    profile: str
    out: Path
    budget: Any  # AccuracyBudget
    wanted: set[str]
    context: dict[str, Any]
    variant_files: list[Path] = field(default_factory=list)
    paper_data: bool = False
    previous: list[dict[str, Any]] = field(default_factory=list)
    log_samples: bool = False
    data_dir: Path | None = None
    threads: int = 1
    cost: float = 0.0  # expected training time, any unit: the largest designs start first


def _init(progress_queue: Any) -> None:
    global _QUEUE
    _QUEUE = progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it terminates the pool


def _run_unit(unit: AccuracyUnit) -> str:
    import torch

    from hymba_bench.accuracy.stage import measure_accuracy, use_data_dir
    from hymba_bench.design.registry import resolve
    from hymba_bench.results.records import ResultsFile, recorder

    torch.set_num_threads(unit.threads)
    name = unit.variant
    rv = resolve(name, unit.profile, unit.variant_files)
    use_data_dir(unit.data_dir)
    record = recorder(ResultsFile(unit.out / "results.jsonl"), rv,
                      {**unit.context, "threads": unit.threads}, unit.profile)
    _QUEUE.put((name, "start", None, None))
    measure_accuracy(rv, unit.out, "cpu", unit.budget, record, unit.wanted,
                     on_step=lambda step, loss: _QUEUE.put((name, "step", step, loss)),
                     paper_data=unit.paper_data, previous=unit.previous,
                     log_samples=unit.log_samples,
                     on_seed=lambda k: _QUEUE.put((name, "seed", k, None)))
    return name


def default_workers(device: str, designs: int) -> int:
    """One design per core on the CPU; one at a time on a GPU (they would share the device)."""
    if not device.startswith("cpu"):
        return 1
    return max(1, min(os.cpu_count() or 1, designs))


def train_in_parallel(units: list[AccuracyUnit], workers: int, progress: RunProgress) -> None:
    """Run `units` on a pool of `workers` processes, showing each design's training progress;
    the first unit to fail stops the pool and its error is raised here."""
    ctx = mp.get_context("spawn")  # a clean interpreter: no fork of torch's thread pools
    messages = ctx.Queue()
    by_name = {u.variant: u for u in units}
    bars: dict[str, TrainingBar] = {}
    pool = ctx.Pool(workers, initializer=_init, initargs=(messages,))
    try:  # longest first: the last designs to finish then run beside others, not alone
        order = sorted(units, key=lambda u: -u.cost)
        pending = {u.variant: pool.apply_async(_run_unit, (u,)) for u in order}
        while pending:
            _show(messages, bars, progress, by_name)
            for name in [n for n, r in pending.items() if r.ready()]:
                _show(messages, bars, progress, by_name)
                pending.pop(name).get()  # the unit's own error, raised in this process
                if name in bars:
                    bars.pop(name).close()
                progress.advance()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _show(messages: Any, bars: dict[str, TrainingBar], progress: RunProgress,
          units: dict[str, AccuracyUnit]) -> None:
    """Apply every progress message waiting (up to a quarter of a second for the first)."""
    timeout: float | None = 0.25
    while True:
        try:
            name, kind, a, b = messages.get(timeout=timeout) if timeout else messages.get_nowait()
        except queue_mod.Empty:
            return
        timeout = None
        if kind == "start":
            unit = units[name]
            progress.start(unit.index, name, "accuracy")
            bars[name] = TrainingBar(progress, name, unit.budget.steps, unit.budget.seeds)
        elif kind == "seed" and name in bars:
            bars[name].seed(a)
        elif kind == "step" and name in bars:
            bars[name].step(a, b)
