"""`hymba-bench list`: the registered variants, or the size profiles."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from hymba_bench.cli.common import JsonOpt, VariantFiles, app, console


@app.command("list")
def list_cmd(
    as_json: JsonOpt = False,
    variant_file: VariantFiles = None,
    profiles: Annotated[bool, typer.Option("--profiles", help="List the size profiles instead.")] = False,
) -> None:
    """List the registered variants (or, with --profiles, the size profiles)."""
    from hymba_bench.design.registry import profiles as all_profiles
    from hymba_bench.design.registry import variants

    if profiles:
        rows = [{"name": p.name, "description": p.description} for p in all_profiles().values()]
    else:
        rows = [{"name": v.name, "description": v.description}
                for v in variants(variant_file).values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    out = Table("name", "description", title=f"hymba-bench {'profiles' if profiles else 'variants'}")
    for row in rows:
        out.add_row(row["name"], row["description"])
    console.print(out)
