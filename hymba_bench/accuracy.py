"""The `accuracy` stage of `hymba-bench run`: proxy-train every design under one budget, then
evaluate it through lm-eval.

The budget (steps, batch, learning rate, the recall task's size) comes from the profile's `train`
block and is the same for every design: no per-design tuning, so the comparison is honest. The
checkpoint lands in `<out>/checkpoints/<variant>` and training resumes there after an interruption.

What fills the table:
- Recall (%): lm-eval's SWDE and SQuAD-completion when their data is reachable (the hub, or a
  `--data-dir` cache); otherwise the synthetic associative-recall task after proxy training,
  marked as such (`recall_source`) and explained in a footnote.
- Commonsense (%): the paper's eight tasks when their data is reachable; otherwise empty, with the
  reason. A proxy-trained byte-level model scores chance on them anyway, so nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hymba_bench.errors import HymbaBenchError
from hymba_bench.registry import Profile, ResolvedVariant

SYNTHETIC = "synthetic associative recall"  # `recall_source` of a proxy Recall figure
PAPER_RECALL = "swde+squad_completion"  # ... and of the paper's own tasks


@dataclass
class AccuracyBudget:
    """The profile's `train` and `eval` blocks."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 30
    seed: int = 0
    pairs: int = 8
    queries: int = 8
    eval_items: int = 512
    eval_seed: int = 1234
    eval_batch_size: int = 64
    paper_tasks: list[str] = field(default_factory=lambda: ["commonsense", "recall"])

    @classmethod
    def from_profile(cls, profile: Profile, overrides: dict[str, Any] | None = None) -> AccuracyBudget:
        blocks = {**profile.train, **profile.eval}
        values = {**blocks, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise HymbaBenchError(f"{profile.path}: train/eval: unknown key {unknown[0]!r}")
        budget = cls(**values)
        for key in ("steps", "batch_size", "pairs", "queries", "eval_items", "eval_batch_size"):
            value = getattr(budget, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HymbaBenchError(f"{key}: expected a positive integer, got {value!r}")
        from hymba_bench.recall import RecallSpec

        RecallSpec(pairs=budget.pairs, queries=budget.queries)  # raises on an impossible task
        return budget


def use_data_dir(data_dir: Path | None) -> None:
    """Point the Hugging Face datasets cache at local copies (see the README for the layout)."""
    if data_dir is None:
        return
    if not Path(data_dir).is_dir():
        raise HymbaBenchError(f"--data-dir: {data_dir} is not a directory")
    os.environ["HF_DATASETS_CACHE"] = str(Path(data_dir).resolve())


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether lm-eval could download the paper's datasets; offline runs skip them at once."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn` with stderr held back: lm-eval's and datasets' progress bars would tear through
    the run's own; failures still surface, as exceptions."""
    from hymba_bench.evaluate import quiet_stderr

    with quiet_stderr():
        return fn(*args, **kwargs)


def measure_accuracy(rv: ResolvedVariant, out: Path, device: str, budget: AccuracyBudget,
                     record: Callable[..., None], wanted: set[str],
                     on_step: Callable[[int, float], None] | None = None,
                     paper_data: bool = False) -> None:
    """Train `rv` under `budget` (resuming a checkpoint in `out`), evaluate, and record."""
    import torch

    from hymba_bench.evaluate import evaluate
    from hymba_bench.lm_eval_adapter import HymbaBenchLM
    from hymba_bench.model.lm import HybridLM
    from hymba_bench.recall import RecallSpec
    from hymba_bench.train import TrainSettings, train

    name = rv.config.name
    spec = RecallSpec(pairs=budget.pairs, queries=budget.queries)
    settings = TrainSettings(steps=budget.steps, batch_size=budget.batch_size,
                             seq_len=spec.rendered_length(), lr=budget.lr,
                             warmup=min(budget.warmup, budget.steps), seed=budget.seed,
                             save_every=max(1, budget.steps // 4))
    torch.manual_seed(budget.seed)
    with torch.device(device):
        model = HybridLM(rv.config)
    ckpt = out / "checkpoints" / name
    summary = train(model, name, rv.profile.name, "recall", settings, ckpt,
                    resume=(ckpt / "trainer_state.pt").is_file(), recall=spec,
                    on_step=on_step)
    train_info = {"train_steps": summary["steps"], "train_batch": budget.batch_size,
                  "train_lr": budget.lr, "recall_pairs": budget.pairs,
                  "recall_queries": budget.queries, "checkpoint": str(ckpt)}
    record("train_loss", summary["final_loss"], **train_info)

    lm = HymbaBenchLM(model=model.eval(), batch_size=budget.eval_batch_size, device=device)
    metadata = {"seed": budget.eval_seed, "n_items": budget.eval_items, "pairs": budget.pairs,
                "queries": budget.queries, "data_dir": str(out / "data")}
    synthetic = _quiet(evaluate, lm, ["recall_synthetic"], metadata=metadata)
    if "recall_synthetic_pct" not in synthetic.values:
        raise HymbaBenchError(f"{name}: the synthetic recall task did not run: "
                              f"{synthetic.missing.get('recall_synthetic_pct', 'no result')}")
    syn_value = synthetic.values["recall_synthetic_pct"]
    syn_extra = {"stderr": synthetic.stderr.get("recall_synthetic_pct"),
                 "n": synthetic.n.get("hymba_recall_synthetic/contains"), **train_info}
    record("recall_synthetic_pct", syn_value, **syn_extra)

    paper = _quiet(evaluate, lm, [s for s in budget.paper_tasks if s in ("commonsense", "recall")]) \
        if paper_data else None
    if "recall_pct" in wanted:
        if paper is not None and "recall_pct" in paper.values:
            record("recall_pct", paper.values["recall_pct"], stderr=paper.stderr.get("recall_pct"),
                   recall_source=PAPER_RECALL, **train_info)
        else:
            record("recall_pct", syn_value, recall_source=SYNTHETIC, **syn_extra)
    if "commonsense_pct" in wanted:
        if paper is not None and "commonsense_pct" in paper.values:
            record("commonsense_pct", paper.values["commonsense_pct"],
                   stderr=paper.stderr.get("commonsense_pct"), **train_info)
        else:
            why = (paper.missing.get("commonsense_pct") if paper is not None else None) or \
                "the paper's commonsense tasks need lm-eval's datasets: run with hub access or " \
                "--data-dir (a datasets cache)"
            record("note", why, stage="accuracy", metric_missing="commonsense_pct")
