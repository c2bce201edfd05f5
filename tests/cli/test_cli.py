"""The command line: output shapes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hymba_bench.design.registry import names


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_list_json() -> None:
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == names()
    assert all(r["description"] for r in rows)


def test_list_imports_no_kernels() -> None:
    code = ("import sys; from typer.testing import CliRunner; from hymba_bench.cli.app import app;"
            "r = CliRunner().invoke(app, ['list']); assert r.exit_code == 0, r.output;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mamba_ssm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_show_json_hymba_15b() -> None:
    out = cli("show", "hymba-1.5b", "--seq-len", "8192", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert {"name", "profile", "params", "meta_tokens", "layers", "cache"} <= set(info)
    assert info["params"] == 1_522_797_824
    assert info["meta_tokens"] == 128
    assert sum(layer["kv"] == "own" for layer in info["layers"]) == 17
    assert info["layers"][0] == {"index": 0, "mixer": "hybrid", "attention": "global",
                                 "window": None, "kv": "own", "ffn": "dense", "tied_to": None}
    assert info["layers"][2]["kv"] == "shared:1"
    cache = info["cache"]
    assert (cache["seq_len"], cache["batch"], cache["dtype"]) == (8192, 1, "float16")
    assert round(cache["mb_paper"], 1) == 78.6
    assert isinstance(cache["bytes"], int) and cache["bytes"] > 78.6e6


def test_show_mamba_has_no_attention() -> None:
    info = json.loads(cli("show", "mamba", "--json").stdout)
    assert all(layer["attention"] is None and layer["kv"] is None for layer in info["layers"])


def test_show_human_readable() -> None:
    out = cli("show", "e-meta-tokens")
    assert out.returncode == 0 and "shared:1" in out.stdout and "sliding" in out.stdout


def test_show_names_the_hybrid_branch_and_the_resolved_options() -> None:
    """The profile's block (tiny: Mamba-2 heads of 16) under the design's (ssm: mamba2)."""
    for design, mixer in (("b-mamba2", "hybrid"), ("falcon-h1", "parallel")):
        info = json.loads(cli("show", design, "--json").stdout)
        assert info["mixer_options"][mixer] == {"ssm": "mamba2"}
        assert info["mixer_options"]["mamba2"]["head_dim"] == 16
        out = cli("show", design)
        assert out.returncode == 0 and f"{mixer} (mamba2)" in out.stdout
        assert "mamba2: d_state 16" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("show", "lama"), "unknown variant 'lama'; did you mean llama"),
    (("show", "llama", "--profile", "huge"), "unknown profile 'huge'"),
    (("show", "llama", "--seq-len", "0"), "--seq-len: expected a positive integer"),
    # library errors name their parameter; the CLI says it as its flag
    (("sweep", "--seq-lens", "1,x"), "--seq-lens: expected comma-separated integers"),
    (("regress", "--baseline", "/no/such.json", "--current", "."), "--baseline: no such file"),
])
def test_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    out = cli(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_profile_decode_reports_where_a_step_goes(tmp_path) -> None:
    from hymba_bench.bench.profile import profile_decode
    from tests.helpers import bench

    settings = bench(batch=2, context=64, gen_tokens=3, warmup=1, repeats=2)
    row = profile_decode("mamba", "tiny", "cpu", settings)
    assert row["mode"] == "eager" and row["steps"] == 3 and row["batch"] == 2
    assert row["wall_ms_per_step"] > 0 and row["device_ms_per_step"] > 0
    assert row["launches_per_step"] >= 10  # a Mamba step is dozens of operators
    assert row["roofline_pct"] > 0 and row["roofline_ms_per_step"] > 0
    assert sum(k["share"] for k in row["top"]) <= 1 + 1e-9 and row["top"][0]["ms_per_step"] > 0


@pytest.fixture
def hf_config(tmp_path):
    """A Mamba-2 checkpoint's config.json alone, as transformers writes it: all that show, the
    cache stage and the throughput stage need."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tiny-mamba2"
    transformers.Mamba2Config(vocab_size=97, hidden_size=48, num_hidden_layers=2, state_size=8,
                              num_heads=8, head_dim=12, n_groups=2).save_pretrained(path)
    return path


def test_checkpoint_flag_on_show_run_and_compare(hf_config, tmp_path) -> None:
    info = json.loads(cli("show", "--checkpoint", str(hf_config), "--json").stdout)
    assert info["name"] == "tiny-mamba2" and [layer["mixer"] for layer in info["layers"]] == [
        "mamba2", "mamba2"]
    out = tmp_path / "run"
    done = cli("run", "--checkpoint", str(hf_config), "--skip", "accuracy", "--skip", "throughput",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    measured = [r for r in records if r.get("variant") not in (None, "*")]  # "*": the run's own
    assert {r["variant"] for r in measured} == {"tiny-mamba2"}  # not the roadmap as well
    assert measured and all(r["hf_checkpoint"] == str(hf_config) for r in measured)


@pytest.mark.parametrize("args, message", [
    (("show",), "show: give a design name or --checkpoint DIR, one of the two"),
    (("show", "llama", "--checkpoint", "x"), "one of the two"),
    (("compare", "--checkpoint", "{ck}"), "name at least two designs"),
    (("run", "--checkpoint", "a,b"), "a path with a comma cannot be told from a list of designs"),
])
def test_checkpoint_flag_errors_are_one_line(hf_config, args: tuple[str, ...], message: str) -> None:
    out = cli(*(a.format(ck=hf_config) for a in args))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
