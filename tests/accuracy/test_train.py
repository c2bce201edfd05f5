"""Proxy training, checkpoints and the synthetic recall task."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hymba_bench import build_model
from hymba_bench.accuracy.checkpoint import load_checkpoint, save_checkpoint
from hymba_bench.accuracy.recall import (
    RecallSpec,
    eval_items,
    training_example,
    training_text,
    write_eval_file,
)
from hymba_bench.accuracy.train import TrainSettings, batches, lr_at, train
from hymba_bench.errors import HymbaBenchError

SMALL = TrainSettings(steps=12, batch_size=4, seq_len=64, lr=3e-3, warmup=2, seed=0, save_every=6)


def test_recall_items_are_deterministic_and_correct(tmp_path: Path) -> None:
    spec = RecallSpec(pairs=10, queries=4)
    a, b = eval_items(7, 30, spec), eval_items(7, 30, spec)
    assert a == b and eval_items(8, 30, spec) != a
    for item in a:
        context, answer = item["context"], item["answer"]
        pairs, _, asked = context.partition("|")
        table = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
        assert len(table) == 10 and all(k.islower() and v.isupper() for k, v in table.items())
        answered = {asked[i]: asked[i + 1] for i in range(0, len(asked) - 1, 2)}
        assert all(table[k] == v for k, v in answered.items())  # earlier queries shown right
        assert table[asked[-1]] == answer and len(answer) == 1
    f1 = write_eval_file(tmp_path / "a.jsonl", 7, 30, spec)
    f2 = write_eval_file(tmp_path / "b.jsonl", 7, 30, spec)
    assert f1.read_bytes() == f2.read_bytes()
    text, answers = training_example(random.Random(0), spec)
    assert len(text) == spec.rendered_length() and len(answers) == 4
    table = {text[i]: text[i + 1] for i in range(0, 20, 2)}
    assert all(text[a] == table[text[a - 1]] for a in answers)
    assert training_text(random.Random(0), spec) == text


def test_recall_training_scores_only_the_answers() -> None:
    spec = RecallSpec(pairs=4, queries=3)
    ids, mask = next(batches("recall", replace(SMALL, batch_size=2, seq_len=spec.rendered_length()),
                             random.Random(0), spec))
    assert ids.shape == (2, spec.rendered_length() + 1) and mask.shape == ids.shape
    assert mask.sum().item() == 2 * 3
    values = ids[mask]  # every scored target is an uppercase value byte
    assert ((values >= ord("A")) & (values <= ord("Z"))).all()


def test_schedule_warms_up_then_decays() -> None:
    s = replace(SMALL, steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(99, s) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(i, s) >= lr_at(i + 1, s) for i in range(10, 99))


@pytest.mark.parametrize("task", ["recall", "text"])
def test_loss_decreases(task: str, tmp_path: Path) -> None:
    corpus = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"
    if task == "text":
        if not corpus.is_file():
            corpus = tmp_path / "corpus.txt"
            corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
        task = f"text:{corpus}"
    torch.manual_seed(0)
    model = build_model("c-local-global")
    summary = train(model, "c-local-global", "tiny", task, SMALL, tmp_path / "ck")
    losses = summary["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2


def test_resume_continues_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = train(build_model("e-meta-tokens"), "e-meta-tokens", "tiny", "recall", SMALL, tmp_path / "a")
    half = TrainSettings(**{**SMALL.__dict__})
    torch.manual_seed(0)
    model = build_model("e-meta-tokens")

    class Stop(Exception):
        pass

    def interrupt(step: int, loss: float) -> None:
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        train(model, "e-meta-tokens", "tiny", "recall", half, tmp_path / "b", on_step=interrupt)
    resumed = train(build_model("e-meta-tokens"), "e-meta-tokens", "tiny", "recall", half,
                    tmp_path / "b", resume=True)
    assert resumed["steps"] == 12
    assert resumed["losses"] == pytest.approx(full["losses"], rel=1e-4)


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    model = build_model("d-kv-share")
    save_checkpoint(model, tmp_path / "ck", "d-kv-share", "tiny")
    loaded, meta = load_checkpoint(tmp_path / "ck", "d-kv-share")
    assert meta["variant"] == "d-kv-share"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(HymbaBenchError, match="holds variant 'd-kv-share', not 'llama'"):
        load_checkpoint(tmp_path / "ck", "llama")
    with pytest.raises(HymbaBenchError, match="is not a directory"):
        load_checkpoint(tmp_path / "missing", "llama")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["config"]["n_layers"] = 6  # still a valid plan (kv groups fit), but not these weights
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(HymbaBenchError, match="does not fit"):
        load_checkpoint(tmp_path / "ck", "d-kv-share")


@pytest.mark.parametrize("args, message", [
    (("train", "llama", "--task", "text:/no/such/file.txt", "--steps", "2"), "no such text file"),
    (("train", "llama", "--task", "poetry", "--steps", "2"), "expected 'recall' or 'text:PATH'"),
    (("train", "lama", "--steps", "2"), "unknown variant 'lama'"),
])
def test_train_errors_are_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args, "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
