"""hymba-bench: build and measure hybrid attention + SSM language models (the Hymba roadmap)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig

if TYPE_CHECKING:
    import torch

    from hymba_bench.api.run import Reporter
    from hymba_bench.bench.regress import Comparison
    from hymba_bench.model.lm import HybridLM
    from hymba_bench.results.records import RunDir
    from hymba_bench.results.tables import Table
    from hymba_bench.runner import RunOptions

__version__ = "0.1.0"


def build_model(name: str, profile: str = "tiny", *, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, variant_files: list[Any] | None = None,
                seed: int | None = 0, **overrides: Any) -> HybridLM:
    """Build a registered variant as a PyTorch module, its weights initialised from `seed`
    (the same weights wherever the same design is built with the same seed).

    `device="meta"` builds without allocating weights (for parameter counts of large models).
    Keyword overrides replace any `ModelConfig` field, e.g. `build_model("llama", n_layers=4)`.
    """
    from hymba_bench.design.registry import resolve
    from hymba_bench.model.lm import instantiate

    config = resolve(name, profile, variant_files, **overrides).config
    return instantiate(config, device or "cpu", dtype, seed)


def load_pretrained(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> HybridLM:
    """A Hugging Face checkpoint directory (config.json, *.safetensors) as our model, loaded
    strictly by the adapter of its `model_type` (`hymba_bench.model.hf.ADAPTERS`): the same
    `forward(ids[, cache])` and `allocate_cache(batch, max_seq_len)` as `build_model`'s."""
    from hymba_bench.model.hf import load_pretrained as load

    return load(path, device, dtype)


def build_config(name: str, profile: str = "tiny", **overrides: Any) -> ModelConfig:
    from hymba_bench.design.registry import resolve

    return resolve(name, profile, **overrides).config


def run(variants: str | list[str] = "all", profile: str = "tiny", out: str | Path = "runs/latest",
        *, skip: Iterable[str] = (), resume: bool = False, device: str = "cpu",
        variant_files: list[Path] | None = None, report: Reporter | None = None,
        **options: Any) -> RunDir:
    """What `hymba-bench run` does: the designs through every stage not skipped, records appended
    to `out/results.jsonl` as they come, Table 1's layout written; the run directory. `options`:
    the rest of `runner.RunOptions` (`bench`, `train`, `executor` ...), where `bench`, `train`
    and `executor` may be dicts of their fields, and the executor's fields keywords of their
    own (`workers=2`)."""
    from hymba_bench.runner import run as run_designs

    return run_designs(_options(variants, profile, out, skip, resume, device, variant_files,
                                options), report)


def compare(designs: list[str], profile: str = "tiny", out: str | Path = "runs/compare", *,
            resume: bool = False, device: str = "cpu", variant_files: list[Path] | None = None,
            report: Reporter | None = None, **options: Any) -> Table:
    """What `hymba-bench compare` does: the designs measured in one run and set side by side as
    ratios to the first; the table (also written as `out/compare.md` and `.csv`)."""
    from hymba_bench.runner import compare as compare_designs

    return compare_designs(_options(designs, profile, out, (), resume, device, variant_files,
                                    options), report)[1]


def sweep(variants: str | list[str], seq_lens: list[int], profile: str = "tiny",
          out: str | Path = "runs/sweep", *, resume: bool = False, device: str = "cpu",
          variant_files: list[Path] | None = None, report: Reporter | None = None,
          **options: Any) -> list[Path]:
    """What `hymba-bench sweep` does: decode throughput and cache against context length; the
    plots written (the records are in `out/sweep.jsonl`)."""
    from hymba_bench.bench.sweep import sweep as sweep_designs

    return sweep_designs(_options(variants, profile, out, (), resume, device, variant_files,
                                  options), list(seq_lens), report)


def regress(baseline: str | Path, current: str | Path, tolerance: float = 0.15,
            abs_tolerance: float | None = None, retime: int = 0) -> Comparison:
    """What `hymba-bench regress` does: a run checked against a baseline file; the comparison
    (`.failed`, `.judged_nothing`, `bench.regress.report` for the Markdown)."""
    from hymba_bench.bench.regress import check

    return check(Path(baseline), Path(current), tolerance, abs_tolerance, retime)


def _options(variants: str | list[str], profile: str, out: str | Path, skip: Iterable[str],
             resume: bool, device: str, variant_files: list[Path] | None,
             options: dict[str, Any]) -> RunOptions:
    from hymba_bench.executors import ExecutorOptions
    from hymba_bench.runner import RunOptions, select_variants

    files = [Path(f) for f in variant_files or []]
    names = select_variants(variants if isinstance(variants, str) else ",".join(variants), files)
    engine = ExecutorOptions.of(options.pop("executor", None))
    # the engine's settings may also come as keywords of their own (`workers=2`, `ray_address=`)
    loose = {k: options.pop(k) for k in [k for k in options if hasattr(engine, k)]}
    # RunOptions takes `bench` and `train` as dicts of their fields too
    return RunOptions(variants=names, profile=profile, out=Path(out), skip=set(skip), resume=resume,
                      device=device, variant_files=files,
                      executor=dataclasses.replace(engine, **loose), **options)


def __getattr__(name: str) -> Any:
    if name == "HymbaBenchLM":  # lazy: importing lm-eval takes seconds
        from hymba_bench.accuracy.adapter import HymbaBenchLM

        return HymbaBenchLM
    if name == "RunDir":
        from hymba_bench.results.records import RunDir

        return RunDir
    raise AttributeError(f"module 'hymba_bench' has no attribute {name!r}")


__all__ = ["ConfigError", "HymbaBenchLM", "LayerSpec", "ModelConfig", "RunDir", "build_config",
           "build_model", "compare", "load_pretrained", "regress", "run", "sweep"]
