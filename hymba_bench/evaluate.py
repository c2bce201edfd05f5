"""Accuracy through lm-eval: the paper's task suites, the synthetic recall task and bits per byte.

Each task runs on its own, so a task whose data cannot be reached (offline, no local copy) leaves
its cell empty with the reason, and never stops the others or invents a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hymba_bench.errors import HymbaBenchError

# The Mamba paper's convention, followed by Hymba: acc, except acc_norm for HellaSwag and ARC-C.
COMMONSENSE = {"lambada_openai": "acc", "piqa": "acc", "arc_easy": "acc",
               "arc_challenge": "acc_norm", "hellaswag": "acc_norm", "winogrande": "acc",
               "truthfulqa_mc2": "acc", "social_iqa": "acc"}
RECALL = {"swde": "contains", "squad_completion": "contains"}
SUITES: dict[str, dict[str, str]] = {
    "commonsense": COMMONSENSE,
    "recall": RECALL,
    "recall_synthetic": {"hymba_recall_synthetic": "contains"},
    "text_bpb": {"hymba_text_bpb": "bits_per_byte"},
}
# suite -> (aggregate metric, scale): the mean over the suite's tasks
AGGREGATES = {"commonsense": ("commonsense_pct", 100.0), "recall": ("recall_pct", 100.0),
              "recall_synthetic": ("recall_synthetic_pct", 100.0), "text_bpb": ("text_bpb", 1.0)}


@dataclass
class EvalOutcome:
    values: dict[str, float] = field(default_factory=dict)  # metric -> value
    stderr: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)  # metric -> items scored
    missing: dict[str, str] = field(default_factory=dict)  # metric or task -> why it has no value


def tasks_dir() -> Path:
    from hymba_bench.registry import _package_data

    return _package_data("tasks")


def parse_suites(text: str) -> list[str]:
    suites = [s.strip() for s in text.split(",") if s.strip()]
    for s in suites:
        if s not in SUITES:
            raise HymbaBenchError(f"--tasks: unknown suite {s!r}; valid: {', '.join(SUITES)}")
    if not suites:
        raise HymbaBenchError("--tasks: expected at least one suite")
    return suites


def evaluate(lm: Any, suites: list[str], limit: int | None = None,
             metadata: dict[str, Any] | None = None) -> EvalOutcome:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir()), metadata=metadata or {})
    out = EvalOutcome()
    for suite in suites:
        scores, errors = [], []
        for task, metric in SUITES[suite].items():
            key = f"{task}/{metric}"
            try:
                res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager,
                                              limit=limit, bootstrap_iters=100,
                                              log_samples=False, verbosity="ERROR")
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
            scores.append(value)
        name, scale = AGGREGATES[suite]
        if errors:
            out.missing[name] = f"{len(errors)} of {len(SUITES[suite])} tasks unavailable; " + errors[0]
        elif scores:
            out.values[name] = scale * sum(scores) / len(scores)
            ses = [out.stderr.get(f"{t}/{m}") for t, m in SUITES[suite].items()]
            if all(s is not None for s in ses):  # the mean's standard error, tasks independent
                out.stderr[name] = scale * math.sqrt(sum(s * s for s in ses)) / len(ses)  # type: ignore[operator]
    return out
