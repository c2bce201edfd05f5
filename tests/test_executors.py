"""Units on real cluster engines: a local Ray cluster and submitit (its local executor standing in
for Slurm) give the same exact figures as the local run; a unit that fails is named, the others'
records are kept."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hymba_bench.api.run import Design, Job, Silent, StageDefaults, Stamp, Unit, UnitsFailed
from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.executors import ExecutorOptions, RayExecutor, SlurmExecutor, make_executor
from hymba_bench.results.records import Record, RecordSet, ResultsFile, RunDir
from hymba_bench.runner import RunOptions, run
from hymba_bench.settings import BenchOverrides, BudgetOverrides

FAST = BenchOverrides(batch=2, context=32, gen_tokens=2, repeats=1)
EXACT = ("params", "cache_bytes", "cache_bytes_analytic", "cache_mb")
DESIGNS = ["llama", "mamba", "c-local-global"]
SLURM_HERE = ExecutorOptions("slurm", slurm_local=True)  # submitit's local executor


def exact(out: Path) -> dict[tuple[str, str], float]:
    return {(v, m): r.value for (v, m), r in RunDir(out).records().latest().items() if m in EXACT}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    run(RunOptions(DESIGNS, out=out, skip={"accuracy"}, bench=FAST))
    return out


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the failing stage below
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_local_runs_exact_figures(local_run: Path, ray_cluster: None,
                                                tmp_path: Path) -> None:
    out = tmp_path / "ray"
    run(RunOptions(DESIGNS, out=out, skip={"accuracy"}, bench=FAST, executor=ExecutorOptions("ray")))
    assert exact(out) == exact(local_run) and len(exact(out)) == len(DESIGNS) * len(EXACT)
    records = RunDir(out).records()
    for name in DESIGNS:  # throughput measured too, each unit alone on the node
        assert records.value(name, "decode_tok_s") > 0
        assert records.get(name, "decode_tok_s").get("interleaved_with") == 0
    assert (out / "roadmap.md").is_file()
    # resume: every unit's records exist, whichever engine made them: nothing runs again
    before = len(records)
    run(RunOptions(DESIGNS, out=out, skip={"accuracy"}, bench=FAST, resume=True))
    assert len(RunDir(out).records()) == before


@pytest.mark.slow
def test_submitit_runs_the_slurm_path(local_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "slurm"
    run(RunOptions(DESIGNS, out=out, skip={"accuracy", "throughput"}, executor=SLURM_HERE))
    assert exact(out) == exact(local_run)
    assert list((out / "slurm").glob("*_log.out"))  # submitit's own job files, in the run dir


class FailsFor(StageDefaults):
    """A stage that raises for one design, on purpose."""

    name = "flaky"
    device = "cpu"

    def __init__(self, victim: str) -> None:
        self.victim = victim

    def needed(self, design: Design, records: RecordSet) -> set[str]:
        return {"params"}

    def run(self, jobs: list[Job], report: object) -> Iterator[Record]:
        for job in jobs:
            if job.name == self.victim:
                raise RuntimeError(f"{job.name} fails here on purpose")
            yield Record.measured(job.name, "params", 1)


def units(tmp_path: Path) -> tuple[list[Unit], ResultsFile]:
    stamp = Stamp({"device": "test"}, "tiny")
    stage = FailsFor("mamba")
    jobs = [Job(Design(i, resolve(n)), frozenset({"params"})) for i, n in enumerate(DESIGNS, 1)]
    return [Unit(stage, job, stamp) for job in jobs], ResultsFile(tmp_path / "results.jsonl")


@pytest.mark.slow
def test_a_failing_unit_is_named_and_the_others_kept_on_ray(ray_cluster: None,
                                                            tmp_path: Path) -> None:
    todo, results = units(tmp_path)
    failures = RayExecutor().run(todo, results, Silent())
    assert [f.unit for f in failures] == ["mamba/flaky"]
    assert "RuntimeError: mamba fails here on purpose" in failures[0].reason
    assert sorted(r.variant for r in results.load()) == ["c-local-global", "llama"]


@pytest.mark.slow
def test_a_failing_slurm_job_is_resubmitted_then_named(tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert submitit
    todo, results = units(tmp_path)
    failures = SlurmExecutor(tmp_path / "jobs", retries=1, local=True).run(todo, results, Silent())
    assert len(failures) == 1 and failures[0].unit.startswith("mamba/flaky (job ")
    assert "mamba fails here on purpose" in failures[0].reason
    submitted = len(list((tmp_path / "jobs").glob("*_submitted.pkl")))
    assert submitted == len(DESIGNS) + 1  # the failed job went again, once
    assert sorted(r.variant for r in results.load()) == ["c-local-global", "llama"]
    message = str(UnitsFailed(failures))
    assert message.startswith("1 unit failed") and "mamba/flaky" in message
    assert UnitsFailed.exit_code == 1


def test_a_missing_engine_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(HymbaBenchError, match=r'ray is not installed: pip install "hymba-bench\[ray\]"'):
        make_executor(ExecutorOptions("ray"), tmp_path)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(HymbaBenchError, match=r"hymba-bench\[slurm\]"):
        make_executor(ExecutorOptions("slurm"), tmp_path)
    with pytest.raises(HymbaBenchError, match="expected one of local, ray, slurm") as caught:
        make_executor(ExecutorOptions("k8s"), tmp_path)
    assert caught.value.param == "executor"


@pytest.mark.slow
def test_a_sweep_runs_its_units_through_an_engine(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    from hymba_bench.bench.sweep import sweep

    common = {"variants": ["llama", "c-local-global"],
              "bench": BenchOverrides(batch=2, gen_tokens=2, repeats=1)}
    sweep(RunOptions(out=tmp_path / "local", **common), [16, 48])
    sweep(RunOptions(out=tmp_path / "slurm", executor=SLURM_HERE, **common), [16, 48])

    def cache(out: Path) -> dict[tuple[str, int], int]:
        return {(r.variant, r.get("context")): r.value for r in RunDir(out, "sweep").records()
                if r.metric == "cache_bytes"}

    assert cache(tmp_path / "slurm") == cache(tmp_path / "local") and len(cache(tmp_path / "local")) == 4
    assert (tmp_path / "slurm" / "sweep_throughput.png").is_file()


class Counting(Silent):
    """How much of the run's (design, stage) pairs the run says is done."""

    def __init__(self) -> None:
        self.done = 0.0

    def advance(self, share: float = 1.0) -> None:
        self.done += share


@pytest.mark.slow
def test_seeds_are_units_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 seeds each design's accuracy stage is 2 units (one per seed, anywhere), then the
    mean over both, recorded by the driver without training again."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    budget = {"steps": 3, "batch_size": 4, "warmup": 1, "eval_items": 16, "eval_batch_size": 16,
              "seeds": 2}
    progress = Counting()
    run(RunOptions(["llama", "mamba"], out=out, skip={"cache", "throughput"},
                   train=BudgetOverrides(**budget), executor=SLURM_HERE), progress)
    assert progress.done == pytest.approx(2)  # one stage for each of 2 designs, not 4 units
    records = RunDir(out).records()
    assert len(list((out / "slurm").glob("*_submitted.pkl"))) == 4  # 2 designs x 2 seeds
    for name in ("llama", "mamba"):
        per_seed = [r for r in records.of(name) if r.metric == "recall_synthetic_pct"]
        assert sorted(r.get("train_seed") for r in per_seed) == [0, 1]  # each trained once
        recall = records.get(name, "recall_pct")
        assert recall.get("seeds") == 2
        assert recall.value == pytest.approx(sum(r.value for r in per_seed) / 2)


def slurm_is_up() -> bool:
    """A Slurm cluster answers here (e.g. `scripts/slurm-single-node.sh`): a node is up."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states)


needs_slurm = pytest.mark.skipif(not slurm_is_up(),
                                 reason="no Slurm cluster here (scripts/slurm-single-node.sh makes one)")


@pytest.mark.slow
@needs_slurm
def test_a_real_slurm_cluster_runs_the_roadmap_units(local_run: Path, tmp_path: Path) -> None:
    """Through sbatch, from the command line, as a user would: the same exact figures as the
    local run, the tables written, then a resume that submits nothing."""
    pytest.importorskip("submitit")
    out = tmp_path / "slurm"
    fast = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    cmd = [sys.executable, "-m", "hymba_bench.cli", "run", "--variants", ",".join(DESIGNS),
           "--skip", "accuracy", *fast, "--executor", "slurm", "--slurm-time", "10",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert exact(out) == exact(local_run)
    assert all(RunDir(out).records().value(name, "decode_tok_s") > 0 for name in DESIGNS)
    assert (out / "roadmap.md").is_file()
    scripts = [p.read_text() for p in sorted((out / "slurm").glob("*_submission.sh"))]
    assert scripts and all("#SBATCH" in text for text in scripts)  # sbatch's, not a stand-in's
    # the throughput array had nodes of its own, the cache array one core per job
    assert sum("#SBATCH --exclusive" in text for text in scripts) == 1
    assert sum("#SBATCH --cpus-per-task=1" in text for text in scripts) == 1
    submitted = len(list((out / "slurm").glob("*_submitted.pkl")))
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(list((out / "slurm").glob("*_submitted.pkl"))) == submitted


def test_slurm_asks_for_what_ray_asks_for() -> None:
    """A GPU per CUDA unit; on the CPU a node of its own for a throughput unit (timed alone,
    every core), one core and one torch thread for the others."""
    from hymba_bench.executors import resources, slurm_request

    class On:
        def __init__(self, name: str, device: str) -> None:
            self.name, self.device, self.timed = name, device, name == "throughput"

    job = Job(Design(1, resolve("llama")), frozenset({"params"}))
    stamp = Stamp({"device": "test"}, "tiny")

    def unit(stage: str, device: str) -> Unit:
        return Unit(On(stage, device), job, stamp)  # type: ignore[arg-type]

    assert slurm_request(unit("throughput", "cuda"), None) == ({"slurm_gpus_per_task": 1}, None)
    assert slurm_request(unit("accuracy", "cuda:0"), 2) == ({"slurm_gpus_per_task": 2}, None)
    assert slurm_request(unit("throughput", "cpu"), None) == ({"slurm_exclusive": True}, None)
    assert slurm_request(unit("cache", "cpu"), None) == ({"cpus_per_task": 1}, 1)
    assert resources(unit("throughput", "cpu"), 16) == {"num_cpus": 16}
    assert resources(unit("cache", "cpu"), 16) == {"num_cpus": 1}
    assert resources(unit("accuracy", "cuda"), 16) == {"num_gpus": 1, "num_cpus": 1}
    from hymba_bench.accuracy.stage import AccuracyStage
    from hymba_bench.bench.stages import CacheStage, ContextStage, ThroughputStage

    timed = {c.__name__: getattr(c, "timed", False)
             for c in (CacheStage, ThroughputStage, ContextStage, AccuracyStage)}
    assert timed == {"CacheStage": False, "ThroughputStage": True, "ContextStage": True,
                     "AccuracyStage": False}


class KilledFor(FailsFor):
    """A stage whose process is killed (SIGKILL, as the OOM killer or a pre-emption would) for
    one design: nothing of that unit can be written, nothing can be caught."""

    def run(self, jobs: list[Job], report: object) -> Iterator[Record]:
        for job in jobs:
            yield Record.measured(job.name, "params", 1)
            if job.name == self.victim:
                os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
@needs_slurm
def test_a_killed_slurm_job_is_resubmitted_then_named(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    todo, results = units(tmp_path)
    todo = [Unit(KilledFor("mamba"), u.job, u.stamp) for u in todo]
    executor = SlurmExecutor(tmp_path / "jobs", retries=1, time_min=10)
    failures = executor.run(todo, results, Silent())
    assert len(failures) == 1 and failures[0].unit.startswith("mamba/flaky (job ")
    # said by submitit where accounting (sacct) is on, by the controller's state where it is off
    reason = failures[0].reason
    assert "without a result" in reason or "has not produced any output" in reason, reason
    assert len(list((tmp_path / "jobs").glob("*_submitted.pkl"))) == len(DESIGNS) + 1
    # the killed unit's records were yielded but never written: a unit's records land together
    assert sorted(r.variant for r in results.load()) == ["c-local-global", "llama"]
