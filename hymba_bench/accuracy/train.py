"""Proxy training: the same small budget for every design, so accuracy comparisons are fair.

AdamW, linear warm-up then cosine decay, gradient clipping, a fixed seed. The checkpoint
directory holds `model.safetensors`, `config.json` and `trainer_state.pt` (optimizer, schedule,
step, data RNG), written atomically every `save_every` steps, so `resume` continues where an
interrupted run stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hymba_bench.accuracy.checkpoint import load_checkpoint, save_checkpoint
from hymba_bench.accuracy.recall import RecallSpec, training_example
from hymba_bench.accuracy.tokenizer import ByteTokenizer, check_vocab
from hymba_bench.errors import HymbaBenchError
from hymba_bench.files import atomic
from hymba_bench.settings import BudgetOverrides, TrainBudget

if TYPE_CHECKING:
    from hymba_bench.model.lm import HybridLM

STATE = "trainer_state.pt"
# Matrices that are not weights: decaying them would pull SSM decays / filter poles toward
# arbitrary values (mamba-ssm exempts A_log and D the same way) or shrink the meta tokens.
NO_DECAY = {"meta_tokens", "A_log", "log_rate", "theta", "residues"}


@dataclass
class TrainSettings:
    """One training run. The budget (steps to seed) comes from a profile's `train` block
    (`train_settings`); the rest is the recipe, the same for every design and profile."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: int
    seed: int
    save_every: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0


def train_settings(budget: TrainBudget, seq_len: int, seed: int) -> TrainSettings:
    """A training run under `budget` on sequences of `seq_len` tokens, from `seed`: checkpointed
    four times, warm-up no longer than the run."""
    return TrainSettings(steps=budget.steps, batch_size=budget.batch_size, seq_len=seq_len,
                         lr=budget.lr, warmup=min(budget.warmup, budget.steps), seed=seed,
                         save_every=max(1, budget.steps // 4))


def _fused_ok(model: HybridLM) -> bool:
    """The fused AdamW step (one kernel over all parameters: 6x faster than the per-tensor loop
    on the CPU) takes float parameters on CPU or CUDA; anything else keeps the loop."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(task: str, settings: TrainSettings, rng: random.Random,
            recall: RecallSpec | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(tokens (B, seq_len + 1), scored-target mask or None) for `recall` or `text:PATH`.

    Recall scores only the answers, as MQAR training does: keys and values are random, so the
    other positions carry no learnable signal and would only add noise. Text uses its first 90%.
    """
    tok = ByteTokenizer()
    if task == "recall":
        spec = recall or RecallSpec()
        while True:
            rows, masks = [], []
            for _ in range(settings.batch_size):
                text, answers = training_example(rng, spec)
                ids = [tok.bos_id, *tok.encode(text)][:settings.seq_len + 1]
                mask = [False] * len(ids)
                for a in answers:
                    if a + 1 < len(ids):
                        mask[a + 1] = True  # +1: the BOS in front
                pad = settings.seq_len + 1 - len(ids)
                rows.append(ids + [tok.eos_id] * pad)
                masks.append(mask + [False] * pad)
            yield torch.tensor(rows), torch.tensor(masks)
    elif task.startswith("text:"):
        path = Path(task[5:])
        if not path.is_file():
            raise HymbaBenchError(f"no such text file: {path}", param="task")
        data = path.read_bytes()
        train = data[: int(len(data) * 0.9)]
        if len(train) <= settings.seq_len + 1:
            raise HymbaBenchError(f"{path} is too short for seq_len {settings.seq_len}", param="task")
        while True:
            starts = [rng.randrange(len(train) - settings.seq_len - 1) for _ in range(settings.batch_size)]
            yield torch.tensor([list(train[s:s + settings.seq_len + 1]) for s in starts]), None
    else:
        raise HymbaBenchError(f"expected 'recall' or 'text:PATH', got {task!r}", param="task")


def train(model: HybridLM, variant: str, profile: str, task: str, settings: TrainSettings,
          out: Path, resume: bool = False, recall: RecallSpec | None = None,
          on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train `model` in place; returns a summary with the loss history."""
    check_vocab(model.cfg.vocab_size, ByteTokenizer.vocab_size, variant)
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    opt = _optimizer(model, settings)
    step, losses = 0, []
    state_path = Path(out) / STATE
    if resume and state_path.is_file():
        loaded, _ = load_checkpoint(out, variant)
        model.load_state_dict(loaded.state_dict())
        try:
            state = torch.load(state_path, weights_only=False)
        except Exception as exc:  # truncated or foreign file: say which, in one line
            raise HymbaBenchError(f"{state_path}: cannot read the trainer state "
                                  f"({type(exc).__name__}); delete it to restart training") from None
        if state["settings"] != asdict(settings):
            raise HymbaBenchError(f"{out} was trained with other settings; "
                                  "use the same ones or a new `out`", param="resume")
        opt.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    data = batches(task, settings, rng, recall)
    model.train()
    while step < settings.steps:
        ids, scored = next(data)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        loss = _step(model, opt, ids, scored, settings)
        step += 1
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if step % settings.save_every == 0 or step == settings.steps:
            _save(model, variant, profile, task, settings, out, opt, step, losses, rng)
    model.eval()
    return {"steps": step, "losses": losses, "final_loss": losses[-1] if losses else math.nan}


@dataclass
class TrainPlan:
    """What `hymba-bench train` trains: the model (initialised from the budget's seed), its
    settings and where its checkpoint goes."""

    variant: str
    profile: str
    task: str
    model: HybridLM
    settings: TrainSettings
    out: Path

    def run(self, resume: bool = False,
            on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
        return train(self.model, self.variant, self.profile, self.task, self.settings, self.out,
                     resume=resume, on_step=on_step)


def plan_training(variant: str, profile: str, task: str = "recall",
                  overrides: BudgetOverrides | None = None, seq_len: int | None = None,
                  out: Path | None = None, variant_files: list[Path] | None = None) -> TrainPlan:
    """A design's training under the profile's budget with `overrides`; sequences of `seq_len`
    tokens (default: the recall task's length, or the design's `max_seq_len` for text)."""
    from hymba_bench import build_model
    from hymba_bench.design.registry import get_profile
    from hymba_bench.settings import train_budget

    budget = train_budget(get_profile(profile), overrides)
    model = build_model(variant, profile, variant_files=variant_files, seed=budget.seed)
    length = seq_len or (RecallSpec(budget.pairs, budget.queries).rendered_length()
                         if task == "recall" else model.cfg.max_seq_len)
    out = out or Path("runs/checkpoints") / f"{variant}-{profile}-{task.split(':')[0]}"
    return TrainPlan(variant, profile, task, model, train_settings(budget, length, budget.seed), out)


def _optimizer(model: HybridLM, settings: TrainSettings) -> torch.optim.Optimizer:
    params = list(model.named_parameters())
    decay = [p for n, p in params if p.dim() >= 2 and n.rsplit(".", 1)[-1] not in NO_DECAY]
    no_decay = [p for n, p in params if p.dim() < 2 or n.rsplit(".", 1)[-1] in NO_DECAY]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr,
                             betas=(0.9, 0.95), fused=_fused_ok(model))


def _step(model: HybridLM, opt: torch.optim.Optimizer, ids: torch.Tensor,
          scored: torch.Tensor | None, settings: TrainSettings) -> torch.Tensor:
    """One optimizer step on `ids` (B, seq_len + 1); the language-model loss (without MoE's)."""
    logits = model(ids[:, :-1])  # (B, L, V)
    targets = ids[:, 1:] if scored is None else ids[:, 1:].masked_fill(~scored[:, 1:], -100)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    aux = model.aux_loss() if hasattr(model, "aux_loss") else None  # MoE load balancing
    opt.zero_grad(set_to_none=True)
    (loss if aux is None else loss + aux).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    opt.step()
    return loss


def step_seconds(model: HybridLM, settings: TrainSettings,
                 recall: RecallSpec | None = None) -> float:
    """Seconds one training step of `model` takes at `settings` (the second of two, the first
    paying for kernel builds): what an up-front estimate of a long budget multiplies. The model's
    weights change; build a throwaway one."""
    opt = _optimizer(model, settings)
    data = batches("recall", settings, random.Random(settings.seed), recall)
    model.train()
    elapsed = 0.0
    for _ in range(2):
        ids, scored = next(data)
        start = time.perf_counter()
        _step(model, opt, ids, scored, settings)
        elapsed = time.perf_counter() - start
    return elapsed


def _save(model: HybridLM, variant: str, profile: str, task: str, settings: TrainSettings,
          out: Path, opt: torch.optim.Optimizer, step: int, losses: list[float],
          rng: random.Random) -> None:
    save_checkpoint(model, out, variant, profile,
                    {"task": task, "step": step, "train": asdict(settings)})
    with atomic(Path(out) / STATE) as tmp:
        torch.save({"optimizer": opt.state_dict(), "step": step, "losses": losses,
                    "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                    "settings": asdict(settings)}, tmp)
