"""The mixer redesign changed no design: every registered design built at seed 0 computes the
function it computed before (logits recorded in `tests/data/golden_logits.json` by the code of
December 2026, before mixers became self-describing files), and a checkpoint saved by that code
still loads and computes what it computed then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import small_model

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = json.loads((DATA / "golden_logits.json").read_text())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_design_computes_what_it_computed_before(name: str) -> None:
    torch.set_num_threads(1)
    want = GOLDEN[name]
    model = small_model(name)
    ids = torch.arange(2 * 24).view(2, 24) * 37 % 500
    with torch.no_grad():
        logits = model(ids).double()
        cache = model.allocate_cache(2, 32)
        model(ids[:, :20], cache)
        steps = model(ids[:, 20:], cache).double()
    assert model.num_parameters() == want["params"]
    torch.testing.assert_close(logits[:, -3:, :4].flatten(), torch.tensor(want["corner"]).double(),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(steps[:, :, :3].flatten(), torch.tensor(want["decoded"]).double(),
                               rtol=1e-4, atol=1e-5)
    assert logits.abs().sum().item() == pytest.approx(want["abs_sum"], rel=1e-5)


def test_an_old_checkpoint_loads_and_computes_the_same() -> None:
    from hymba_bench.accuracy.checkpoint import load_checkpoint

    path = DATA / "hybrid-checkpoint-v0"
    model, meta = load_checkpoint(path)
    assert meta["variant"] == "e-meta-tokens"
    want = json.loads((path / "logits.json").read_text())["logits"]
    with torch.no_grad():
        got = model.eval()(torch.arange(12).view(1, 12)).double()[0, :, :5].flatten()
    torch.testing.assert_close(got, torch.tensor(want).double(), rtol=1e-4, atol=1e-5)
