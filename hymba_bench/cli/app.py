"""The `hymba-bench` command line: a thin layer over the library, one module per command.

Heavy imports (torch, the model, the measurements) happen inside the commands that need them, so
`hymba-bench list` answers instantly and imports no kernels.
"""

from __future__ import annotations

import importlib
import re
import signal
import sys

import typer

from hymba_bench.cli.common import app
from hymba_bench.errors import HymbaBenchError, Interrupted

# One module per command, each registering itself with `app`; `--help` lists them in this order.
COMMANDS = ("list", "show", "run", "sweep", "table", "train", "eval", "compare", "baseline",
            "regress", "bench_scan", "bench_ssd", "bench_delta_rule", "profile_decode", "lm_eval")
for _command in COMMANDS:
    importlib.import_module(f"hymba_bench.cli.{_command}")

FLAGS = {"steps": "--train-steps"}  # library parameters whose option is not --<param>


def flag(param: str) -> str | None:
    """The option that sets a library parameter, None when no command has one (a profile
    file's key, say: the message then keeps the library's name)."""
    from typer.main import get_command

    option = FLAGS.get(param, "--" + param.replace("_", "-"))
    commands = getattr(get_command(app), "commands", {}).values()
    known = {o for command in commands for p in command.params for o in getattr(p, "opts", [])}
    return option if option in known else None


def say(exc: HymbaBenchError) -> str:
    """A library error in the CLI's words: parameters become the options that set them."""
    text = f"{flag(exc.param) or exc.param}: {exc.detail}" if exc.param else str(exc)
    return re.sub(r"`(\w+)`", lambda m: flag(m.group(1)) or m.group(0), text)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's kill, `timeout`) is handled as Ctrl-C is: what was measured is
    kept and said, the lock released, the tables written."""
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit status 2."""
    from typer.exceptions import TyperException  # base of the (vendored) click exceptions

    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except HymbaBenchError as exc:
        print(f"hymba-bench: {'' if isinstance(exc, Interrupted) else 'error: '}{say(exc)}",
              file=sys.stderr)
        sys.exit(exc.exit_code)
    except TyperException as exc:  # bad option values: one line too, not a usage panel
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"hymba-bench: error: {message}{hint}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except (KeyboardInterrupt, typer.Abort):
        print("hymba-bench: interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
