"""The package's layering: the contracts import none of their implementations, no module imports
itself back through others, and every executor and stage speaks the one vocabulary."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

from hymba_bench.api.run import Failure, Silent, Stamp, Unit
from hymba_bench.cli.common import bench_options
from hymba_bench.executors import (
    ExecutorOptions,
    LocalExecutor,
    PoolExecutor,
    RayExecutor,
    SlurmExecutor,
    make_executor,
)
from hymba_bench.settings import BenchOverrides

ROOT = Path(__file__).resolve().parent.parent


def structure() -> object:
    spec = importlib.util.spec_from_file_location("structure", ROOT / "scripts" / "structure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_contracts_import_none_of_their_implementations() -> None:
    code = ("import sys, hymba_bench.api.run, hymba_bench.api.metrics; "
            "print(','.join(m for m in sys.modules if m.startswith('hymba_bench')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, cwd=ROOT).stdout.strip().split(","))
    for implementation in ("hymba_bench.runner", "hymba_bench.executors", "hymba_bench.workers",
                           "hymba_bench.bench.stages", "hymba_bench.accuracy.stage",
                           "hymba_bench.bench.sweep", "hymba_bench.cli.app", "hymba_bench.model.lm"):
        assert implementation not in loaded


def test_no_module_imports_itself_back() -> None:
    """Not at module level, nor from inside a function (the lazy import that hides a circle)."""
    report = structure().report()  # type: ignore[attr-defined]
    assert report["circles_module_level"] == []
    assert report["circles_with_function_imports"] == []


def test_the_circle_finder_finds_a_circle() -> None:
    """The check above can fail: two modules that import each other are a circle."""
    finder = structure()
    assert finder.circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # type: ignore[attr-defined]
    assert finder.circles({"a": {"b"}, "b": set()}) == []  # type: ignore[attr-defined]


def test_every_engine_is_an_executor(tmp_path: Path) -> None:
    """Local, the process pool, Ray and Slurm answer the same interface; local is an executor
    too, not a special case of the run loop."""
    assert isinstance(make_executor(ExecutorOptions(), tmp_path), LocalExecutor)
    assert isinstance(make_executor(ExecutorOptions(workers=2), tmp_path), PoolExecutor)
    assert isinstance(make_executor(ExecutorOptions(workers=2), tmp_path, "cuda"), LocalExecutor)
    for engine in (LocalExecutor(), PoolExecutor(2), RayExecutor(), SlurmExecutor(tmp_path)):
        assert callable(engine.run) and isinstance(engine.name, str)
        assert isinstance(engine.splits, bool)
    # only the engines that place units apart split a design's job into parts
    assert [e.splits for e in (LocalExecutor(), PoolExecutor(2), RayExecutor(),
                               SlurmExecutor(tmp_path))] == [False, False, True, True]


def test_the_local_executor_runs_a_stage_once_over_all_its_units(tmp_path: Path) -> None:
    """A timed stage interleaves its designs: the local executor hands it every unit at once."""
    from hymba_bench.api.run import Design, Job, StageDefaults
    from hymba_bench.design.registry import resolve
    from hymba_bench.results.records import Record, ResultsFile

    calls: list[list[str]] = []

    class Seen(StageDefaults):
        name, device = "seen", "cpu"

        def needed(self, design: Design, records: object) -> set[str]:
            return {"params"}

        def run(self, jobs: list[Job], report: object):  # type: ignore[no-untyped-def]
            calls.append([j.name for j in jobs])
            for job in jobs:
                yield Record.measured(job.name, "params", 1)

    stamp = Stamp({"device": "test"}, "tiny")
    units = [Unit(Seen(), Job(Design(i, resolve(n)), frozenset({"params"})), stamp)
             for i, n in enumerate(["llama", "mamba"], 1)]
    results = ResultsFile(tmp_path / "results.jsonl")
    assert LocalExecutor().run(units, results, Silent()) == []
    assert calls == [["llama", "mamba"]]
    assert [r.variant for r in results.load()] == ["llama", "mamba"]
    assert Failure("x", "y").unit == "x"


def test_executor_options_from_a_library_caller() -> None:
    assert ExecutorOptions.of("ray").name == "ray"
    assert ExecutorOptions.of({"name": "slurm", "slurm_time": 5}).slurm_time == 5
    with pytest.raises(ValueError, match="unknown setting 'slurm_tiem'"):
        ExecutorOptions.of({"slurm_tiem": 5})


def test_the_python_api_takes_the_option_groups_typed_or_as_dicts(tmp_path: Path) -> None:
    import hymba_bench
    from hymba_bench.errors import HymbaBenchError
    from hymba_bench.settings import BenchOverrides

    quick = {"skip": {"accuracy", "throughput"}}
    run_dir = hymba_bench.run("llama", out=tmp_path / "a", bench={"batch": 2}, executor="local",
                              **quick)
    typed = hymba_bench.run("llama", out=tmp_path / "b", bench=BenchOverrides(batch=2),
                            executor=ExecutorOptions(), **quick)
    assert run_dir.records().value("llama", "params") == typed.records().value("llama", "params")
    with pytest.raises(HymbaBenchError, match="bench: unknown setting 'bach'"):
        hymba_bench.run("llama", out=tmp_path / "c", bench={"bach": 2}, **quick)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_commands_and_option_groups_keep_their_places() -> None:
    """`--help` lists the commands in their order, and an option group where the command
    declares it: the bench options after `--variant-file`, the executor's last."""
    from typer.main import get_command

    from hymba_bench.cli.app import COMMANDS, app
    from hymba_bench.cli.common import EXECUTOR_OPTIONS

    group = get_command(app)
    assert list(group.commands) == [c.replace("_", "-") for c in COMMANDS]  # type: ignore[attr-defined]
    for command in ("run", "sweep", "compare"):
        names = [p.name for p in group.commands[command].params]  # type: ignore[attr-defined]
        assert names.index("batch") == names.index("variant_file") + 1
        assert names[-len(EXECUTOR_OPTIONS):] == list(EXECUTOR_OPTIONS)


NO_OVERRIDES = BenchOverrides()


@bench_options("batch", "context", help={"context": "Cached tokens."})
def grouped(name: str, bench: BenchOverrides = NO_OVERRIDES) -> BenchOverrides:
    return bench


def test_an_option_group_takes_its_defaults_when_called_directly() -> None:
    command = grouped
    assert command("x") == BenchOverrides()
    assert command("x", batch=4) == BenchOverrides(batch=4)


def test_a_run_without_named_stages_keeps_one_eta() -> None:
    """A sweep's contexts are alike: its progress does not restart the ETA at each one."""
    from rich.console import Console

    from hymba_bench.cli.progress import RunProgress

    progress = RunProgress(Console(file=io.StringIO()), 2, 3, unit="contexts")
    progress.advance()
    progress.stage("context 64")
    assert progress._stage is None and progress._stage_done == 1.0
