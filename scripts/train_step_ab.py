"""Training-step time with the compiled CPU kernels against torch paths, interleaved in one process.

    python scripts/train_step_ab.py b-parallel llama --torch rms_norm
    python scripts/train_step_ab.py b-parallel --torch causal_conv1d,rms_norm

One proxy-training step at the profile's training shape (batch x the recall task's length, AdamW,
clipping), one thread, as the accuracy stage's workers run it. The two arms alternate in rounds
(the shared VM's speed drifts by 10-20% over minutes, so arms timed apart are not comparable);
the median and minimum step of each arm are printed. `--torch` names the ops (`backend_report`'s
keys) that the second arm runs on their torch path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import hymba_bench.ops as ops
from hymba_bench.accuracy.recall import RecallSpec
from hymba_bench.design.registry import resolve
from hymba_bench.model.lm import instantiate
from hymba_bench.settings import train_budget

TORCH_PATHS = {  # op -> (its path function in ops, the torch path it falls back to)
    "selective_scan": ("_scan_path", ("torch-chunked", ops.selective_scan_chunked)),
    "causal_conv1d": ("_conv_path", ("torch-conv1d", ops.causal_conv1d_torch)),
    "rms_norm": ("_norm_path", ("torch", ops.rms_norm_torch)),
}


def time_arms(name: str, profile: str, arms: dict[str, dict[str, Callable[[bool], Any]]],
              rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per training step of `name`, per arm (each arm: op -> path function to install)."""
    rv = resolve(name, profile)
    budget = train_budget(rv.profile)
    length = RecallSpec(pairs=budget.pairs, queries=budget.queries).rendered_length()
    model = instantiate(rv.config, "cpu", seed=0)
    ids = torch.randint(0, rv.config.vocab_size, (budget.batch_size, length + 1),
                        generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, fused=True)

    def step() -> None:
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(rounds):
        for arm, paths in arms.items():
            for n, fn in paths.items():
                setattr(ops, TORCH_PATHS[n][0], fn)
            step()  # warm-up after the switch
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times[arm].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("designs", nargs="+")
    ap.add_argument("--torch", required=True, help=f"comma list of {', '.join(TORCH_PATHS)}")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="steps per arm per round")
    args = ap.parse_args()
    names = args.torch.split(",")
    if unknown := [n for n in names if n not in TORCH_PATHS]:
        ap.error(f"--torch: unknown op {unknown[0]!r}; expected {', '.join(TORCH_PATHS)}")
    compiled = {n: getattr(ops, TORCH_PATHS[n][0]) for n in names}
    arms = {"compiled": compiled,
            "torch " + args.torch: {n: (lambda cuda, _p=TORCH_PATHS[n][1]: _p) for n in names}}
    torch.set_num_threads(1)
    for name in args.designs:
        times = time_arms(name, args.profile, arms, args.rounds, args.steps)
        for n, fn in compiled.items():
            setattr(ops, TORCH_PATHS[n][0], fn)
        print(name, "ms per step (median, min):", "; ".join(
            f"{arm} {1e3 * statistics.median(t):.0f}, {1e3 * min(t):.0f}" for arm, t in times.items()))

if __name__ == "__main__":
    main()
