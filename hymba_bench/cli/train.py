"""`hymba-bench train`: proxy-train one design and keep its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hymba_bench.cli.common import ProfileOpt, VariantFiles, app, console
from hymba_bench.settings import BudgetOverrides


@app.command()
def train(
    variant: Annotated[str, typer.Argument(help="A registered variant name.")],
    profile: ProfileOpt = "tiny",
    task: Annotated[str, typer.Option(help="'recall' (synthetic MQAR-style) or 'text:PATH'.")] = "recall",
    steps: Annotated[int | None, typer.Option(
        min=1, help="Optimizer steps (default: the profile's train block).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Sequences per step (default: the profile's).")] = None,
    seq_len: Annotated[int | None, typer.Option(
        min=8, help="Tokens per sequence (default: the recall task's length, or the design's "
        "max_seq_len for text).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the profile's).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed for weights and data (default: the profile's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint directory.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    variant_file: VariantFiles = None,
) -> None:
    """Proxy-train a variant (AdamW, warm-up + cosine, clipping); writes a safetensors checkpoint."""
    from hymba_bench.accuracy.train import plan_training
    from hymba_bench.cli.progress import RunProgress

    plan = plan_training(variant, profile, task,
                         BudgetOverrides(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                         seq_len, out, variant_file)
    with RunProgress(console, 1, 1, unit="designs") as progress:
        progress.start(1, variant, "train")
        bar = progress.training(variant, plan.settings.steps, 1)
        summary = plan.run(resume=resume, on_step=bar.step)
        bar.close()
        progress.advance()
    console.print(f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}; "
                  f"checkpoint in {plan.out}")
