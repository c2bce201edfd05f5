"""Context-length sweeps: records keyed by context, resumable, and plotted."""

from __future__ import annotations

from pathlib import Path

import pytest

from hymba_bench.bench.sweep import parse_seq_lens, sweep
from hymba_bench.design.registry import resolve
from hymba_bench.errors import HymbaBenchError
from hymba_bench.model.cache import cache_bytes
from hymba_bench.results.records import ResultsFile
from hymba_bench.runner import RunOptions
from hymba_bench.settings import BenchOverrides

FAST = BenchOverrides(batch=2, gen_tokens=2, repeats=1)


def run_sweep(tmp_path: Path, resume: bool = False) -> Path:
    opts = RunOptions(variants=["llama", "c-local-global"], out=tmp_path / "s", resume=resume,
                      bench=FAST)
    sweep(opts, [16, 48])
    return opts.out


def test_sweep_records_and_plots(tmp_path: Path) -> None:
    out = run_sweep(tmp_path)
    records = ResultsFile(out / "sweep.jsonl").load()
    got = {(r.variant, r.metric, r.get("context")) for r in records}
    assert got == {(v, m, c) for v in ("llama", "c-local-global")
                   for m in ("cache_bytes", "cache_mb", "decode_tok_s") for c in (16, 48)}
    for r in records:
        if r.metric == "cache_bytes":
            cfg = resolve(r.variant).config
            assert r.value == cache_bytes(cfg, 1, r.get("context"))
    for name in ("sweep_throughput.png", "sweep_cache.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # resume measures nothing new
    run_sweep(tmp_path, resume=True)
    assert len(ResultsFile(out / "sweep.jsonl").load()) == len(records)


def test_llama_cache_grows_linearly_and_window_flattens(tmp_path: Path) -> None:
    llama, c = resolve("llama").config, resolve("c-local-global").config
    assert cache_bytes(llama, 1, 8192) == 2 * cache_bytes(llama, 1, 4096)
    w = c.sliding_window
    assert cache_bytes(c, 1, 8 * w) - cache_bytes(c, 1, 4 * w) < \
        cache_bytes(llama, 1, 8 * w) - cache_bytes(llama, 1, 4 * w)


@pytest.mark.parametrize("text", ["", "1,x", "0,5", "-3"])
def test_bad_seq_lens(text: str) -> None:
    with pytest.raises(HymbaBenchError, match=r"^seq_lens: expected") as caught:
        parse_seq_lens(text)
    assert caught.value.param == "seq_lens"  # the CLI says --seq-lens (tests/cli)
