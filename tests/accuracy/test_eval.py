"""The task suite loads offline, the synthetic recall and bits-per-byte tasks run end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hymba_bench.accuracy.adapter import HymbaBenchLM
from hymba_bench.accuracy.evaluate import evaluate, parse_suites, tasks_dir
from hymba_bench.errors import HymbaBenchError


@pytest.fixture(scope="module")
def lm() -> HymbaBenchLM:
    torch.manual_seed(0)
    return HymbaBenchLM("c-local-global", "tiny", batch_size=8)


def test_task_yamls_load_offline() -> None:
    from lm_eval.tasks import TaskManager

    names = set(TaskManager(include_path=str(tasks_dir())).all_tasks)
    assert {"hymba_commonsense", "hymba_recall", "hymba_recall_synthetic", "hymba_text_bpb"} <= names


def test_synthetic_recall_runs(lm: HymbaBenchLM, tmp_path: Path) -> None:
    out = evaluate(lm, ["recall_synthetic"], limit=12,
                   metadata={"seed": 5, "data_dir": str(tmp_path), "pairs": 6, "queries": 3})
    value = out.values["hymba_recall_synthetic/contains"]
    assert 0.0 <= value <= 1.0 and out.n["hymba_recall_synthetic/contains"] == 12
    assert out.values["recall_synthetic_pct"] == pytest.approx(100 * value)
    assert list(tmp_path.glob("recall_synthetic_s5_*.jsonl"))


@pytest.mark.parametrize(("suites", "library"), [(["recall_synthetic"], False),
                                                 (["recall_synthetic", "text_bpb"], False),
                                                 (["recall_synthetic", "recall"], True)])
def test_lm_eval_library_indexed_only_for_the_paper_suites(monkeypatch, suites, library) -> None:
    """Our suites live in tasks/; indexing lm-eval's library (about 10 s) is for the paper's."""
    import lm_eval.tasks

    seen = []

    class Manager:
        def __init__(self, **kwargs) -> None:
            seen.append(kwargs["include_defaults"])
            raise RuntimeError("stop here")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Manager)
    with pytest.raises(RuntimeError, match="stop here"):
        evaluate(object(), suites)
    assert seen == [library]


def test_bits_per_byte_equals_direct_computation(lm: HymbaBenchLM, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("x" * 900 + "Now is the winter of our discontent made glorious summer. " * 2)
    out = evaluate(lm, ["text_bpb"], metadata={"text_path": str(text), "doc_chars": 4096})
    tail = text.read_text()[int(len(text.read_text()) * 0.9):]
    (ll,) = lm.loglikelihood_rolling([type("R", (), {"args": (tail,)})()])
    expected = -ll / math.log(2) / len(tail.encode())
    assert out.values["text_bpb"] == pytest.approx(expected, rel=1e-5)


def test_missing_text_gives_a_reason(lm: HymbaBenchLM) -> None:
    out = evaluate(lm, ["text_bpb"], metadata={"text_path": "/no/such.txt"})
    assert "text_bpb" not in out.values
    assert "no such file" in out.missing["hymba_text_bpb/bits_per_byte"]


def test_unknown_suite() -> None:
    with pytest.raises(HymbaBenchError, match="unknown suite 'trivia'"):
        parse_suites("recall,trivia")


def test_the_paper_suites_are_the_task_groups_in_tasks() -> None:
    """The task lists live in tasks/ (data); the paper's metric convention is applied to them."""
    from hymba_bench.accuracy.evaluate import SUITES

    assert SUITES["commonsense"] == {
        "lambada_openai": "acc", "piqa": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm",
        "hellaswag": "acc_norm", "winogrande": "acc", "truthfulqa_mc2": "acc", "social_iqa": "acc"}
    assert SUITES["recall"] == {"swde": "contains", "squad_completion": "contains"}


def test_env_report_collected_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval asks for torch's environment report on every task; it is collected once (a
    second of subprocesses each time), and the real function is back afterwards."""
    import torch.utils.collect_env as collect_env

    from hymba_bench.accuracy import evaluate as evaluate_mod

    calls = []
    fake = lambda: calls.append(1) or f"report {len(calls)}"  # noqa: E731
    monkeypatch.setattr(collect_env, "get_pretty_env_info", fake)
    monkeypatch.setattr(evaluate_mod, "_ENV_REPORT", [])
    for _ in range(2):
        with evaluate_mod.env_report_once():
            assert [collect_env.get_pretty_env_info() for _ in range(3)] == ["report 1"] * 3
    assert calls == [1] and collect_env.get_pretty_env_info is fake
