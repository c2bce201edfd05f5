"""The fused decode kernels (Triton) equal their `*_ref` twins: values, and the states they
update in place. Without a GPU they run under Triton's interpreter, so CI holds them too. They
serve decode only (inference mode): there is no backward to compare."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hymba_bench import ops
from hymba_bench.ops import triton_decode as td

pytest.importorskip("triton")  # without a GPU, run under the interpreter (tests/conftest.py)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 5), width=st.sampled_from([8, 48, 100]), seed=st.integers(0, 99))
def test_fused_norms(rows: int, width: int, seed: int) -> None:
    a, s = rand(rows, width, seed=seed), rand(rows, width, seed=seed + 1, scale=7.0)
    wa, ws = rand(width, seed=seed + 2), rand(width, seed=seed + 3)
    torch.testing.assert_close(td.fused_norms(a, s, wa, ws, 1e-6),
                               td.fused_norms_ref(a, s, wa, ws, 1e-6), atol=1e-5, rtol=1e-5)


def test_fused_norms_in_half_precision_reads_a_strided_slice() -> None:
    wide = rand(3, 2, 96, seed=0).half()
    a, s = wide[..., :48], wide[..., 48:]  # the last dimension contiguous, rows strided
    wa, ws = rand(48, seed=1), rand(48, seed=2)
    torch.testing.assert_close(td.fused_norms(a, s, wa, ws, 1e-5),
                               td.fused_norms_ref(a, s, wa, ws, 1e-5), atol=2e-3, rtol=2e-3)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 3), channels=st.sampled_from([1, 40, 300]), taps=st.integers(2, 4),
       bias=st.booleans(), silu=st.booleans(), seed=st.integers(0, 99))
def test_conv_update(batch: int, channels: int, taps: int, bias: bool, silu: bool,
                     seed: int) -> None:
    x = rand(batch, 2 * channels, seed=seed)[:, :channels]  # a slice, as the mixers hand it over
    state = rand(batch, channels, taps - 1, seed=seed + 1)
    weight, b = rand(channels, taps, seed=seed + 2), rand(channels, seed=seed + 3) if bias else None
    mine, theirs = state.clone(), state.clone()
    torch.testing.assert_close(td.conv_update(x, mine, weight, b, silu),
                               td.conv_update_ref(x, theirs, weight, b, silu), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine, theirs)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 3), channels=st.sampled_from([1, 40, 130]),
       n_state=st.sampled_from([1, 16, 20]), skip=st.booleans(), gate=st.booleans(),
       bias=st.booleans(), softplus=st.booleans(), seed=st.integers(0, 99))
def test_state_update(batch: int, channels: int, n_state: int, skip: bool, gate: bool,
                      bias: bool, softplus: bool, seed: int) -> None:
    state = rand(batch, channels, n_state, seed=seed)
    args = {"x": rand(batch, channels, seed=seed + 1), "dt": rand(batch, channels, seed=seed + 2),
            "A": -rand(channels, n_state, seed=seed + 3).abs(), "B": rand(batch, n_state, seed=seed + 4),
            "C": rand(batch, n_state, seed=seed + 5),
            "D": rand(channels, seed=seed + 6) if skip else None,
            "z": rand(batch, channels, seed=seed + 7) if gate else None,
            "dt_bias": rand(channels, seed=seed + 8) if bias else None, "dt_softplus": softplus}
    if not softplus:  # a positive step, as softplus would give
        args["dt"] = args["dt"].abs()
    mine, theirs = state.clone(), state.clone()
    torch.testing.assert_close(td.state_update(mine, **args), td.state_update_ref(theirs, **args),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["mamba", "b-parallel"])
def test_a_design_decodes_alike_with_the_fused_kernels(name: str) -> None:
    """Mamba's step and the hybrid layer's (its fusion, conv and state updates) through the
    Triton kernels give the torch path's logits, step after step."""
    from tests.helpers import small_model

    model = small_model(name).to(DEVICE)
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 12), device=DEVICE)
    logits = {}
    for kind in ("torch", "triton"):
        cache = model.allocate_cache(2, 16)
        with torch.inference_mode(), ops.decode_kernels(kind):
            out = [model(prompt, cache)[:, -1]]
            token = out[0].argmax(-1, keepdim=True)
            for _ in range(3):
                out.append(model(token, cache)[:, -1])
                token = out[-1].argmax(-1, keepdim=True)
        logits[kind] = torch.stack(out)
    torch.testing.assert_close(logits["triton"], logits["torch"], atol=1e-4, rtol=1e-4)


def test_the_setting_is_checked_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from hymba_bench.design.registry import get_profile
    from hymba_bench.errors import HymbaBenchError
    from hymba_bench.settings import BenchOverrides, bench_settings

    profile = get_profile("tiny")
    assert bench_settings(profile, "cpu").decode_kernels == "torch"  # the default
    if not torch.cuda.is_available():
        assert bench_settings(profile, "cpu", BenchOverrides(decode_kernels="triton"))
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(HymbaBenchError, match=r"decode_kernels: .*TRITON_INTERPRET=1"):
            bench_settings(profile, "cpu", BenchOverrides(decode_kernels="triton"))
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(HymbaBenchError, match="decode_kernels: expected one of torch, triton"):
        bench_settings(profile, "cpu", BenchOverrides(decode_kernels="cuda"))
    with pytest.raises(HymbaBenchError, match="eager or graph decode"):
        bench_settings(profile, "cpu", BenchOverrides(decode_kernels="triton", decode="compiled"))
