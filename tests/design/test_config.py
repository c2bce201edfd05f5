"""The layer plan, the released 1.5B configuration and the registry's lookups."""

from __future__ import annotations

import pytest
import torch

from hymba_bench.design.config import ConfigError, ModelConfig
from hymba_bench.design.registry import RegistryError, get_variant, names, resolve
from hymba_bench.model.cache import InferenceCache, cache_mb_paper
from hymba_bench.model.lm import HybridLM

SPEC_GROUPS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [16, 17, 18],
               [19, 20], [21, 22], [23, 24], [25, 26], [27, 28], [29, 30]]


def test_registered_names_are_the_roadmap_then_other_designs() -> None:
    """`all` is Table 1's roadmap in its order, a design per row of the paper's table; every
    other registered design comes after it."""
    from hymba_bench.results.tables import paper_reference

    rows = list(paper_reference()["configuration"])
    roadmap = names(only_all=True)
    labels = [resolve(n, "tiny").info["table_label"] for n in roadmap]
    assert labels == rows  # one design per row, in the paper's order
    assert names()[:len(roadmap)] == roadmap
    assert set(names()) - set(roadmap)  # the field's other designs, outside `all`
    for name in set(names()) - set(roadmap):
        assert get_variant(name).keys.get("in_all") is False


def test_hymba_15b_layer_plan_matches_release() -> None:
    cfg = resolve("hymba-1.5b").config
    assert (cfg.n_layers, cfg.d_model, cfg.d_inner, cfg.d_v, cfg.dt_rank) == (32, 1600, 3200, 128, 100)
    assert [s.index for s in cfg.layers if s.attention == "global"] == [0, 15, 31]
    assert all(s.window == 1024 for s in cfg.layers if s.attention == "sliding")
    groups = {}
    for s in cfg.layers:
        if s.attention == "sliding":
            groups.setdefault(s.kv_source, []).append(s.index)
    assert sorted(groups.values()) == SPEC_GROUPS
    assert len(cfg.kv_layers) == 17


def test_hymba_15b_parameters_and_paper_cache_without_weights() -> None:
    cfg = resolve("hymba-1.5b").config
    with torch.device("meta"):
        model = HybridLM(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_parameters() == 1_522_797_824  # "about 1.5228B"
    assert round(cache_mb_paper(cfg, 8192), 1) == 78.6
    # exact allocation also counts the 128 meta tokens in every KV layer and the one key each of
    # the 14 sliding producers keeps beyond W (q - k <= W, see masks.py)
    extra = (17 * 128 + 14) * cfg.n_kv_heads * (cfg.d_qk + cfg.d_v) * 2
    allocated = InferenceCache(cfg, 1, 8192, torch.float16).nbytes()
    assert allocated == round(cache_mb_paper(cfg, 8192) * 1e6) + extra


def test_paper_convention_mamba_row() -> None:
    """Mamba's 1.9 MB is 24 layers x 2048 channels x (16 + 3) x 2 bytes (the 300M scale)."""
    cfg = resolve("mamba", "paper-300m").config
    assert round(cache_mb_paper(cfg, 8192), 1) == 1.9


def test_roadmap_steps_change_one_thing_each() -> None:
    c = {n: resolve(n, "tiny").config for n in names()}
    assert all(s.attention == "global" for s in c["b-parallel"].layers)
    assert c["c-local-global"].sliding_window == 32
    assert len(c["d-kv-share"].kv_layers) < len(c["c-local-global"].kv_layers)
    assert c["e-meta-tokens"].meta_tokens == 8 and c["d-kv-share"].meta_tokens == 0
    assert c["f-size"].d_model > c["e-meta-tokens"].d_model
    assert c["g-long-context"].max_seq_len == 4 * c["f-size"].max_seq_len


def test_kv_consumers_have_no_kv_projection() -> None:
    model = HybridLM(resolve("d-kv-share").config)
    cfg = model.cfg
    for spec, layer in zip(cfg.layers, model.layers, strict=True):
        rows = layer.mixer.in_proj.weight.shape[0]
        kv = spec.n_kv_heads * (cfg.d_qk + cfg.d_v)
        assert rows == cfg.n_heads * cfg.d_qk + (kv if spec.owns_kv else 0) + 2 * cfg.d_inner


@pytest.mark.parametrize("kwargs, key", [
    ({"layout": ["transformer"]}, "layout"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"sliding_window": 8, "global_layers": [99]}, "global_layers"),
    ({"meta_tokens": "lots"}, "meta_tokens"),
    ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ({"kv_share": 2}, "kv_share"),
])
def test_config_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        ModelConfig(**kwargs)


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(RegistryError, match="did you mean llama"):
        get_variant("lama")
    with pytest.raises(RegistryError, match=r"valid: paper-1\.5b, paper-300m, tiny"):
        resolve("llama", "huge")


def test_overrides_win() -> None:
    cfg = resolve("llama", n_layers=3).config
    assert cfg.n_layers == 3


def test_paper_300m_rows_f_is_the_released_15b() -> None:
    """Row F at the 300M profile steps up to the released 1.5B shape, as in the paper."""
    f = resolve("f-size", "paper-300m").config
    h = resolve("hymba-1.5b", "tiny").config
    assert [s.as_dict() for s in f.layers] == [s.as_dict() for s in h.layers]
    with torch.device("meta"):
        assert HybridLM(f).num_parameters() == HybridLM(h).num_parameters()
    assert cache_mb_paper(f, 8192) == cache_mb_paper(h, 8192)


def test_hybrid_and_attention_layers_take_their_own_kv_heads() -> None:
    llama = resolve("llama", "paper-300m").config
    hybrid = resolve("b-parallel", "paper-300m").config
    assert {s.n_kv_heads for s in llama.layers} == {8}
    assert {s.n_kv_heads for s in hybrid.layers} == {2}
