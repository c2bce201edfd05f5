"""GGUF files (llama.cpp's format, in which many small models circulate) as checkpoints: transformers
reads one through the `gguf` package, mapping its metadata onto the family's configuration and
its tensors onto the family's names, dequantized; the family's adapter takes it from there, as
for a safetensors directory. What the file held is recorded: its tensors' quantization types
(`gguf_quantization`, e.g. "F32,Q8_0") beside the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hymba_bench.errors import HymbaBenchError

if TYPE_CHECKING:
    from torch import Tensor


def is_gguf(path: Path) -> bool:
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def _need_packages(path: Path) -> None:
    try:
        import gguf  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise HymbaBenchError(f"{path}: reading GGUF needs transformers and gguf "
                              "(pip install 'hymba-bench[hf]')", param="checkpoint") from None


def gguf_config(path: Path) -> dict[str, Any]:
    """The family's configuration, as transformers parses the file's metadata."""
    _need_packages(path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HymbaBenchError(f"{path}: not a GGUF model transformers can read ({reason})",
                              param="checkpoint") from None
    return config.to_dict()


def gguf_state(path: Path) -> dict[str, Tensor]:
    """Its tensors under the family's Hugging Face names, dequantized to float32."""
    _need_packages(path)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    return {k: v.detach() for k, v in model.state_dict().items()}


def gguf_fingerprint(path: Path) -> dict[str, str | None]:
    """The file, the SHA-256 of its parsed configuration and of its bytes, its quantizations."""
    from gguf import GGUFReader

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    config = json.dumps(gguf_config(path), sort_keys=True, default=str).encode()
    kinds = sorted({t.tensor_type.name for t in GGUFReader(path).tensors})
    return {"hf_checkpoint": str(path), "config_sha256": hashlib.sha256(config).hexdigest(),
            "weights_sha256": digest.hexdigest(), "gguf_quantization": ",".join(kinds)}
