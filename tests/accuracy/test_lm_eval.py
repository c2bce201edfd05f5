"""The lm-eval adapter: scores equal direct computations, generation equals the no-cache loop."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hymba_bench.accuracy.adapter import HymbaBenchLM
from hymba_bench.accuracy.tokenizer import ByteTokenizer
from hymba_bench.model.generate import greedy_generate, greedy_generate_ref
from tests.helpers import VARIANTS, small_model


def req(*args):
    return SimpleNamespace(args=args)


@pytest.fixture(scope="module")
def lm() -> HymbaBenchLM:
    torch.manual_seed(0)
    return HymbaBenchLM("e-meta-tokens", "tiny", batch_size=3)


def direct_loglikelihood(lm: HymbaBenchLM, context: str, continuation: str) -> float:
    tok = lm.tokenizer
    ctx = tok.encode(context) or [tok.bos_id]
    cont = tok.encode(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = F.log_softmax(lm.model(ids[:, :-1]), dim=-1)[0]
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    text = "Hymba — hybrid heads ✓"
    assert tok.decode(tok.encode(text)) == text
    assert all(i < 256 for i in tok.encode(text))


def test_loglikelihood_equals_direct_computation(lm: HymbaBenchLM) -> None:
    pairs = [("The cat sat on the", " mat"), ("", "hello"), ("a b c ", "d"), ("x" * 40, " yz")]
    got = lm.loglikelihood([req(*p) for p in pairs])
    for (ctx, cont), (score, greedy) in zip(pairs, got, strict=True):
        assert score == pytest.approx(direct_loglikelihood(lm, ctx.rstrip(), ctx[len(ctx.rstrip()):] + cont),
                                      rel=1e-5, abs=1e-4)
        assert isinstance(greedy, bool)


def test_batch_size_does_not_change_scores(lm: HymbaBenchLM) -> None:
    pairs = [req(f"context {i} " * (i + 1), f"answer {i}") for i in range(7)]
    batched = lm.loglikelihood(pairs)
    lm.batch_size = 1
    try:
        single = lm.loglikelihood(pairs)
    finally:
        lm.batch_size = 3
    for a, b in zip(batched, single, strict=True):
        assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-4) and a[1] == b[1]


def test_rolling_equals_sum_over_windows(lm: HymbaBenchLM) -> None:
    short = "to be or not to be"
    (score,) = lm.loglikelihood_rolling([req(short)])
    assert score == pytest.approx(_bos_logprob(lm, short), rel=1e-5, abs=1e-4)
    long_text = "All the world's a stage, and all the men and women merely players. " * 6
    assert len(lm.tokenizer.encode(long_text)) > lm.max_length
    (total,) = lm.loglikelihood_rolling([req(long_text)])
    # by hand: each token scored once, each window with as much context as fits
    tokens = lm.tokenizer.encode(long_text)
    expected, scored = 0.0, 0
    while scored < len(tokens):
        end = min(scored + lm.max_length, len(tokens))
        inp = ([lm.tokenizer.bos_id, *tokens])[max(0, end - lm.max_length):end]
        with torch.no_grad():
            logp = F.log_softmax(lm.model(torch.tensor([inp])), dim=-1)[0]
        targets = tokens[max(0, end - lm.max_length):end]
        n_new = end - scored
        expected += sum(float(logp[len(inp) - n_new + j, t]) for j, t in enumerate(targets[-n_new:]))
        scored = end
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-3)


def _bos_logprob(lm: HymbaBenchLM, text: str) -> float:
    tokens = lm.tokenizer.encode(text)
    ids = torch.tensor([[lm.tokenizer.bos_id, *tokens]])
    with torch.no_grad():
        logp = F.log_softmax(lm.model(ids[:, :-1]), dim=-1)[0]
    return sum(float(logp[j, t]) for j, t in enumerate(tokens))


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_greedy_equals_uncached(name: str) -> None:
    model = small_model(name)
    prompt = torch.randint(0, 256, (2, 11))
    cached = greedy_generate(model, prompt, 40, eos_id=257)
    assert torch.equal(cached, greedy_generate_ref(model, prompt, 40, eos_id=257))


def test_generate_until_stops_and_batches(lm: HymbaBenchLM) -> None:
    reqs = [req("abc", {"until": ["\n"], "max_gen_toks": 5}),
            req("xyz", {"until": ["\n"], "max_gen_toks": 5}),
            req("a longer prompt", {"until": [], "max_gen_toks": 3})]
    out = lm.generate_until(reqs)
    assert len(out) == 3 and all("\n" not in o for o in out[:2])
    assert len(lm.tokenizer.encode(out[2])) <= 3
    lm.batch_size = 1
    try:
        assert lm.generate_until(reqs) == out
    finally:
        lm.batch_size = 3


def test_simple_evaluate_runs_offline(tmp_path: Path, lm: HymbaBenchLM) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    docs = [{"question": f"{k}=", "answer": v} for k, v in [("ab", "12"), ("cd", "34"), ("ef", "56")]]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "toy.yaml").write_text(f"""task: toy_recall
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
""")
    results = lm_eval.simple_evaluate(model=lm, tasks=["toy_recall"],
                                      task_manager=TaskManager(include_path=str(tmp_path)))
    assert "toy_recall" in results["results"]
    assert 0.0 <= results["results"]["toy_recall"]["exact_match,none"] <= 1.0
