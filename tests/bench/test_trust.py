"""Trustworthy on a busy laptop: timings that say when they cannot be trusted, and input checked.

Noise-aware timing (unstable marks, interleaving, significance in `regress`), fail-fast limits,
one-line errors for every file the harness reads, a lock on the run directory, honest labels,
plain progress lines off a terminal, numeric CSV and the roadmap picture.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hymba_bench.bench.regress import _speed_check
from hymba_bench.bench.timing import CpuLoad, Timing, significant
from hymba_bench.design.registry import RegistryError, resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.results.records import ResultsFile, RunDir
from hymba_bench.runner import RunOptions, run
from hymba_bench.settings import BenchOverrides


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def user_file(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ 1. labels
def test_user_design_gets_its_own_label_and_no_paper_figures(tmp_path: Path) -> None:
    path = user_file(tmp_path, "name: my-mamba\nextends: mamba\nd_state: 8\n")
    rv = resolve("my-mamba", "tiny", [path])
    assert rv.info["table_label"] == "my-mamba"
    labelled = user_file(tmp_path, "name: mine2\nextends: mamba\ntable_label: My SSM\n", "b.yaml")
    assert resolve("mine2", "tiny", [labelled]).info["table_label"] == "My SSM"
    out = tmp_path / "run"
    run(RunOptions(variants=["mamba", "my-mamba"], out=out, skip={"accuracy", "throughput"},
                   variant_files=[path]))
    ext = pd.read_csv(out / "roadmap_extended.csv")
    mine = ext[ext["Configuration"] == "my-mamba"].iloc[0]
    assert pd.isna(mine["Paper cache (MB)"]) and pd.isna(mine["Paper throughput (tok/s)"])
    assert ext["Configuration"].tolist().count("State Space Models (Mamba)") == 1


# ------------------------------------------------------------------ 2. noise-aware timing
def test_timing_marks_spread_and_load() -> None:
    assert Timing.of([1.0, 1.05, 1.1]).unstable_reason is None
    assert "spread" in Timing.of([1.0, 1.5, 2.0]).unstable_reason
    assert "other processes used 40%" in Timing.of([1.0, 1.0], others_cpu=0.4).unstable_reason


def test_cpu_load_sees_another_busy_process() -> None:
    import time

    with CpuLoad() as blink:  # too short for 10 ms ticks to say anything: unknown, not "busy"
        sum(range(200_000))
    assert blink.others is None
    with CpuLoad() as idle:
        time.sleep(0.6)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with CpuLoad() as loaded:
            time.sleep(1.0)
    finally:
        busy.kill()
    assert loaded.others is not None and idle.others is not None
    # one core of this machine's kept busy by another process
    assert loaded.others > 0.5 / (os.cpu_count() or 1)


def test_significance_separates_noise_from_change() -> None:
    same = ([1.00, 1.10, 0.95, 1.05, 1.02], [1.04, 0.97, 1.08, 1.01, 0.99])
    assert not significant(*same)
    assert significant([1.0, 1.02, 0.99, 1.01, 1.0], [2.0, 2.05, 1.98, 2.02, 2.01])


def test_regress_passes_a_noisy_rerun_and_fails_a_real_slowdown() -> None:
    base = [1.0, 0.8, 1.2, 0.9, 1.1]
    rerun = [0.7, 0.9, 1.15, 0.75, 1.0]  # median 0.9: -18%, well inside the noise of 0.8-1.2
    check = _speed_check("e", "decode_tok_s", "vs-reference", 1.0, 0.8, 0.1, base, rerun)
    assert check.ok and "within the runs' noise" in check.note
    slow = [0.33, 0.34, 0.32, 0.33, 0.35]
    assert not _speed_check("e", "decode_tok_s", "vs-reference", 1.0, 0.33, 0.1, base, slow).ok


def test_run_interleaves_decode_timing_and_records_load(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # long enough (> LOAD_MIN_WINDOW_S of timed rounds) for the load to be measured
    run(RunOptions(variants=["llama", "mamba"], out=out, skip={"accuracy"},
                   bench=BenchOverrides(gen_tokens=64, repeats=3, context=256, batch=8)))
    decode = [r for r in ResultsFile(out / "results.jsonl").load() if r.metric == "decode_tok_s"]
    assert {r.variant for r in decode} == {"llama", "mamba"}
    for r in decode:
        assert r.get("interleaved_with") == 1
        assert r.get("timing")["others_cpu"] is not None
        assert "unstable" in r.fields  # None, or the reason


# ------------------------------------------------------------------ 3. progress off a terminal
def test_progress_is_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    out = cli("run", "--variants", "llama,mamba", "--skip", "accuracy", "--skip", "throughput",
              "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "design 1 of 2, llama: cache" in out.stdout
    assert "design 2 of 2, mamba: cache" in out.stdout and "ETA" in out.stdout


# ------------------------------------------------------------------ 4. fail fast on size
def test_show_reports_a_huge_cache_without_allocating_it() -> None:
    out = cli("show", "hymba-1.5b", "--seq-len", "100000000", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["cache"]["bytes"] > 10**11  # beyond this machine, reported, not allocated


def test_decode_that_cannot_fit_fails_before_any_work(tmp_path: Path) -> None:
    out = cli("run", "--variants", "llama", "--skip", "accuracy", "--gen-tokens", "1000000000",
              "--out", str(tmp_path / "r"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "GB is free" in out.stderr
    assert not (tmp_path / "r" / "results.jsonl").exists()


# ------------------------------------------------------------------ 5. files the harness reads
def test_truncated_weights_are_one_line(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    out = cli("train", "mamba", "--steps", "2", "--out", str(ckpt))
    assert out.returncode == 0, out.stderr
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = cli("eval", "mamba", "--checkpoint", str(ckpt), "--limit", "2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "may be truncated" in out.stderr


def test_non_utf8_files_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\ndescription: \xff\xfe\n")
    out = cli("show", "x", "--variant-file", str(bad))
    assert out.returncode == 2 and "not UTF-8" in out.stderr and out.stderr.count("\n") == 1
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "results.jsonl").write_bytes(b'{"a": 1}\n\xff\xfe\n')
    out = cli("table", str(run_dir))
    assert out.returncode == 2 and "not UTF-8" in out.stderr and out.stderr.count("\n") == 1


# ------------------------------------------------------------------ 6. one writer per directory
def test_a_second_run_into_a_locked_directory_stops(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with RunDir(out).lock(), pytest.raises(HymbaBenchError, match="another hymba-bench run is writing here"):
        run(RunOptions(variants=["llama"], out=out, skip={"accuracy", "throughput"}))
    run(RunOptions(variants=["llama"], out=out, skip={"accuracy", "throughput"}))


# ------------------------------------------------------------------ 7. validation before work
@pytest.mark.parametrize("flag, value, message", [
    ("--batch", "0", "batch: expected a positive integer"),
    ("--context", "-5", "context: expected a positive integer"),
    ("--repeats", "0", "repeats: expected a positive integer"),
    ("--decode", "warp", "decode: expected one of"),
])
def test_bad_bench_settings_fail_before_anything_is_written(tmp_path: Path, flag: str, value: str,
                                                            message: str) -> None:
    out = cli("run", "--variants", "llama", "--skip", "accuracy", flag, value,
              "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and message in out.stderr
    assert not (tmp_path / "r" / "results.jsonl").exists()


# ------------------------------------------------------------------ 8. silently accepted keys
@pytest.mark.parametrize("body, message", [
    ("sliding_window: 100000\n", "sliding_window: 100000 never binds"),
    ("sliding_window: 8\nkv_share: 1000\n", "kv_share: groups of 1000 do not fit"),
    ("table_section: main\n", "table_section: expected one of ablation, scaling, other"),
])
def test_keys_that_would_mislead_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = user_file(tmp_path, "name: mine\nextends: b-parallel\n" + body)
    with pytest.raises(RegistryError, match=message):
        resolve("mine", "tiny", [path])


# ------------------------------------------------------------------ 9. eval writes lm-eval's format
def test_eval_out_writes_lm_eval_results_and_samples(tmp_path: Path) -> None:
    out = cli("eval", "llama", "--tasks", "recall_synthetic", "--limit", "4", "--out",
              str(tmp_path / "e"), "--log-samples", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "fatal" not in out.stderr and "design 1 of 1, llama: hymba_recall_synthetic" in out.stdout
    results = list((tmp_path / "e").rglob("results_*.json"))
    assert len(results) == 1
    data = json.loads(results[0].read_text())
    assert {"results", "configs", "versions", "n-samples"} <= set(data)
    assert "hymba_recall_synthetic" in data["results"]
    assert "PyTorch version" in data["pretty_env_info"]  # collected once per process, still there
    samples = list((tmp_path / "e").rglob("samples_hymba_recall_synthetic_*.jsonl"))
    assert len(samples) == 1 and len(samples[0].read_text().splitlines()) == 4
    summary = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert "recall_synthetic_pct" in summary["values"]


# ------------------------------------------------------------------ 10. tables and pictures
def test_csv_is_numeric_and_pictures_are_drawn(tmp_path: Path) -> None:
    out = tmp_path / "r"
    run(RunOptions(variants=["llama", "mamba", "e-meta-tokens"], out=out, skip={"accuracy"},
                   bench=BenchOverrides(gen_tokens=2, repeats=1, context=64, batch=2)))
    table = pd.read_csv(out / "roadmap.csv")
    assert "Section" in table and not table["Configuration"].str.startswith("Ablations").any()
    assert table["Throughput (token/sec)"].dtype == float
    assert table["Recall (%)"].isna().all()  # empty cells, not "—"
    ext = pd.read_csv(out / "roadmap_extended.csv")
    assert ext["Decode vs Llama"].dtype == float and ext["Decode vs Llama"].iloc[0] == 1.0
    png = (out / "roadmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_terminal_table_keeps_long_names_whole(tmp_path: Path) -> None:
    path = user_file(tmp_path, "name: a-very-long-design-name-that-would-be-cut\nextends: mamba\n")
    out = cli("compare", "llama", "a-very-long-design-name-that-would-be-cut", "--variant-file",
              str(path), "--out", str(tmp_path / "c"), "--context", "64", "--batch", "2",
              "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert "a-very-long-design-name-that-would-be-cut" in out.stdout
    assert (tmp_path / "c" / "compare.png").is_file()


# ------------------------------------------------------------------ and the rest
def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    code = ("import sys; import hymba_bench.runner as r\n"
            "def boom(*a, **k): raise KeyboardInterrupt\n"
            "r.run = boom\n"
            "from hymba_bench.cli.app import main\n"
            f"sys.argv = ['hymba-bench', 'run', '--out', {str(tmp_path / 'r')!r}]\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 130, out.stderr
    assert "interrupted" in out.stderr and "Traceback" not in out.stderr


def test_list_profiles_and_fixed_size_show() -> None:
    out = cli("list", "--profiles", "--json")
    assert out.returncode == 0
    assert {r["name"] for r in json.loads(out.stdout)} == {"tiny", "paper-300m", "paper-1.5b"}
    shown = json.loads(cli("show", "hymba-1.5b", "--json").stdout)
    assert shown["profile"] is None
    assert "(fixed size)" in cli("show", "hymba-1.5b").stdout


def _steadied(record: dict) -> dict:
    timing = record.get("timing")
    if timing:
        median = timing["median_s"]
        timing.update(samples=[median] * len(timing["samples"]), min_s=median, max_s=median,
                      spread=0.0, others_cpu=0.0)
        record["spread"] = 0.0
        record.pop("unstable", None)
    return record


def test_regress_does_not_judge_figures_timed_on_a_busy_machine(tmp_path: Path) -> None:
    from hymba_bench.bench.regress import compare, make_baseline

    out = tmp_path / "r"
    run(RunOptions(variants=["llama", "mamba"], out=out, skip={"accuracy"},
                   bench=BenchOverrides(gen_tokens=2, repeats=3, context=64, batch=2)))
    # CI's machine is shared: the run's own spread and load are steadied (every sample the median,
    # an idle reading), so that the only things judged are the doctored slowdown and load below
    path = out / "results.jsonl"
    records = [_steadied(r.to_json()) for r in ResultsFile(path).load()]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    baseline = make_baseline(out)
    slow = tmp_path / "slow"
    slow.mkdir()
    for busy, path in ((False, slow / "results.jsonl"), (True, tmp_path / "busy.jsonl")):
        with path.open("w") as f:
            for r in copy.deepcopy(records):
                if r["variant"] == "mamba" and r["metric"] == "decode_tok_s":  # 10x slower
                    r["value"] /= 10
                    r["timing"]["samples"] = [t * 10 for t in r["timing"]["samples"]]
                if r.get("timing"):
                    r["timing"]["others_cpu"] = 0.5 if busy else 0.0
                f.write(json.dumps(r) + "\n")
    failed = compare(baseline, slow, tolerance=0.4).failed
    assert [(c.variant, c.metric, c.kind) for c in failed] == [
        ("mamba", "decode_tok_s", "vs-reference"), ("mamba", "decode_tok_s", "absolute")]
    (tmp_path / "busy.jsonl").replace(slow / "results.jsonl")
    judged = compare(baseline, slow, tolerance=0.4)
    assert not judged.failed
    assert any(c.note.startswith("not judged: other processes used 50%") for c in judged.checks)


def test_too_few_samples_leave_the_verdict_to_the_tolerance() -> None:
    assert significant([1.0, 1.1, 0.9], [1.0, 1.05, 0.95])  # 3 + 3: no split reaches 5%
    assert not significant([1.0, 1.1, 0.9, 1.05], [1.0, 1.05, 0.95, 1.1])  # 4 + 4 can: noise


def test_peak_restarts_after_a_set_up_transient() -> None:
    """The decode row's peak excludes the prefill that filled its cache, keeps what stays held."""
    import time

    import torch

    from hymba_bench.bench.memory import PeakMemory

    with PeakMemory("cpu") as peak:
        kept = torch.ones(16 << 20)  # 64 MB held through the block
        transient = torch.ones(64 << 20)  # 256 MB, freed before the part that counts
        time.sleep(0.05)
        del transient
        peak.reset_peak()
        time.sleep(0.05)
    assert 48e6 < peak.peak_bytes < 200e6, peak.peak_bytes
    assert kept.sum() > 0
