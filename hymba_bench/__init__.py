"""hymba-bench: build and measure hybrid attention + SSM language models (the Hymba roadmap)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hymba_bench.design.config import ConfigError, LayerSpec, ModelConfig

if TYPE_CHECKING:
    import torch

    from hymba_bench.model.lm import HybridLM

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


def build_config(name: str, profile: str = "tiny", **overrides: Any) -> ModelConfig:
    from hymba_bench.design.registry import resolve

    return resolve(name, profile, **overrides).config


def __getattr__(name: str) -> Any:
    if name == "HymbaBenchLM":  # lazy: importing lm-eval takes seconds
        from hymba_bench.accuracy.adapter import HymbaBenchLM

        return HymbaBenchLM
    raise AttributeError(f"module 'hymba_bench' has no attribute {name!r}")


__all__ = ["ConfigError", "HymbaBenchLM", "LayerSpec", "ModelConfig", "build_config", "build_model"]
