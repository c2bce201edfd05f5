"""What the commands share: the Typer app, the console, the options several commands take
(declared once here), and the option groups that reach the library as one typed value."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from hymba_bench.errors import HymbaBenchError, Interrupted
from hymba_bench.executors import ExecutorOptions
from hymba_bench.files import FileError
from hymba_bench.results.records import RunDir
from hymba_bench.settings import BenchOverrides

if TYPE_CHECKING:
    from hymba_bench.runner import RunOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Build and measure the Hymba design roadmap and other hybrid attention + SSM designs.",
)
console = Console()

VariantFiles = Annotated[
    list[Path] | None,
    typer.Option("--variant-file", help="A user design file (YAML); repeatable."),
]
CheckpointsOpt = Annotated[
    list[Path] | None,
    typer.Option("--checkpoint", help="A Hugging Face checkpoint directory (or its config.json), "
                 "measured as a design named after it; repeatable."),
]
ProfileOpt = Annotated[str, typer.Option(help="Size profile.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda (default: cuda when available).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue a run: measure only what is missing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Local copies of lm-eval's datasets: a Hugging Face datasets cache (see README).")]

F = TypeVar("F", bound=Callable[..., Any])

# The bench block's options, each declared once (its type and help): a command names those it
# takes, and may word one's help its own way (`profile-decode` traces steps, it does not time).
BENCH_OPTIONS: dict[str, tuple[Any, str]] = {
    "batch": (int | None, "Decode batch (default: the profile's)."),
    "context": (int | None, "Tokens in the cache before decoding."),
    "gen_tokens": (int | None, "Timed decode steps."),
    "repeats": (int | None, "Timed repeats (median reported)."),
    "decode": (str | None, "How a decode step runs: eager, compiled (torch.compile), graph "
               "(CUDA-graph replay) or auto (measured: the faster of eager and graph on CUDA; "
               "eager on the CPU)."),
    "sliding_prefill": (str | None, "The sliding-window prefill kernel: blocked (SDPA per block "
                        "of queries) or flex (one FlexAttention call with a block mask) "
                        "[default: the profile's]."),
    "decode_kernels": (str | None, "The decode step's kernels: torch, or triton (fused norms, "
                       "conv and SSM state updates: a CUDA device, or TRITON_INTERPRET=1 on the "
                       "CPU) [default: the profile's]."),
}
EXECUTOR_OPTIONS: dict[str, tuple[Any, Any]] = {
    "executor": (Annotated[str, typer.Option(
        help="Where units run: local (this machine), ray (a Ray cluster: pip install "
             "'hymba-bench[ray]') or slurm (submitit: pip install 'hymba-bench[slurm]').")],
        "local"),
    "ray_address": (Annotated[str | None, typer.Option(
        help="With --executor ray: the cluster to join (default: start a local one).")], None),
    "slurm_partition": (Annotated[str | None, typer.Option(
        help="With --executor slurm: partition.")], None),
    "slurm_time": (Annotated[int, typer.Option(
        min=1, help="With --executor slurm: minutes per job.")], 60),
    "slurm_gpus": (Annotated[int | None, typer.Option(
        min=0, help="With --executor slurm: GPUs per task [default: 1 on CUDA, none on the CPU].")],
        None),
    "slurm_account": (Annotated[str | None, typer.Option(
        help="With --executor slurm: account.")], None),
    "slurm_retries": (Annotated[int, typer.Option(
        min=0, help="With --executor slurm: re-submissions of a failed or pre-empted job.")], 2),
}


def option_group(target: str, options: dict[str, tuple[Any, Any]],
                 build: Callable[..., Any]) -> Callable[[F], F]:
    """A command's parameter `target` shown as the options `options` (name -> (annotation,
    default)) and handed to the command as `build(**their values)`: an option group declared
    once, carried typed to the library. The options take `target`'s place among the command's
    parameters."""

    def decorate(fn: F) -> F:
        hints = typing.get_type_hints(fn, include_extras=True)
        declared = inspect.signature(fn).parameters
        if target not in declared:
            raise TypeError(f"{fn.__name__}: no parameter {target!r}")
        params: list[inspect.Parameter] = []
        for p in declared.values():
            if p.name != target:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
                continue
            params += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                         default=default, annotation=annotation)
                       for name, (annotation, default) in options.items()]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name, default) for name, (_, default) in options.items()}
            kwargs[target] = build(**values)
            return fn(*args, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return typing.cast(F, command)

    return decorate


def bench_options(*names: str, help: dict[str, str] | None = None) -> Callable[[F], F]:
    """The command's parameter `bench: BenchOverrides` as the bench options `names`, each
    with its shared help unless `help` words it for this command."""
    options = {n: (Annotated[BENCH_OPTIONS[n][0], typer.Option(
        help=(help or {}).get(n, BENCH_OPTIONS[n][1]))], None) for n in names}
    return option_group("bench", options, lambda **values: BenchOverrides(**values))


def executor_options(fn: F) -> F:
    """The command's parameter `engine: ExecutorOptions` as the executor options."""
    return option_group("engine", EXECUTOR_OPTIONS,
                        lambda executor, **rest: ExecutorOptions(name=executor, **rest))(fn)


def split(values: list[str] | None) -> list[str]:
    """Accept both `--skip a --skip b` and `--skip a,b`."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def pick_device(name: str) -> str:
    """`--device`: cpu or cuda (with an index), or auto: cuda when torch sees one."""
    if name != "auto":
        if name.split(":")[0] not in ("cpu", "cuda"):
            raise HymbaBenchError(f"--device: expected cpu, cuda or auto, got {name!r}")
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _with_checkpoints(selection: str | None, checkpoints: list[Path] | None, default: str) -> str:
    """A design selection with the --checkpoint directories appended; without a selection, the
    checkpoints alone, or `default` when there are none."""
    given = [str(p) for p in checkpoints or []]
    for path in given:
        if "," in path:
            raise HymbaBenchError(f"--checkpoint {path}: a path with a comma cannot be told from "
                                  "a list of designs; rename or link it", param="checkpoint")
    if selection is None:
        selection = "" if given else default
    return ",".join(x for x in [selection, *given] if x)


def run_options(selection: str | None, checkpoint: list[Path] | None, default: str,
                variant_file: list[Path] | None, device: str, **fields: Any) -> RunOptions:
    """The library's options for a run of the designs `selection` names (`default` without
    one) and the `--checkpoint` directories (they join the design files), on `device` (auto:
    resolved), with the run's other `fields`."""
    from hymba_bench.runner import RunOptions, select_variants

    files = list(variant_file or [])
    names = select_variants(_with_checkpoints(selection, checkpoint, default), files)
    return RunOptions(variants=names, variant_files=files, device=pick_device(device), **fields)


@contextmanager
def keeping(run_dir: RunDir) -> Iterator[None]:
    """An interrupt (Ctrl-C, SIGTERM) or a full disk during a run: one line saying what was kept."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {_kept(run_dir)}; rerun with --resume to finish") from None
    except FileError as exc:
        kept = _kept(run_dir)
        if kept.startswith("0 "):
            raise
        raise FileError(f"{exc}; {kept}; free space, then rerun with --resume") from None


def _kept(run_dir: RunDir) -> str:
    try:
        count = len(run_dir.results.load())
    except HymbaBenchError:
        count = 0
    return f"{count} records kept in {run_dir.results.path}"
