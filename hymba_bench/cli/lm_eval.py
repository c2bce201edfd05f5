"""`hymba-bench lm-eval`: lm-eval's own command line with this harness's model and tasks."""

from __future__ import annotations

import sys

import typer

from hymba_bench.cli.common import app


@app.command("lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                          "help_option_names": []})
def lm_eval_cmd(ctx: typer.Context) -> None:
    """lm-eval's own command line with this harness's model (`--model hymba_bench`) and tasks
    registered, e.g. `hymba-bench lm-eval --model hymba_bench --model_args variant=llama --tasks
    hymba_recall_synthetic` (lm-eval has no plugin mechanism for models)."""
    from lm_eval.__main__ import cli_evaluate

    import hymba_bench.accuracy.adapter  # noqa: F401  registers `hymba_bench` with lm-eval
    from hymba_bench.design.registry import package_data

    args = list(ctx.args)
    running = not args or args[0] not in ("ls", "validate")
    if running and "--include_path" not in args and any(a.startswith("--") for a in args):
        args += ["--include_path", str(package_data("tasks"))]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()
