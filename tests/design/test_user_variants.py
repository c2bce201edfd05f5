"""A user's design in one YAML file: shown, built, decoded, compared; bad files get one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hymba_bench import build_model

DESIGN = """\
name: my-hybrid
extends: c-local-global
description: hybrid heads alternating with pure Mamba layers, KV shared in pairs
design_reason: fewer attention layers, same recall path
layout: [hybrid, mamba, hybrid, hybrid]
sliding_window: 16
global_layers: [0, 7]
meta_tokens: 4
kv_share: 2
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hymba_bench.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_user_file_round_trips_through_show(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(DESIGN)
    out = cli("show", "my-hybrid", "--variant-file", str(path), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    mixers = [layer["mixer"] for layer in info["layers"]]
    assert mixers == ["hybrid", "mamba", "hybrid", "hybrid"] * 2  # the layout, cyclically
    kinds = [layer["attention"] for layer in info["layers"]]
    assert kinds == ["global", None, "sliding", "sliding", "sliding", None, "sliding", "global"]
    # groups form among consecutive attention layers, so a Mamba layer does not split a pair
    assert [layer["kv"] for layer in info["layers"]] == \
        ["own", None, "own", "shared:2", "own", None, "shared:4", "own"]
    assert info["meta_tokens"] == 4
    listed = json.loads(cli("list", "--json", "--variant-file", str(path)).stdout)
    assert listed[-1]["name"] == "my-hybrid"


def test_user_design_decodes_like_forward(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(DESIGN)
    torch.manual_seed(0)
    model = build_model("my-hybrid", variant_files=[path]).eval()
    ids = torch.randint(0, 256, (2, 50))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, 50)
        steps = [model(ids[:, :5], cache)] + [model(ids[:, i:i + 1], cache) for i in range(5, 50)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)


def test_compare_prints_ratios_to_the_first(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(DESIGN)
    out = cli("compare", "llama", "my-hybrid", "--variant-file", str(path), "--out",
              str(tmp_path / "cmp"), "--context", "32", "--batch", "2", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Decode vs llama" in md and "| llama |" in md and "| my-hybrid |" in md
    assert "1.00x" in md


@pytest.mark.parametrize("patch, message", [
    ({"extends": "c-local"}, "extends: unknown variant 'c-local'"),
    ({"layout": "[hybrid, transformer]"}, "layout: unknown mixer 'transformer'"),
    ({"sliding_window": "0"}, "sliding_window: expected a positive integer"),
    ({"sliding_window": "-8"}, "sliding_window: expected a positive integer"),
    ({"global_layers": "[0, 12]"}, "global_layers: index 12 out of range for 8 layers"),
    ({"meta_tokens": "lots"}, "meta_tokens: expected an integer >= 0, got 'lots'"),
    ({"name": "llama"}, "name: 'llama' is already registered"),
    ({"ffn": "sparse"}, "ffn: expected one of ['dense', 'moe', 'none']"),
    ({"kv_share": "[[2, 3], [6, 7]]"}, "kv_share: group [6, 7] crosses global layer 7"),
    ({"kv_share": "[[2, 3], [3, 4]]"}, "kv_share: layer 3 is in more than one group"),
    ({"kv_share": "[[1, 2]]"}, "kv_share: layer 1 is a mamba layer and has no attention"),
    ({"kv_share": "[[2]]"}, "kv_share: expected a group size or a list of groups"),
    ({"moe_top_k": "4", "moe_experts": "2"}, "moe_top_k: expected at most moe_experts (2)"),
    ({"rope": "maybe"}, "rope: expected true or false"),
    ({"windoww": "3"}, "windoww: unknown key"),
])
def test_validation_errors_name_file_and_key(patch: dict[str, str], message: str, tmp_path: Path) -> None:
    lines = [ln for ln in DESIGN.splitlines() if ln.split(":")[0] not in patch]
    lines += [f"{k}: {v}" for k, v in patch.items()]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    name = patch.get("name", "my-hybrid")
    out = cli("show", name, "--variant-file", str(path))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "bad.yaml" in err[0], out.stderr


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nlayout: [hybrid, mamba\n")
    out = cli("list", "--variant-file", str(path))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "broken.yaml: YAML syntax error at line" in out.stderr
