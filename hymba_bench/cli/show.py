"""`hymba-bench show`: a design's layer plan, parameter count and cache size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hymba_bench.cli.common import JsonOpt, ProfileOpt, VariantFiles, app, console
from hymba_bench.errors import HymbaBenchError


@app.command()
def show(
    name: Annotated[str | None, typer.Argument(
        help="A registered variant name (or a checkpoint directory).")] = None,
    profile: ProfileOpt = "tiny",
    seq_len: Annotated[int | None, typer.Option(help="Context for the cache size.")] = None,
    as_json: JsonOpt = False,
    variant_file: VariantFiles = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="A Hugging Face checkpoint directory (or its config.json) instead of a name.")] = None,
) -> None:
    """Show a variant's layer plan, parameter count and cache size."""
    from hymba_bench.model.describe import describe

    if (name is None) == (checkpoint is None):
        raise HymbaBenchError("show: give a design name or --checkpoint DIR, one of the two",
                              param="name")
    info = describe(name or str(checkpoint), profile, seq_len, variant_file)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    cache = info["cache"]
    scale = f"{info['profile']} profile" if info["profile"] else "fixed size"
    console.print(f"[bold]{info['name']}[/] ({scale}): {info['description']}")
    console.print(f"parameters: {info['params']:,}   meta tokens: {info['meta_tokens']}")
    console.print(
        f"cache at {cache['seq_len']} tokens, batch 1, fp16: {cache['bytes']:,} bytes; "
        f"{cache['mb_paper']:.1f} MB in the paper's convention (10^6 B, meta tokens not counted)"
    )
    table = Table("layer", "mixer", "attention", "window", "kv")
    for layer in info["layers"]:
        branch = info["mixer_options"].get(layer["mixer"], {}).get("ssm")
        mixer = f"{layer['mixer']} ({branch})" if branch else layer["mixer"]
        table.add_row(str(layer["index"]), mixer, layer["attention"] or "-",
                      str(layer["window"] or "-"), layer["kv"] or "-")
    console.print(table)
    for mixer, opts in info["mixer_options"].items():
        console.print(f"{mixer}: " + ", ".join(f"{k} {v}" for k, v in opts.items()))
