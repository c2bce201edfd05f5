"""Shared test helpers: every registered variant, built small enough to test in milliseconds."""

from __future__ import annotations

from typing import Any

from hymba_bench import build_model
from hymba_bench.design.registry import get_profile, names, resolve
from hymba_bench.model.lm import HybridLM
from hymba_bench.settings import BenchOverrides, BenchSettings, bench_settings

VARIANTS = names()


def small_overrides(name: str) -> dict[str, Any]:
    """Keep a variant's layer plan but shrink its widths when its fixed size is large."""
    cfg = resolve(name, "tiny").config
    if cfg.d_model <= 128:
        return {}
    out: dict[str, Any] = dict(vocab_size=512, d_model=64, n_heads=4, n_kv_heads=2, d_qk=16,
                               d_v=None, intermediate_size=128, dt_rank=None)
    if cfg.sliding_window is not None:
        out["sliding_window"] = 16
    if cfg.meta_tokens:
        out["meta_tokens"] = 4
    return out


def small_model(name: str, seed: int = 0, **extra: Any) -> HybridLM:
    model = build_model(name, "tiny", seed=seed, **{**small_overrides(name), **extra})
    return model.eval()


def bench(device: str = "cpu", **overrides: Any) -> BenchSettings:
    """The tiny profile's throughput settings for `device`, with `overrides`."""
    return bench_settings(get_profile("tiny"), device, BenchOverrides(**overrides))
