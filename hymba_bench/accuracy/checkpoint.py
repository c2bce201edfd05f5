"""Checkpoints: a directory with `model.safetensors` and `config.json` (variant, profile, config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError
from hymba_bench.files import atomic, make_dirs, write_atomic
from hymba_bench.model.lm import HybridLM, instantiate

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(model: HybridLM, path: Path, variant: str, profile: str,
                    extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    path = make_dirs(Path(path))
    state: dict[str, torch.Tensor] = {}
    repeated = aliases(model)
    for key, value in model.state_dict(keep_vars=True).items():
        if key not in repeated:  # tied / shared weights are stored once, under one name
            state[key] = value.detach().contiguous().cpu()
    with atomic(path / WEIGHTS) as tmp:  # an interrupted save never leaves a torn checkpoint
        save_file(state, str(tmp))
    meta = {"format": "hymba-bench", "variant": variant, "profile": profile,
            "config": model.cfg.to_dict(), **(extra or {})}
    write_atomic(path / CONFIG, json.dumps(meta, indent=2))


def aliases(model: torch.nn.Module) -> set[str]:
    """State-dict names that repeat a tensor stored under an earlier name (tied embeddings, the
    layers that apply Zamba's shared block)."""
    seen: set[int] = set()
    out: set[str] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            out.add(key)
        seen.add(id(value))
    return out


def read_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise HymbaBenchError(f"{path} is not a directory", param="checkpoint")
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise HymbaBenchError(f"{path} has no {CONFIG} and {WEIGHTS}", param="checkpoint")
    try:
        return json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise HymbaBenchError(f"{path / CONFIG}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise HymbaBenchError(f"{path / CONFIG}: not UTF-8 text") from None


def read_safetensors(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a one-line error."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device=str(device))
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError, on bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HymbaBenchError(f"{file}: cannot read the weights ({reason}); the file may be "
                              "truncated or not a safetensors file") from None


def load_checkpoint(path: Path, variant: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[HybridLM, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, and load its weights."""
    meta = read_meta(path)
    if meta.get("format") != "hymba-bench":
        raise HymbaBenchError(f"{path} is not a hymba-bench checkpoint", param="checkpoint")
    if variant is not None and meta.get("variant") != variant:
        raise HymbaBenchError(f"{path} holds variant {meta.get('variant')!r}, "
                              f"not {variant!r}", param="checkpoint")
    cfg = ModelConfig(**meta["config"])
    model = instantiate(cfg, device, seed=None)  # every weight is loaded next
    state = read_safetensors(Path(path) / WEIGHTS, device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise HymbaBenchError(f"{path} does not fit {cfg.name}: {first}", param="checkpoint") from None
    repeated = aliases(model)
    missing = [k for k in missing if k not in repeated]
    if missing or unexpected:
        raise HymbaBenchError(f"{path} does not fit {cfg.name}: missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}", param="checkpoint")
    return model, meta
