"""Hugging Face checkpoints as designs: a directory with `config.json` (and, for weights,
`*.safetensors`) is read by the adapter its `model_type` names, built as our model and loaded
strictly: a key that maps nowhere, a parameter left unfilled, a shape that differs, or a
setting of the configuration we do not model is a one-line error naming it.

Adapters are registered lazily by name ("module:Class"), so reading the registry imports none;
one file per family beside this one, each an `adapter.HFAdapter`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hymba_bench.errors import HymbaBenchError

if TYPE_CHECKING:
    import torch

    from hymba_bench.design.config import ModelConfig
    from hymba_bench.model.hf.adapter import HFAdapter
    from hymba_bench.model.lm import HybridLM

# model_type -> "module:Class", in the order the families landed
ADAPTERS: dict[str, str] = {
    "hymba": "hymba_bench.model.hf.hymba:HymbaAdapter",
    "llama": "hymba_bench.model.hf.llama:LlamaAdapter",
    "mistral": "hymba_bench.model.hf.llama:MistralAdapter",
    "qwen2": "hymba_bench.model.hf.llama:Qwen2Adapter",
    "mamba": "hymba_bench.model.hf.mamba:MambaAdapter",
    "mamba2": "hymba_bench.model.hf.mamba:Mamba2Adapter",
    "nemotron_h": "hymba_bench.model.hf.nemotron_h:NemotronHAdapter",
    "bamba": "hymba_bench.model.hf.bamba:BambaAdapter",
    "qwen3_next": "hymba_bench.model.hf.qwen3_next:Qwen3NextAdapter",
    "jamba": "hymba_bench.model.hf.jamba:JambaAdapter",
    "granitemoehybrid": "hymba_bench.model.hf.granite:GraniteMoeHybridAdapter",
    "falcon_h1": "hymba_bench.model.hf.falcon_h1:FalconH1Adapter",
    "zamba2": "hymba_bench.model.hf.zamba2:Zamba2Adapter",
}


def adapter_for(model_type: str) -> HFAdapter:
    if model_type not in ADAPTERS:
        raise HymbaBenchError(f"config.json: model_type {model_type!r} is not supported "
                              f"(supported: {', '.join(ADAPTERS)})", param="checkpoint")
    module, cls = ADAPTERS[model_type].split(":")
    return getattr(importlib.import_module(module), cls)()


def read_hf_config(path: Path) -> dict[str, Any]:
    """`config.json` of a checkpoint directory (or the file itself), or a GGUF file's
    configuration, as a dict."""
    from hymba_bench.model.hf.gguf import gguf_config, is_gguf

    path = Path(path)
    if is_gguf(path):
        return gguf_config(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise HymbaBenchError(f"{path}: no config.json", param="checkpoint")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HymbaBenchError(f"{file}: not a JSON config ({exc})", param="checkpoint") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise HymbaBenchError(f"{file}: no model_type: not a Hugging Face config",
                              param="checkpoint")
    return raw


def is_hf_checkpoint(path: Path) -> bool:
    """A directory whose config.json names a registered model_type, or such a GGUF file."""
    from hymba_bench.model.hf.gguf import is_gguf

    try:
        return (Path(path).is_dir() or is_gguf(Path(path))) and \
            read_hf_config(path)["model_type"] in ADAPTERS
    except HymbaBenchError:
        return False


def config_from_checkpoint(path: Path, name: str | None = None) -> ModelConfig:
    """The design a checkpoint's config.json describes (all throughput and cache need)."""
    from hymba_bench.model.hf.gguf import is_gguf

    path = Path(path)
    raw = read_hf_config(path)
    label = name or (path.name if path.is_dir() else path.stem if is_gguf(path)
                     else path.parent.name)
    return adapter_for(raw["model_type"]).config(raw, label)


def fingerprint(path: Path) -> dict[str, str | None]:
    """What a record says of the checkpoint it measured: its directory, the SHA-256 of its
    config.json, and one over its *.safetensors files in name order (None without weights)."""
    import hashlib

    from hymba_bench.model.hf.gguf import gguf_fingerprint, is_gguf

    path = Path(path)
    if is_gguf(path):
        return gguf_fingerprint(path)
    folder = path if path.is_dir() else path.parent
    weights = sorted(folder.glob("*.safetensors"))
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    config = (folder / "config.json").read_bytes()
    return {"hf_checkpoint": str(folder), "config_sha256": hashlib.sha256(config).hexdigest(),
            "weights_sha256": digest.hexdigest() if weights else None}


def load_pretrained(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> HybridLM:
    """Our model of a Hugging Face checkpoint directory (or a GGUF file), its weights loaded
    strictly."""
    from hymba_bench.accuracy.checkpoint import aliases, read_safetensors
    from hymba_bench.model.hf.gguf import gguf_state, is_gguf
    from hymba_bench.model.lm import instantiate

    path = Path(path)
    raw = read_hf_config(path)
    adapter = adapter_for(raw["model_type"])
    cfg = adapter.config(raw, path.stem if is_gguf(path) else path.name)
    files = [path] if is_gguf(path) else sorted(path.glob("*.safetensors"))
    if not files:
        raise HymbaBenchError(f"{path} has no *.safetensors weights", param="checkpoint")
    device = device or "cpu"
    model = instantiate(cfg, device, seed=None)  # every weight is loaded next
    ours = model.state_dict()
    found: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # key -> the file it came from, for the errors
    if is_gguf(path):
        found = {k: v.to(device) for k, v in gguf_state(path).items()}
        source = dict.fromkeys(found, path.name)
    for file in files if not is_gguf(path) else []:
        for key, value in read_safetensors(file, device).items():
            found[key], source[key] = value, file.name
    found = adapter.convert(found, cfg, raw)
    state: dict[str, torch.Tensor] = {}
    for key, value in found.items():
        if (key == "lm_head.weight" and cfg.tie_embeddings) or adapter.ignored.fullmatch(key):
            continue
        target = adapter.map_key(key)
        where = source.get(key, files[0].name)
        if target is None or target not in ours:
            raise HymbaBenchError(f"{where}: {key} has no counterpart in {cfg.name} "
                                  f"(is this a {adapter.family} checkpoint?)", param="checkpoint")
        if tuple(value.shape) != tuple(ours[target].shape):
            raise HymbaBenchError(f"{key}: shape {tuple(value.shape)}, expected "
                                  f"{tuple(ours[target].shape)} for {target}", param="checkpoint")
        state[target] = value
    missing = sorted(set(ours) - set(state) - aliases(model))
    if missing:
        raise HymbaBenchError(f"{path} lacks {len(missing)} weights, e.g. {missing[0]}",
                              param="checkpoint")
    model.load_state_dict(state, strict=False)
    if dtype is not None:
        model.to(dtype)
    return model


__all__ = ["ADAPTERS", "adapter_for", "config_from_checkpoint", "fingerprint",
           "is_hf_checkpoint", "load_pretrained", "read_hf_config"]
