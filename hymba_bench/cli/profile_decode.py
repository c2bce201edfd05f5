"""`hymba-bench profile-decode`: what limits each design's decode step, before optimising it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hymba_bench.cli.common import (
    DeviceOpt,
    JsonOpt,
    ProfileOpt,
    app,
    bench_options,
    console,
    pick_device,
)
from hymba_bench.files import append_fd, make_dirs, write_all
from hymba_bench.settings import BenchOverrides


@app.command("profile-decode")
@bench_options("batch", "context", "gen_tokens", "decode", "decode_kernels", help={
    "context": "Cached tokens (default: the profile's).", "gen_tokens": "Steps traced.",
    "decode": "eager, compiled, graph or auto."})
def profile_decode_cmd(
    variants: Annotated[str, typer.Option(help="Comma-separated names.")] = "llama,mamba",
    profile: ProfileOpt = "tiny",
    device: DeviceOpt = "auto",
    bench: BenchOverrides = BenchOverrides(),
    out: Annotated[Path | None, typer.Option(help="Append each design's profile to this JSONL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Profile decode steps: wall vs device time per step, launches per step, the busiest
    kernels, and the bandwidth bound (what limits each design before optimising it)."""
    from hymba_bench.bench.profile import profile_decode
    from hymba_bench.design.registry import resolve
    from hymba_bench.runner import select_variants
    from hymba_bench.settings import bench_settings

    dev = pick_device(device)
    for name in select_variants(variants):
        settings = bench_settings(resolve(name, profile).profile, dev, bench)
        with console.status(f"profiling {name} ..."):
            row = profile_decode(name, profile, dev, settings)
        if out is not None:
            make_dirs(out.parent)
            fd = append_fd(out)
            try:
                write_all(fd, (json.dumps(row) + "\n").encode(), out)
            finally:
                os.close(fd)
        if as_json:
            print(json.dumps(row))
            continue
        unit = "launches" if row["cuda"] else "operators"
        console.print(f"[bold]{name}[/] on {row['device']}: {row['mode']} steps, batch {row['batch']}, "
                      f"{row['context']:,} cached tokens, {row['dtype']}: wall {row['wall_ms_per_step']:.3f} "
                      f"ms/step, device {row['device_ms_per_step']:.3f} ms/step, "
                      f"{row['launches_per_step']:.0f} {unit} and {row['kernels_per_step']:.0f} "
                      "kernels/step; bandwidth bound "
                      f"{row['roofline_ms_per_step']:.3f} ms/step ({row['roofline_pct']:.1f}% reached)")
        table = Table("kernel / operator", "ms/step", "share")
        for k in row["top"]:
            table.add_row(k["name"][:70], f"{k['ms_per_step']:.3f}", f"{100 * k['share']:.0f}%")
        console.print(table)
