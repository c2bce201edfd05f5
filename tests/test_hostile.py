"""Hostile inputs and faults: paths out of the run directory, links, special and huge files, YAML
tricks, non-finite numbers, mixed tables, orphaned workers, signals, a full disk."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hymba_bench import files
from hymba_bench.design.config import ConfigError, ModelConfig
from hymba_bench.design.registry import variants
from hymba_bench.errors import HymbaBenchError
from hymba_bench.files import FileError, inside, read_yaml, write_atomic
from hymba_bench.results.records import Record, ResultsFile, RunDir
from hymba_bench.results.tables import compare_table, roadmap_table, select

TINY = {"batch": 2, "context": 32, "gen_tokens": 2, "repeats": 1}


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# ---------------------------------------------------------------- names and paths
@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "a/b", "..", ".hidden", "", "x" * 101])
def test_a_name_that_is_not_a_folder_name_is_refused_on_load(tmp_path: Path, name: str) -> None:
    path = tmp_path / "design.yaml"
    path.write_text(json.dumps({"name": name, "extends": "llama"}))
    with pytest.raises(HymbaBenchError, match="cannot be a folder name") as err:
        variants([path])
    assert str(path) in str(err.value)


def test_run_with_an_escaping_name_writes_nothing_anywhere(tmp_path: Path) -> None:
    design = tmp_path / "d.yaml"
    design.write_text("name: ../../escape\nextends: llama\n")
    out = cli("run", "--variants", "all", "--variant-file", str(design), "--out",
              str(tmp_path / "a" / "b" / "run"), cwd=tmp_path)
    assert "cannot be a folder name" in one_line_error(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.yaml"]


def test_inside_refuses_leaving_and_links(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "checkpoints", "llama") == root / "checkpoints" / "llama"
    for bad in ("..", "../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(FileError, match="leaves the output directory"):
            inside(root, bad)
    (tmp_path / "elsewhere").mkdir()
    (root / "checkpoints").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileError, match="symbolic link"):
        inside(root, "checkpoints", "llama")


def test_a_results_file_that_is_a_link_is_refused_before_any_write(tmp_path: Path) -> None:
    from hymba_bench.runner import RunOptions, run

    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").symlink_to(target)
    with pytest.raises(HymbaBenchError, match="link"):
        run(RunOptions(variants=["llama"], out=out, skip={"accuracy", "throughput"}))
    assert target.read_text() == "precious\n"
    with pytest.raises(FileError, match="link"):
        ResultsFile(out / "results.jsonl").append(Record.measured("llama", "params", 1))
    assert target.read_text() == "precious\n"


def test_lock_and_tables_are_never_written_through_links(tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    with pytest.raises(FileError, match="link"), RunDir(out).lock():
        pass
    (out / ".lock").unlink()
    (out / "roadmap.md").symlink_to(target)
    with pytest.raises(FileError, match="link"):
        write_atomic(RunDir(out).table("roadmap", "md"), "x")
    assert target.read_text() == "precious\n"


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(FileError, match="disk full"):
        write_atomic(tmp_path / "table.md", "x" * 100)
    with pytest.raises(FileError, match="disk full"):
        ResultsFile(tmp_path / "results.jsonl").append(Record.measured("llama", "params", 1))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_unwritable_results_file_is_found_before_any_work(tmp_path: Path) -> None:
    from hymba_bench.runner import RunOptions, run

    out = tmp_path / "run"
    (out / "results.jsonl").mkdir(parents=True)  # unwritable as a file, even for root
    with pytest.raises(HymbaBenchError, match="not a regular file"):
        run(RunOptions(variants=["llama"], out=out, skip={"throughput", "cache"}))
    assert not (out / "checkpoints").exists()  # nothing was trained


# ---------------------------------------------------------------- files read
def test_special_files_huge_files_and_alias_bombs_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(HymbaBenchError, match="not a regular file"):
        read_yaml(fifo, "design file")
    with pytest.raises(HymbaBenchError, match="not a regular file"):
        read_yaml(Path("/dev/zero"), "design file")
    assert time.monotonic() - start < 5
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 200_000)
    with pytest.raises(HymbaBenchError, match="more than"):
        read_yaml(big, "design file")
    bomb = ["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb += ["layout: *a8"]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    out = cli("list", "--variant-file", str(tmp_path / "bomb.yaml"))
    line = one_line_error(out)
    assert "expands to more than" in line and len(line) < 700


@pytest.mark.parametrize(("text", "message"), [
    ("name: d\nextends: llama\nn_layers: 2\nn_layers: 4\n", "given twice"),
    ("name: d\nextends: llama\nrope_theta: .nan\n", "not a finite number"),
    ("name: d\nextends: llama\nfixed_size: 'yes'\n", "fixed_size: expected true or false"),
    ("name: d\nextends: llama\norder: first\n", "order: expected a number"),
    ("name: d\nextends: llama\ntable_section: misc\n", "table_section: expected one of"),
    ("name: d\nextends: llama\nmax_seq_len: 100000000000\n", "max_seq_len: expected at most"),
    ("name: d\nextends: llama\nmeta_tokens: 300\n", "meta_tokens"),
])
def test_silent_accepts_in_design_files_are_errors(tmp_path: Path, text: str, message: str) -> None:
    from hymba_bench.design.registry import resolve

    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(HymbaBenchError, match=message) as err:
        resolve("d", "tiny", [path])
    assert "\n" not in str(err.value)


def test_a_long_message_stays_one_bounded_line() -> None:
    exc = HymbaBenchError("x\n" * 10_000)
    assert "\n" not in str(exc) and len(str(exc)) < 700


def test_non_finite_config_numbers_are_errors() -> None:
    for key in ("rope_theta", "norm_eps", "rope_scaling", "moe_aux_loss"):
        with pytest.raises(ConfigError, match=key):
            ModelConfig(**{key: float("nan")})


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_before_training(tmp_path: Path) -> None:
    from hymba_bench.runner import RunOptions, run

    path = tmp_path / "d.yaml"
    path.write_text("name: small-vocab\nextends: llama\nvocab_size: 100\n")
    with pytest.raises(HymbaBenchError, match="vocab_size: 100 is smaller"):
        run(RunOptions(variants=["small-vocab"], out=tmp_path / "run", variant_files=[path],
                       skip={"cache", "throughput"}))
    assert not (tmp_path / "run").exists()


def test_eval_limit_zero_is_an_error() -> None:
    line = one_line_error(cli("eval", "llama", "--limit", "0"))
    assert "--limit" in line


# ---------------------------------------------------------------- records and tables
def test_non_finite_numbers_are_refused_on_write_and_flagged_on_read(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.jsonl")
    with pytest.raises(HymbaBenchError, match="not a finite number"):
        results.append(Record.measured("llama", "decode_tok_s", float("nan")))
    note = Record.measured("llama", "decode_tok_s", float("inf"), profile="tiny").checked()
    assert note.kind == "missing" and note.settles == "decode_tok_s"
    results.append(Record.measured("llama", "cache_mb", 1.5, profile="tiny", device="cpu"))
    with results.path.open("a") as f:  # as written by hand
        f.write(json.dumps({"variant": "llama", "metric": "decode_tok_s", "value": float("nan"),
                            "profile": "tiny", "device": "cpu"}) + "\n")
    records = results.load()
    assert records.get("llama", "decode_tok_s") is None
    md = roadmap_table(records).to_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| llama"))
    assert "nan" not in row.lower() and "—" in row  # a gap, not a number
    assert "recorded as nan (results.jsonl:2), not a finite number" in md


def _mixed(tmp_path: Path) -> ResultsFile:
    results = ResultsFile(tmp_path / "results.jsonl")
    for variant, profile, device in (("llama", "tiny", "EPYC"), ("mamba", "tiny", "EPYC"),
                                     ("llama", "paper-300m", "NVIDIA H100")):
        results.append(Record.measured(variant, "cache_mb", 1.0, profile=profile, device=device,
                                       table_section="ablation"))
    return results


def test_a_table_of_mixed_profiles_and_devices_is_refused_or_selected(tmp_path: Path) -> None:
    records = _mixed(tmp_path).load()
    with pytest.raises(HymbaBenchError, match="mix 2 profiles or devices"):
        roadmap_table(records)
    chosen = select(records, profile="tiny")
    assert "tiny profile" in roadmap_table(chosen).to_markdown()
    out = cli("table", str(tmp_path))
    assert "mix 2 profiles" in one_line_error(out) and "--profile" in one_line_error(out)
    ok = cli("table", str(tmp_path), "--device", "h100")
    assert ok.returncode == 0 and "paper-300m profile" in ok.stdout


def test_a_run_into_a_directory_of_another_profile_is_refused(tmp_path: Path) -> None:
    _mixed(tmp_path)
    with pytest.raises(HymbaBenchError, match="one directory is one table"):
        RunDir(tmp_path).open(True, {"profile": "tiny", "device": "EPYC"})


def test_compare_keeps_the_unstable_marks_and_the_reasons(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.jsonl")
    for name, tps in (("llama", 100.0), ("mamba", 300.0)):
        results.append(Record.measured(name, "decode_tok_s", tps, profile="tiny", device="cpu",
                                       unstable="samples spread 40%" if name == "mamba" else None))
    results.append(Record.note("*", "cache", "cache skipped (--skip cache)"))
    md = compare_table(results.load(), ["llama", "mamba"]).to_markdown()
    assert "300.0 †" in md and "3.00x †" in md and "unstable" in md
    assert "cache skipped" in md


# ---------------------------------------------------------------- processes and signals
def test_a_run_refuses_while_an_earlier_runs_writer_lives(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hymba_bench.results.records import RunDir\n"
        f"with RunDir({str(tmp_path)!r}).writing():\n"
        "    print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(HymbaBenchError, match="earlier run are still writing"), \
                RunDir(tmp_path).lock():
            pass
    finally:
        child.kill()
        child.wait()
    with RunDir(tmp_path).lock():  # once it is gone, the run goes ahead
        pass


def test_a_worker_dies_with_its_driver(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "driver.py"
    script.write_text(
        "import multiprocessing as mp, os, sys, time\n"
        "from hymba_bench.workers import die_with_parent\n"
        "def work(parent, path):\n"
        "    die_with_parent(parent)\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    ctx = mp.get_context('spawn')\n"
        "    ctx.Process(target=work, args=(os.getpid(), sys.argv[1])).start()\n"
        "    time.sleep(120)\n")
    driver = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        driver.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hymba_bench.cli", "run", "--variants",
                             "llama,mamba", "--skip", "throughput", "--train-steps", "100000",
                             "--workers", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # progress lines (not a terminal): wait for the training
            if ": accuracy" in line:
                break
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "interrupted;" in stderr and "records kept" in stderr and "--resume" in stderr
    assert (out / "roadmap.md").is_file()  # the tables of what was kept (the cache stage's)
    with (out / ".lock").open("a") as handle:  # released
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_no_picture_when_nothing_can_be_plotted(tmp_path: Path) -> None:
    from hymba_bench.results.plots import roadmap_plot
    from hymba_bench.results.records import RecordSet

    accuracy_only = RecordSet([Record.measured("llama", "recall_pct", 5.0, profile="tiny",
                                               device="cpu")])
    assert roadmap_plot(accuracy_only, tmp_path / "roadmap.png") is None
    assert not (tmp_path / "roadmap.png").exists()


def test_the_eta_is_learned_per_stage_and_not_from_resumed_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache row takes a second and a design's training a hundred: once the first training has
    finished, the ETA is the second one's hundred seconds, not an average over both stages."""
    import io

    from rich.console import Console

    from hymba_bench.cli import progress as progress_module
    from hymba_bench.cli.progress import RunProgress

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    with RunProgress(Console(file=out, force_terminal=False, width=200), designs=3, stages=2,
                     stage_names=["cache", "accuracy"]) as p:
        p.stage("cache")
        for k in (1, 2, 3):
            p.start(k, f"d{k}", "cache")
            now[0] += 1.0
            p.advance()
        assert p.eta() == "0s for cache (then accuracy)"
        p.stage("accuracy")
        p.advance()  # d1's training was already in the run directory (a resumed run)
        assert p.eta() == "?"  # nothing timed in this stage yet: no guess from the cache rows
        p.start(2, "d2", "accuracy")
        now[0] += 100.0
        p.advance()
        p.start(3, "d3", "accuracy")
        assert p.eta() == "1m40s"
    assert "ETA 1m40s" in out.getvalue().splitlines()[-2]


def test_the_terminal_bar_draws_a_training_bar_beside_the_run() -> None:
    import io

    from rich.console import Console

    from hymba_bench.cli.progress import RunProgress

    out = io.StringIO()
    with RunProgress(Console(file=out, force_terminal=True, width=160), 2, 2,
                     stage_names=["cache", "accuracy"]) as p:
        p.stage("cache")
        p.start(1, "llama", "cache")
        p.advance()
        bar = p.training("llama", 10, 2)
        bar.seed(1)
        bar.step(3, 2.5)
        assert p._bar is not None
        p._bar.refresh()
        bar.close()
    text = out.getvalue()
    assert "3/10 steps" in text and "1/4 stages" in text and "(then accuracy)" in text


def _label_boxes(records: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """The roadmap plot's label boxes and its axes' box, in display pixels."""
    from matplotlib.text import Annotation

    from hymba_bench.results import plots

    seen = {}

    def keep(fig: object, path: Path, dpi: int = 120) -> Path:
        seen["fig"] = fig
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    assert plots.roadmap_plot(records, tmp_path / "roadmap.png") is not None
    fig = seen["fig"]
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    boxes = [c.get_window_extent(renderer) for c in ax.get_children() if isinstance(c, Annotation)]
    return boxes, ax.get_window_extent(renderer)


def _crowded_run() -> object:
    """Nine designs, most of them close together on both axes, as a real roadmap is."""
    from hymba_bench.results.records import RecordSet

    points = {"llama": (100, 1000), "mamba": (400, 20), "a-sequential": (180, 300),
              "b-parallel-heads": (190, 310), "c-local-global": (200, 120),
              "d-kv-sharing": (210, 110), "e-meta-tokens": (205, 115),
              "jamba": (170, 290), "zamba": (185, 305)}
    records = []
    for name, (tps, cache) in points.items():
        records += [Record.measured(name, "decode_tok_s", float(tps), profile="tiny", device="cpu"),
                    Record.measured(name, "cache_bytes", float(cache), profile="tiny", device="cpu"),
                    Record.measured(name, "recall_pct", 12.0, profile="tiny", device="cpu")]
    return RecordSet(records)


def test_plot_labels_do_not_overlap_and_stay_inside(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hymba_bench.results import plots

    def overlaps(boxes: list) -> list[tuple[int, int]]:
        return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1)
                if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1]

    boxes, frame = _label_boxes(_crowded_run(), tmp_path, monkeypatch)
    assert len(boxes) == 9
    assert not overlaps(boxes)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
               for b in boxes)
    # the check can fail: every label at the same offset beside its dot collides
    monkeypatch.setattr(plots, "_OFFSETS", plots._OFFSETS[:1])
    boxes, _ = _label_boxes(_crowded_run(), tmp_path, monkeypatch)
    assert overlaps(boxes)
