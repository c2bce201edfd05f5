"""Every budget a measurement runs under, read from a size profile's blocks.

`bench` (one block per device kind) -> `BenchSettings`; `train` -> `TrainBudget`; `eval` ->
`EvalBudget`. The profile YAML is the only source of their values: the dataclasses carry no
defaults, a block missing a key is an error naming the profile file, and overrides (the CLI's
flags, a library caller's keywords) replace single values, `None` meaning "the profile's":
`BenchOverrides` for the bench block, `BudgetOverrides` for the train and eval blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from hymba_bench.design.registry import Profile
from hymba_bench.errors import HymbaBenchError, expect_one_of

if TYPE_CHECKING:
    import torch

DECODE_MODES = ("auto", "eager", "compiled", "graph")  # how a decode step runs (bench.throughput)


@dataclass(frozen=True)
class BenchSettings:
    """Throughput: decode `gen_tokens` steps at `batch` after `context` cached tokens; prefill
    `context` tokens at `prefill_batch`; `warmup` untimed then `repeats` timed runs (median); a
    decode warm-up run is a few steps (`throughput.WARMUP_STEPS`), every step costing the same."""

    batch: int
    context: int
    gen_tokens: int
    prefill_batch: int
    warmup: int
    repeats: int
    dtype: str
    decode: str  # eager | compiled | graph | auto (see hymba_bench.bench.throughput)
    sliding_prefill: str  # blocked | flex: the sliding-window prefill kernel (ops.sliding)
    decode_kernels: str  # torch | triton: the decode step's fused kernels (ops.triton_decode)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    def at(self, **changes: Any) -> BenchSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainBudget:
    """Proxy training, the same for every design: `steps` x `batch_size` sequences of the
    synthetic recall task (`pairs` key-value pairs, `queries` asked), peak `lr` after `warmup`
    steps; `seeds` trainings from seeds `seed`, `seed` + 1, ..."""

    steps: int
    batch_size: int
    lr: float
    warmup: int
    seed: int
    seeds: int
    pairs: int
    queries: int


@dataclass(frozen=True)
class EvalBudget:
    """Evaluation through lm-eval: `eval_items` synthetic recall items drawn from `eval_seed`,
    `eval_batch_size` requests per forward pass; `paper_tasks`: the paper's suites run when their
    datasets are reachable; `commonsense_items`: each commonsense task's items when its data is
    the offline copy (a subsample drawn by `eval_seed`; null: the whole split)."""

    eval_items: int
    eval_seed: int
    eval_batch_size: int
    paper_tasks: list[str]
    commonsense_items: int | None


GroupT = TypeVar("GroupT")


def option_group(cls: type[GroupT], values: GroupT | dict[str, Any] | None, param: str) -> GroupT:
    """`values` as the dataclass `cls` of an option group (a library caller may give a dict of
    its fields); an unknown key raises, naming the known ones."""
    if isinstance(values, cls):
        return values
    given: dict[str, Any] = dict(values) if isinstance(values, dict) else {}
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in sorted(set(given) - set(known)):
        raise HymbaBenchError(f"unknown setting {key!r} (known: {', '.join(known)})", param=param)
    return cls(**given)


OverridesT = TypeVar("OverridesT", bound="Overrides")


@dataclass(frozen=True)
class Overrides:
    """Values that replace a profile block's; `None` keeps the profile's."""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def of(cls: type[OverridesT], values: OverridesT | dict[str, Any] | None,
           param: str) -> OverridesT:
        """`values` as overrides (a library caller may give a dict); an unknown key raises."""
        return option_group(cls, values, param)


@dataclass(frozen=True)
class BenchOverrides(Overrides):
    """The bench block's values a run replaces (`--batch`, `--context` ...)."""

    batch: int | None = None
    context: int | None = None
    gen_tokens: int | None = None
    prefill_batch: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    dtype: str | None = None
    decode: str | None = None
    sliding_prefill: str | None = None
    decode_kernels: str | None = None


@dataclass(frozen=True)
class BudgetOverrides(Overrides):
    """The train and eval blocks' values a run replaces (`--train-steps`, `--seeds` ...)."""

    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None
    seed: int | None = None
    seeds: int | None = None
    pairs: int | None = None
    queries: int | None = None
    eval_items: int | None = None
    eval_seed: int | None = None
    eval_batch_size: int | None = None
    paper_tasks: list[str] | None = None
    commonsense_items: int | None = None


B = TypeVar("B", BenchSettings, TrainBudget, EvalBudget)
POSITIVE = {"batch", "context", "gen_tokens", "prefill_batch", "repeats", "steps", "batch_size",
            "seeds", "pairs", "queries", "eval_items", "eval_batch_size", "commonsense_items"}
NULLABLE = {"commonsense_items"}  # ... or null (there: the whole split)


def _build(cls: type[B], block: dict[str, Any], where: str, overrides: Overrides | None) -> B:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(block) - set(names))
    if unknown:
        raise HymbaBenchError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(names)})")
    missing = [n for n in names if n not in block]
    if missing:
        raise HymbaBenchError(f"{where}: missing {', '.join(missing)} (the profile is the only "
                              "source of these values)")
    given = overrides.as_dict() if overrides is not None else {}
    values = {**block, **{k: v for k, v in given.items() if k in names}}
    for key in POSITIVE & set(names):
        value = values[key]
        if value is None and key in NULLABLE:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            what = "a positive integer or null" if key in NULLABLE else "a positive integer"
            raise HymbaBenchError(f"expected {what}, got {value!r}", param=key)
    return cls(**{k: values[k] for k in names})


def bench_settings(profile: Profile, device: torch.device | str,
                   overrides: BenchOverrides | None = None) -> BenchSettings:
    """The profile's `bench` block for this device kind (cpu or cuda), overrides applied."""
    import torch

    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    if kind not in profile.bench:
        raise HymbaBenchError(f"{profile.path}: bench: no {kind} block (throughput settings)")
    s = _build(BenchSettings, profile.bench[kind], f"{profile.path}: bench.{kind}", overrides)
    from hymba_bench.ops.sliding import SLIDING_PREFILL
    from hymba_bench.ops.triton_decode import DECODE_KERNELS, unavailable_reason

    expect_one_of(s.decode, DECODE_MODES, "decode")
    expect_one_of(s.sliding_prefill, SLIDING_PREFILL, "sliding_prefill")
    expect_one_of(s.decode_kernels, DECODE_KERNELS, "decode_kernels")
    if s.decode_kernels == "triton":
        why = unavailable_reason(kind)
        if why is not None:
            raise HymbaBenchError(why, param="decode_kernels")
        if s.decode == "compiled":
            raise HymbaBenchError("the Triton kernels run in eager or graph decode; `decode` "
                                  "compiled fuses with Inductor instead", param="decode_kernels")
    if s.decode == "graph" and kind != "cuda":
        raise HymbaBenchError("'graph' replays CUDA graphs and needs a CUDA device", param="decode")
    if not isinstance(s.warmup, int) or s.warmup < 0:
        raise HymbaBenchError(f"expected a non-negative integer, got {s.warmup!r}", param="warmup")
    if not isinstance(getattr(torch, str(s.dtype), None), torch.dtype):
        raise HymbaBenchError(f"expected a torch dtype name, got {s.dtype!r}", param="dtype")
    return s


def train_budget(profile: Profile, overrides: BudgetOverrides | None = None) -> TrainBudget:
    """The profile's `train` block, overrides applied; an impossible recall task raises."""
    from hymba_bench.accuracy.recall import RecallSpec

    budget = _build(TrainBudget, profile.train, f"{profile.path}: train", overrides)
    RecallSpec(pairs=budget.pairs, queries=budget.queries)  # raises on an impossible task
    return budget


def eval_budget(profile: Profile, overrides: BudgetOverrides | None = None) -> EvalBudget:
    return _build(EvalBudget, profile.eval, f"{profile.path}: eval", overrides)
