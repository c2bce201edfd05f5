"""Budgets come from the profile and nowhere else."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from hymba_bench.design.registry import get_profile
from hymba_bench.errors import HymbaBenchError
from hymba_bench.settings import (
    BenchOverrides,
    BenchSettings,
    BudgetOverrides,
    EvalBudget,
    TrainBudget,
    bench_settings,
    eval_budget,
    train_budget,
)


def test_no_budget_carries_a_default_of_its_own() -> None:
    for cls in (BenchSettings, TrainBudget, EvalBudget):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), cls


def test_values_are_the_profiles_with_overrides_applied() -> None:
    profile = get_profile("tiny")
    data = yaml.safe_load(profile.path.read_text())
    assert dataclasses.asdict(train_budget(profile)) == data["train"]
    assert dataclasses.asdict(eval_budget(profile)) == data["eval"]
    assert dataclasses.asdict(bench_settings(profile, "cpu")) == data["bench"]["cpu"]
    assert dataclasses.asdict(bench_settings(profile, "cuda")) == data["bench"]["cuda"]
    s = bench_settings(profile, "cpu", BenchOverrides(batch=4, context=None))  # None: the profile's
    assert s.batch == 4 and s.context == data["bench"]["cpu"]["context"]
    assert train_budget(profile, BudgetOverrides(steps=7)).steps == 7


def test_a_block_missing_a_key_or_holding_a_stray_one_names_the_file() -> None:
    profile = get_profile("tiny")
    short = dataclasses.replace(profile, train={k: v for k, v in profile.train.items() if k != "lr"})
    with pytest.raises(HymbaBenchError, match=r"tiny.yaml: train: missing lr"):
        train_budget(short)
    stray = dataclasses.replace(profile, eval={**profile.eval, "eval_itmes": 3})
    with pytest.raises(HymbaBenchError, match=r"tiny.yaml: eval: unknown key 'eval_itmes'"):
        eval_budget(stray)
    with pytest.raises(HymbaBenchError, match="expected a positive integer") as caught:
        bench_settings(profile, "cpu", BenchOverrides(repeats=0))
    assert caught.value.param == "repeats"


def test_the_train_command_defaults_to_the_profile(tmp_path) -> None:
    """`hymba-bench train` without flags runs the profile's budget (it had its own defaults)."""
    import json
    import subprocess
    import sys

    from hymba_bench.accuracy.recall import RecallSpec

    out = subprocess.run([sys.executable, "-m", "hymba_bench.cli", "train", "llama", "--steps", "2",
                          "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ran = json.loads((tmp_path / "c" / "config.json").read_text())["train"]
    budget = train_budget(get_profile("tiny"))
    assert ran["steps"] == 2 and ran["batch_size"] == budget.batch_size and ran["lr"] == budget.lr
    assert ran["seq_len"] == RecallSpec(budget.pairs, budget.queries).rendered_length()
