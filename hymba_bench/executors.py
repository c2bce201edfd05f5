"""Where a run's units execute: here, a local process pool, or the cluster engine a lab has.

Four implementations of `api.run.Executor`, chosen by `ExecutorOptions`:
- `LocalExecutor`: a stage's units in this process, all at once (a timed stage interleaves its
  designs round by round); an error stops the run.
- `PoolExecutor` (`local` with `workers` > 1 on the CPU): a stage whose designs may run side by
  side (`Stage.per_process`: the accuracy stage) gets a process per design, one thread each
  (`hymba_bench.workers`); any other stage runs as `LocalExecutor` runs it.
- `RayExecutor`: each unit a Ray task, with its resource request: 1 GPU on CUDA; on the CPU, one
  core for an untimed unit, and for a timed one (throughput, a sweep's context) as many cores as
  this machine has, so that it is timed alone on a node like this one and measures the design,
  not its neighbours. `address` joins an existing cluster; without it a local one is started.
  Records come back to the driver, which appends them: no shared file system is needed.
- `SlurmExecutor`: through submitit, a stage's units as one job array, asking for what Ray asks
  for (a GPU per unit on CUDA; on the CPU a node of its own, `--exclusive`, for a timed unit and
  one core for the others); each job appends its own records to the run directory (Slurm
  clusters share a file system), the driver waits, re-submits failed or pre-empted jobs up to
  `retries` times, and names the ones that still failed. A job's end is learnt from its result
  file or `sacct`, and where accounting is off (`sacct` answers nothing, common on small
  clusters) from the controller (`scontrol`), so a killed job is not waited for forever.

Faults on an engine: a unit that raises or is killed loses only its own records (the results
file takes whole lines under a lock, and a torn last line is ignored on reading); the others go
on, and the run ends with `UnitsFailed`, naming every failed unit and why.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hymba_bench.api.run import (
    Executor,
    Failure,
    Reporter,
    Unit,
    execute,
    run_unit,
)
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import Record, ResultsFile, RunDir

EXECUTORS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class ExecutorOptions:
    """Where a run's units execute, and the engine's settings (`--executor` and its options)."""

    name: str = "local"  # local | ray | slurm
    workers: int = 1  # local: designs of a `per_process` stage run at once (CPU only)
    ray_address: str | None = None  # ray: the cluster to join (None: start a local one)
    slurm_partition: str | None = None
    slurm_time: int = 60  # minutes per job
    slurm_gpus: int | None = None  # per task; None: 1 for a CUDA stage, none on the CPU
    slurm_account: str | None = None
    slurm_retries: int = 2  # re-submissions of a failed or pre-empted job
    slurm_local: bool = False  # submitit's LocalExecutor: the Slurm path without a cluster

    @classmethod
    def of(cls, value: ExecutorOptions | str | dict[str, Any] | None) -> ExecutorOptions:
        """A library caller's executor: the options, an engine's name, or a dict of fields."""
        from hymba_bench.settings import option_group

        return option_group(cls, {"name": value} if isinstance(value, str) else value, "executor")

    def side_by_side(self, device: str) -> int:
        """Designs of a `per_process` stage run at once: a process each on the CPU (local)."""
        local = self.name == "local" and device.startswith("cpu")
        return max(1, self.workers) if local else 1


def _reason(exc: BaseException) -> str:
    """One line: the exception's type and first line, the innermost frame where it was raised;
    for an engine's wrapper around a remote traceback (submitit), that traceback's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
        raised = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line)]
        if raised:
            return raised[-1]
    message = lines[0] if lines else ""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {message}{where}" if message else type(exc).__name__ + where


def _optional(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise HymbaBenchError(f"{module} is not installed: pip install \"hymba-bench[{extra}]\"",
                              param="executor") from None


def need(unit: Unit) -> str:
    """What a unit asks of any engine, the one rule both spell in their own terms: "gpu" on
    CUDA; on the CPU "node" for a stage that measures time (`timed = True`: throughput, a
    sweep's context), which must run alone on every core to measure the design and not its
    neighbours, and "core" (one core, one torch thread) for the others."""
    if unit.stage.device.startswith("cuda"):
        return "gpu"
    return "node" if unit.stage.timed else "core"


def resources(unit: Unit, cpus_here: int) -> dict[str, float]:
    """A unit's Ray resource request: `need` in Ray's terms, a node being `cpus_here` cores."""
    ask: dict[str, dict[str, float]] = {"gpu": {"num_gpus": 1, "num_cpus": 1},
                                        "node": {"num_cpus": cpus_here}, "core": {"num_cpus": 1}}
    return ask[need(unit)]


def slurm_request(unit: Unit, gpus: int | None) -> tuple[dict[str, Any], int | None]:
    """A unit's Slurm request and the torch threads it runs with: `need` in Slurm's terms,
    `gpus` GPUs (1 if not said) for "gpu", `--exclusive` for "node"."""
    kind = need(unit)
    if kind == "gpu":
        return {"slurm_gpus_per_task": 1 if gpus is None else gpus}, None
    if kind == "node":
        return {"slurm_exclusive": True}, None
    return {"cpus_per_task": 1}, 1


def _records_of(unit: Unit) -> list[Record]:
    """A Ray task's body: the unit's records, returned to the driver."""
    return list(run_unit(unit))


@dataclass
class LocalExecutor:
    """A stage's units in this process, all at once; the first error stops the run."""

    name: str = "local"
    splits: bool = False

    def run(self, units: list[Unit], results: ResultsFile, report: Reporter) -> list[Failure]:
        if units:
            execute(units[0].stage, [u.job for u in units], results, units[0].stamp, report)
        return []


@dataclass
class PoolExecutor:
    """Designs of a `per_process` stage side by side, a process each with an equal share of the
    cores (`hymba_bench.workers`); other stages, and a single design, as `LocalExecutor` runs
    them. The first unit to fail stops the pool and its error is raised."""

    workers: int
    name: str = "local"
    splits: bool = False

    def run(self, units: list[Unit], results: ResultsFile, report: Reporter) -> list[Failure]:
        if len(units) < 2 or not units[0].stage.per_process:
            return LocalExecutor().run(units, results, report)
        from hymba_bench.workers import run_in_parallel

        count = min(self.workers, len(units))
        threads = max(1, (os.cpu_count() or 1) // max(1, self.workers))
        report.log(f"training {len(units)} designs, {count} at a time ({threads} thread"
                   f"{'s' if threads > 1 else ''} each)")
        stage = units[0].stage
        run_in_parallel([replace(u, threads=threads) for u in units], results.path, count, report,
                        {u.job.name: stage.cost(u.job.design) for u in units})
        return []


@dataclass
class RayExecutor:
    address: str | None = None
    name: str = "ray"
    splits: bool = True

    def run(self, units: list[Unit], results: ResultsFile, report: Reporter) -> list[Failure]:
        ray = _optional("ray", "ray")
        if not ray.is_initialized():
            cpus = os.cpu_count() or 1
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                options["address"] = self.address
            else:  # a local cluster the size of this machine, with a modest object store
                options.update(num_cpus=cpus, object_store_memory=200 * 2**20)
            ray.init(**options)
        cpus_here = os.cpu_count() or 1
        task = ray.remote(max_retries=0)(_records_of)
        refs = {}
        for unit in units:
            request = resources(unit, cpus_here)
            threads = None if "num_gpus" in request else int(request["num_cpus"])
            sent = replace(unit, threads=threads)
            refs[task.options(**request).remote(sent)] = unit
            report.start(unit.job.design.index, unit.job.name, f"{unit.stage.name} (ray)")
        failures = []
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            unit = refs[done[0]]
            try:
                for record in ray.get(done[0]):
                    results.append(record)
            except Exception as exc:  # the task's own error, or the worker's death
                failures.append(Failure(unit.name, _reason(getattr(exc, "cause", None) or exc)))
            report.advance(unit.share)
        return failures


def _run_unit_into(unit: Unit, results: str) -> int:
    """A Slurm job's body: the unit's records appended to the run's results file."""
    file = ResultsFile(Path(results))
    with RunDir(file.path.parent).writing():  # a resumed driver waits for no job still alive
        records = list(run_unit(unit))  # a unit's records land together, or not at all
        for record in records:
            file.append(record)
    return len(records)


@dataclass
class SlurmExecutor:
    """`partition`, `time_min`, `gpus` per task and `account` go to Slurm; `folder` holds
    submitit's job files and logs. `local=True` runs the jobs as local processes through
    submitit's LocalExecutor (how the tests run the Slurm path without a cluster)."""

    folder: Path
    partition: str | None = None
    time_min: int = 60
    gpus: int | None = None  # per task; None: 1 for a CUDA stage, none on the CPU
    account: str | None = None
    retries: int = 2
    local: bool = False
    poll_s: float = 1.0
    grace_s: float = 10.0
    name: str = "slurm"
    splits: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def _executor(self, request: dict[str, Any]) -> Any:
        submitit = _optional("submitit", "slurm")
        if self.local:
            ex = submitit.LocalExecutor(folder=str(self.folder))
            ex.update_parameters(timeout_min=self.time_min)
            return ex
        ex = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
        params: dict[str, Any] = {"timeout_min": self.time_min, "tasks_per_node": 1, **request}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.account:
            params["slurm_account"] = self.account
        ex.update_parameters(**{k: v for k, v in {**params, **self.extra}.items() if v is not None})
        return ex

    def run(self, units: list[Unit], results: ResultsFile, report: Reporter) -> list[Failure]:
        # a call is one stage's units, so one request serves them all
        request, threads = slurm_request(units[0], self.gpus) if units else ({}, None)
        executor = self._executor(request)
        todo = [replace(u, threads=threads) for u in units]
        failures: list[Failure] = []
        for attempt in range(self.retries + 1):
            for unit in todo:
                report.start(unit.job.design.index, unit.job.name,
                             f"{unit.stage.name} (slurm{', retry ' + str(attempt) if attempt else ''})")
            jobs = executor.map_array(_run_unit_into, todo, [str(results.path)] * len(todo))
            again: list[Unit] = []
            failures = []
            for i, lost in self._finished(jobs):
                unit, job = todo[i], jobs[i]
                try:
                    if lost:
                        raise RuntimeError(lost)
                    job.result()
                    report.advance(unit.share)
                except Exception as exc:  # failed, timed out or pre-empted: submitted again
                    failures.append(Failure(f"{unit.name} (job {job.job_id})", _reason(exc)))
                    again.append(unit)
            todo = again
            if not todo:
                break
        for unit in todo:  # failed for good: done with, as far as the run's progress goes
            report.advance(unit.share)
        return failures

    def _finished(self, jobs: list[Any]) -> Iterator[tuple[int, str | None]]:
        """(index, None) for each job as it finishes, in the order they finish; (index, why) for
        a job that ended without a result where Slurm's accounting is off. submitit learns a
        job's end from its result file or from `sacct`; with accounting off (common on small
        clusters) `sacct` answers nothing (and submitit would wait for a killed job forever,
        warning at every poll), so the controller (`scontrol`) is asked instead."""
        accounting = self.local or _accounting_on()
        pending = dict(enumerate(jobs))
        ended_at: dict[int, float] = {}
        while pending:
            for i, job in list(pending.items()):
                lost = None
                if not (job.done() if accounting else job.paths.result_pickle.exists()):
                    if accounting:  # submitit knows when it ends
                        continue
                    state = _slurm_state(job.job_id)
                    if state not in ENDED:
                        continue
                    # its result file may reach this node a little after the job ends
                    if time.monotonic() - ended_at.setdefault(i, time.monotonic()) < self.grace_s:
                        continue
                    lost = (f"the job ended ({state}) without a result: killed, out of memory or "
                            "pre-empted (Slurm's accounting is off here, so it cannot say which)")
                del pending[i]
                yield i, lost
            if pending:
                time.sleep(self.poll_s)


def _accounting_on() -> bool:
    """Whether `sacct` answers here (Slurm's accounting storage is configured)."""
    try:
        return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# Job states after which a job leaves nothing more to wait for; "GONE": the controller has
# forgotten it (after its MinJobAge), so it has long ended.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                   "PREEMPTED", "BOOT_FAIL", "DEADLINE", "GONE"})


def _slurm_state(job_id: str) -> str:
    """A job's state from the Slurm controller, which keeps ended jobs for minutes even where
    accounting is off; "GONE" once it no longer knows the job, "UNKNOWN" if it cannot be asked."""
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"
    if shown.returncode != 0:
        return "GONE" if "invalid job id" in shown.stderr.lower() else "UNKNOWN"
    state = re.search(r"\bJobState=(\w+)", shown.stdout)
    return state.group(1) if state else "UNKNOWN"


def make_executor(options: ExecutorOptions, out: Path, device: str = "cpu") -> Executor:
    """The executor `options` name, its engine checked installed before any work; `out`: the run
    directory (Slurm's job files go under it)."""
    if options.name == "local":
        workers = options.side_by_side(device)
        return PoolExecutor(workers) if workers > 1 else LocalExecutor()
    if options.name == "ray":
        _optional("ray", "ray")
        return RayExecutor(options.ray_address)
    if options.name == "slurm":
        _optional("submitit", "slurm")
        return SlurmExecutor(Path(out) / "slurm", partition=options.slurm_partition,
                             time_min=options.slurm_time, gpus=options.slurm_gpus,
                             account=options.slurm_account, retries=options.slurm_retries,
                             local=options.slurm_local)
    raise HymbaBenchError(f"expected one of {', '.join(EXECUTORS)}, got {options.name!r}",
                          param="executor")
