"""The decode step is one static graph: compiled once for every later position, equal to eager.

The contract of issue "GPU decode that measures the architecture": after a prefill,
`torch.compile(model, fullgraph=True)` compiles the (B, 1) decode step at most twice over a dozen
steps (fullgraph: no graph break at all) and gives the eager logits. The counting backend runs the
captured graph as traced, so the count is Dynamo's and the check is fast enough for every variant;
one test compiles for real with Inductor through the harness's own `make_step`.
"""

from __future__ import annotations

import math

import pytest
import torch

from hymba_bench.bench.throughput import (
    SETUP_STEPS,
    _probe_ms,
    decode_bytes_per_step,
    decode_throughput,
    filled_cache,
    make_step,
    measure_bandwidth,
    roofline_pct,
)
from hymba_bench.errors import HymbaBenchError
from tests.helpers import VARIANTS, bench, small_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", VARIANTS)
def test_decode_step_compiles_once_and_equals_eager(name: str) -> None:
    model = small_model(name)
    graphs: list[torch.fx.GraphModule] = []

    def counting(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=counting, dynamic=False)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager_cache, compiled_cache = model.allocate_cache(2, 60), model.allocate_cache(2, 60)
        model(ids, eager_cache)
        model(ids, compiled_cache)
        token = ids[:, -1:]
        for _ in range(12):  # crosses the sliding windows' ring boundary of the tiny profile
            want = model(token, eager_cache)
            got = compiled(token, compiled_cache)
            assert rel(got, want) <= 1e-5
            token = want[:, -1].argmax(-1, keepdim=True)
    assert 1 <= len(graphs) <= 2
    # the position advanced on the device; the host mirror is read back from it
    assert compiled_cache.pos == eager_cache.pos == model.cfg.meta_tokens + 52


@pytest.mark.slow
def test_inductor_compiled_step_through_make_step() -> None:
    model = small_model("e-meta-tokens")
    ids = torch.randint(0, model.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    with torch.inference_mode():
        eager_cache, cache = model.allocate_cache(2, 60), model.allocate_cache(2, 60)
        model(ids, eager_cache)
        model(ids, cache)
        first = ids[:, -1:]
        step = make_step(model, cache, first, "compiled")
        assert cache.pos == model.cfg.meta_tokens + 40  # the compile's warm-up steps were undone
        token = first
        for _ in range(8):
            want = model(token, eager_cache)
            got = step(token)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            token = want[:, -1].argmax(-1, keepdim=True)


def test_eager_step_refuses_to_overflow_the_cache() -> None:
    model = small_model("llama")
    with torch.no_grad():
        cache = model.allocate_cache(1, 10)
        model(torch.zeros(1, 9, dtype=torch.long), cache)
        model(torch.zeros(1, 1, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="cache holds 10 tokens; 10 used, 1 more requested"):
            model(torch.zeros(1, 1, dtype=torch.long), cache)


def test_checkpoint_restores_positions_in_place() -> None:
    model = small_model("d-kv-share")
    with torch.no_grad():
        cache = model.allocate_cache(1, 100)
        model(torch.randint(0, 512, (1, 50)), cache)
        position = cache.position
        restore = cache.checkpoint(5)
        before = model(torch.ones(1, 1, dtype=torch.long), cache)
        model(torch.ones(1, 4, dtype=torch.long), cache)
        restore()
        assert cache.position is position and cache.pos == cache.cfg.meta_tokens + 50
        torch.testing.assert_close(model(torch.ones(1, 1, dtype=torch.long), cache), before)


def test_decode_mode_is_validated_before_work() -> None:
    with pytest.raises(HymbaBenchError, match="decode: expected one of auto, eager, compiled, graph"):
        bench(decode="fast")
    with pytest.raises(HymbaBenchError, match="'graph' replays CUDA graphs and needs a CUDA device"):
        bench(decode="graph")


def test_cpu_auto_decode_runs_eagerly_and_says_so() -> None:
    model = small_model("mamba")
    settings = bench(batch=2, context=16, gen_tokens=3, warmup=1, repeats=2)
    result = decode_throughput(model, settings, 2)
    assert result.mode == "eager" and result.probe_ms is None and result.tok_s > 0


def test_decode_bytes_count_weights_cache_and_state_writes() -> None:
    model = small_model("c-local-global")
    cfg, n = model.cfg, model.num_parameters()
    batch, context = 3, 100
    window_slots = cfg.meta_tokens + min(cfg.sliding_window + 1, context)
    kv = 0
    for spec in cfg.kv_layers:  # written out: K and V of each KV-holding layer
        slots = cfg.meta_tokens + context if spec.attention == "global" else window_slots
        kv += batch * spec.n_kv_heads * slots * (cfg.d_qk + cfg.d_v)
    mamba = [s for s in cfg.layers if s.mixer in ("mamba", "hybrid")]  # Mamba-1 states
    state = batch * len(mamba) * cfg.d_inner * (cfg.d_conv - 1 + cfg.d_state)
    expected = 4 * (n + kv + 2 * state)  # fp32; states are read and written back
    assert decode_bytes_per_step(cfg, n, batch, context, torch.float32) == expected
    assert roofline_pct(50.0, 2, 1000, 1e5) == pytest.approx(25.0)  # bound: 2 * 1e5 / 1000 = 200


def test_bandwidth_is_a_positive_rate() -> None:
    bandwidth = measure_bandwidth("cpu", 1 << 22)
    assert 1e8 < bandwidth < 1e13  # 0.1 GB/s to 10 TB/s: a copy, not a no-op


def test_every_layout_mixer_has_a_class_that_declares_its_state() -> None:
    from hymba_bench.design.config import ModelConfig
    from hymba_bench.design.mixers import mixer_class, names

    for name in names():  # shapes only: no weights needed to size a cache
        cfg = ModelConfig(layout=[name], d_v=None)
        cls = mixer_class(name)
        shapes = cls.state_shapes(cfg, cfg.layers[0], 3)
        assert all(shape[0] == 3 for shape in shapes.values())
        held = sum(math.prod(shape[1:]) for shape in shapes.values())
        assert held == cls.state_elements(cfg, cfg.layers[0]), name


def test_a_probe_leaves_the_cache_where_it_found_it() -> None:
    """`auto` probes each mode before timing: a probe that advanced the cache would push the
    timed steps past its end, where a replayed CUDA graph writes out of bounds unchecked."""
    model = small_model("c-local-global")
    first = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        cache = filled_cache(model, 2, 24, SETUP_STEPS)  # the room prepare_decode leaves at least
        start = cache.pos
        undo = cache.checkpoint(1)
        want = model(first, cache)
        undo()
        _probe_ms(make_step(model, cache, first, "eager"), first, cache, SETUP_STEPS)
        assert cache.pos == start
        torch.testing.assert_close(model(first, cache), want)
