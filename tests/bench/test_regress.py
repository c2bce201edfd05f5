"""The regression check: a doctored baseline fails, the same run passes, exact metrics are exact."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hymba_bench.bench import timing
from hymba_bench.bench.regress import compare, load_baseline, make_baseline, report
from hymba_bench.errors import HymbaBenchError
from hymba_bench.runner import RunOptions, run
from hymba_bench.settings import BenchOverrides

FAST = BenchOverrides(batch=2, context=32, gen_tokens=2, repeats=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose load reading is pinned to an idle machine: the checks below need a verdict,
    and another process on CI's machine must not take it away (the busy case has its own test)."""
    out = tmp_path_factory.mktemp("reg") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing, "_cpu_ticks", lambda: (0, 0))
        run(RunOptions(variants=["llama", "mamba", "c-local-global"], out=out, skip={"accuracy"},
                       bench=FAST))
    return out


def _as_busy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run whose throughput figures say other processes used half the CPU."""
    import shutil

    busy = tmp_path / "busy"
    shutil.copytree(run_dir, busy)
    path = busy / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        if line["metric"] in ("decode_tok_s", "prefill_tok_s"):
            line["timing"]["others_cpu"] = 0.5
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return busy


def test_a_busy_run_is_not_judged_and_does_not_pass(run_dir: Path, tmp_path: Path) -> None:
    base = make_baseline(run_dir)
    cmp = compare(base, _as_busy(run_dir, tmp_path))
    assert cmp.judged_nothing and not cmp.failed
    text = report(cmp, 0.15)
    assert "NOT JUDGED" in text and "PASS" not in text


def test_cli_busy_run_exits_3_and_retime_judges_it(run_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from hymba_bench.cli.app import app

    good = tmp_path / "base.json"
    good.write_text(json.dumps(make_baseline(run_dir)))
    busy = _as_busy(run_dir, tmp_path)
    runner = CliRunner()
    args = ["regress", "--baseline", str(good), "--current", str(busy)]
    assert runner.invoke(app, args).exit_code == 3
    monkeypatch.setattr(timing, "_cpu_ticks", lambda: (0, 0))  # the re-timing sees an idle machine
    # generous tolerances: the verdict asked for is "judged", not "as fast as before" on a busy machine
    again = runner.invoke(app, [*args, "--retime", "1", "--tolerance", "0.9", "--abs-tolerance", "0.9"])
    assert again.exit_code == 0, again.output
    assert "PASS" in again.output and "not judged" not in again.output


def test_baseline_refuses_unstable_figures_unless_asked(run_dir: Path, tmp_path: Path) -> None:
    busy = _as_busy(run_dir, tmp_path)
    path = busy / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        if line["metric"] == "decode_tok_s":
            line["unstable"] = "samples spread 60% (limit 25%)"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(HymbaBenchError, match="unstable"):
        make_baseline(busy)
    assert make_baseline(busy, allow_unstable=True)["variants"]


def test_same_run_passes(run_dir: Path) -> None:
    base = make_baseline(run_dir)
    cmp = compare(base, run_dir)
    assert cmp.same_machine and not cmp.failed
    kinds = {c.kind for c in cmp.checks}
    assert kinds == {"exact", "vs-reference", "absolute"}
    assert "PASS" in report(cmp, 0.15)


def test_doctored_baseline_fails(run_dir: Path) -> None:
    """A baseline in which mamba decoded 3x faster than it does now is a regression."""
    base = make_baseline(run_dir)
    fast = copy.deepcopy(base)
    fast["variants"]["mamba"]["throughput"]["decode_tok_s"]["value"] *= 3
    cmp = compare(fast, run_dir)
    failed = {(c.variant, c.metric, c.kind) for c in cmp.failed}
    assert ("mamba", "decode_tok_s", "vs-reference") in failed
    assert ("mamba", "decode_tok_s", "absolute") in failed
    assert all(c.variant == "mamba" for c in cmp.failed)
    text = report(cmp, 0.15)
    assert "FAIL" in text and "**REGRESSION**" in text
    # on another machine only the ratio to the reference is compared, and it still fails
    elsewhere = copy.deepcopy(fast)
    elsewhere["fingerprint"]["device"] = "some other CPU"
    cmp = compare(elsewhere, run_dir)
    assert {c.kind for c in cmp.failed} == {"vs-reference"}


def test_slower_machine_cancels_out(run_dir: Path) -> None:
    """Every design 2x faster in the baseline, on another machine: ratios unchanged, so it passes."""
    base = make_baseline(run_dir)
    base["fingerprint"]["device"] = "a faster CPU"
    for v in base["variants"].values():
        for entry in v["throughput"].values():
            entry["value"] *= 2
    assert not compare(base, run_dir).failed


def test_exact_metrics_must_match_exactly(run_dir: Path) -> None:
    base = make_baseline(run_dir)
    base["variants"]["c-local-global"]["exact"]["cache_bytes"] -= 2
    failed = compare(base, run_dir).failed
    assert [(c.variant, c.metric) for c in failed] == [("c-local-global", "cache_bytes")]


def test_settings_must_match(run_dir: Path) -> None:
    base = make_baseline(run_dir)
    base["settings"]["context"] = 8192
    with pytest.raises(HymbaBenchError, match="benchmark settings"):
        compare(base, run_dir)


def test_cli_exit_codes_and_report(run_dir: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args], capture_output=True,
                              text=True, timeout=300)

    good = tmp_path / "base.json"
    assert cli("baseline", str(run_dir), "--out", str(good)).returncode == 0
    data = load_baseline(good)
    ok = cli("regress", "--baseline", str(good), "--current", str(run_dir), "--report",
             str(tmp_path / "r.md"))
    assert ok.returncode == 0 and (tmp_path / "r.md").read_text() == ok.stdout
    data["variants"]["c-local-global"]["throughput"]["decode_tok_s"]["value"] *= 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    failing = cli("regress", "--baseline", str(bad), "--current", str(run_dir))
    assert failing.returncode == 1 and "REGRESSION" in failing.stdout
    missing = cli("regress", "--baseline", str(tmp_path / "nope.json"), "--current", str(run_dir))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "no such file" in missing.stderr
