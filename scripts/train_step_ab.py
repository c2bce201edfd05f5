"""Training-step time with the compiled CPU kernels against torch paths, or against the kernels
of another git revision, interleaved in one process.

    python scripts/train_step_ab.py b-parallel llama --torch rms_norm
    python scripts/train_step_ab.py b-parallel --torch causal_conv1d,rms_norm
    python scripts/train_step_ab.py b-parallel f-size --kernels-from HEAD

One proxy-training step at the profile's training shape (batch x the recall task's length, AdamW,
clipping), one thread, as the accuracy stage's workers run it. The two arms alternate in rounds
(the shared VM's speed drifts by 10-20% over minutes, so arms timed apart are not comparable);
the median and minimum step of each arm are printed. `--torch` names the ops (`backend_report`'s
keys) that the second arm runs on their torch path; `--kernels-from REV` builds the C++ kernels of
revision REV (`git show REV:hymba_bench/ops/csrc/...`) and runs the second arm on them, through
this tree's ctypes calls (so for changes inside the kernels, not to their signatures).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import hymba_bench.ops as ops
from hymba_bench.accuracy.recall import RecallSpec
from hymba_bench.design.registry import resolve
from hymba_bench.model.lm import instantiate
from hymba_bench.ops import cpu_kernel
from hymba_bench.settings import train_budget

TORCH_PATHS = {  # op -> (its path function in ops, the torch path it falls back to)
    "selective_scan": ("_scan_path", ("torch-chunked", ops.selective_scan_chunked)),
    "causal_conv1d": ("_conv_path", ("torch-conv1d", ops.causal_conv1d_torch)),
    "rms_norm": ("_norm_path", ("torch", ops.rms_norm_torch)),
}


Arm = Callable[[], None]  # installs what the arm runs (paths in `ops`, a kernel library)


def torch_arm(names: list[str]) -> Arm:
    def install() -> None:
        for n in names:
            setattr(ops, TORCH_PATHS[n][0], lambda cuda, _p=TORCH_PATHS[n][1]: _p)
    return install


def library_arm(load: Callable[[], tuple[Any, str]]) -> Arm:
    def install() -> None:
        cpu_kernel._load = load  # `_lib()` asks `_load()` on every call
    return install


def kernels_from(rev: str) -> Callable[[], tuple[Any, str]]:
    """The kernel library built from revision `rev`'s sources."""
    with tempfile.TemporaryDirectory(prefix="hymba-kernels-") as tmp:  # the build is cached
        for path in (*cpu_kernel.SOURCES, *cpu_kernel.HEADERS):
            rel = path.relative_to(Path(cpu_kernel.__file__).parents[2]).as_posix()
            show = subprocess.run(["git", "show", f"{rev}:{rel}"], capture_output=True, text=True)
            if show.returncode != 0:
                raise SystemExit(f"--kernels-from {rev}: {show.stderr.strip().splitlines()[0]}")
            (Path(tmp) / path.name).write_text(show.stdout)
        lib, why = cpu_kernel.load_from(Path(tmp))
    if lib is None:
        raise SystemExit(f"--kernels-from {rev}: {why}")
    return lambda: (lib, "")


def time_arms(name: str, profile: str, arms: dict[str, Arm], rounds: int,
              steps: int) -> dict[str, list[float]]:
    """Seconds per training step of `name`, per arm."""
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
        for arm, install in arms.items():
            install()
            step()  # warm-up after the switch
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times[arm].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("designs", nargs="+")
    against = ap.add_mutually_exclusive_group(required=True)
    against.add_argument("--torch", help=f"comma list of {', '.join(TORCH_PATHS)}")
    against.add_argument("--kernels-from", metavar="REV", help="a git revision's C++ kernels")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="steps per arm per round")
    args = ap.parse_args()
    paths = {n: getattr(ops, path) for n, (path, _) in TORCH_PATHS.items()}
    load = cpu_kernel._load

    def restore() -> None:  # the first arm: this tree's kernels, every path as dispatched
        for n, fn in paths.items():
            setattr(ops, TORCH_PATHS[n][0], fn)
        cpu_kernel._load = load

    arms: dict[str, Arm] = {"this tree": restore}
    if args.torch:
        names = args.torch.split(",")
        if unknown := [n for n in names if n not in TORCH_PATHS]:
            ap.error(f"--torch: unknown op {unknown[0]!r}; expected {', '.join(TORCH_PATHS)}")
        arms["torch " + args.torch] = torch_arm(names)
    else:
        arms[f"kernels of {args.kernels_from}"] = library_arm(kernels_from(args.kernels_from))
    torch.set_num_threads(1)
    for name in args.designs:
        times = time_arms(name, args.profile, arms, args.rounds, args.steps)
        restore()
        print(name, "ms per step (median, min):", "; ".join(
            f"{arm} {1e3 * statistics.median(t):.0f}, {1e3 * min(t):.0f}" for arm, t in times.items()))


if __name__ == "__main__":
    main()
