"""What `hymba-bench show` prints about a design, computed without building it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.cache import cache_bytes, cache_mb_paper
from hymba_bench.model.lm import count_parameters


def describe(name: str, profile: str, seq_len: int | None,
             variant_files: list[Path] | None = None) -> dict[str, Any]:
    """The layer plan, each mixer's resolved options, the parameter count and the cache at
    batch 1 (by the formula, which tests hold equal to the allocation: a design too large for
    this machine is described without allocating it)."""
    resolved = resolve(name, profile, variant_files)
    fixed = resolved.info["fixed_size"]
    cfg = resolved.config
    if seq_len is not None and seq_len <= 0:
        raise HymbaBenchError(f"expected a positive integer, got {seq_len}", param="seq_len")
    seq = seq_len or resolved.info["cache_seq_len"]
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
        "params": count_parameters(cfg),
        "meta_tokens": cfg.meta_tokens,
        "layers": [spec.as_dict() for spec in cfg.layers],
        "mixer_options": options,  # resolved: the profile's block, then the design's
        "cache": {
            "seq_len": seq,
            "batch": 1,
            "dtype": "float16",
            "bytes": cache_bytes(cfg, 1, seq, torch.float16),
            "mb_paper": round(cache_mb_paper(cfg, seq), 4),
        },
        "config": cfg.to_dict(),
    }
