"""Every metric declared once: its stage owes it, its unit goes into the record, tables show it
in its format and column, the unstable marks and the regression check read its direction."""

from __future__ import annotations

import pandas as pd
import pytest

from hymba_bench.api import metrics
from hymba_bench.api.metrics import METRICS, Metric, fmt, owed
from hymba_bench.bench import regress
from hymba_bench.results.records import Record, RecordSet
from hymba_bench.results.tables import SHOWN, Table, compare_table, extended_table


def test_each_stage_owes_the_metrics_declared_for_it() -> None:
    from hymba_bench.accuracy.stage import AccuracyStage
    from hymba_bench.bench.stages import CacheStage, ThroughputStage

    assert CacheStage().metrics == owed("cache") == ("params", "cache_bytes",
                                                     "cache_bytes_analytic", "cache_mb")
    assert ThroughputStage({}).metrics == owed("throughput")
    assert set(AccuracyStage.metrics) == {"recall_pct", "commonsense_pct"}
    assert "cache_bytes_device" not in owed("cache")  # a GPU's figure: not owed on the CPU


def test_a_record_carries_its_declared_unit() -> None:
    for m in METRICS.values():
        assert Record.measured("llama", m.name, 1.0).to_json()["unit"] == m.unit
    # a seed's own figure shares its metric's unit; an undeclared name has none
    assert Record.measured("llama", "recall_pct_seed", 1.0).unit == "%"
    assert Record.measured("llama", "made_up", 1.0).unit == ""


@pytest.mark.parametrize(("form", "value", "shown"), [
    ("sig3", 0.04, "0.04"), ("number", 0.04, "0.0"), ("count", 1234567.0, "1,234,567"),
    ("mb", 8.388608, "8.39"), ("mb", 414.7, "414.7"), ("ratio", 1.5, "1.50x"),
    ("number", 12345.6, "12,346")])
def test_formats(form: metrics.Format, value: float, shown: str) -> None:
    assert fmt(form, value) == shown


def test_a_column_shows_its_metric_in_the_metric_s_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """A latency in seconds declared `sig3` shows 40 ms as 0.04, not the 0.0 a title-guessed
    format gave."""
    monkeypatch.setitem(METRICS, "step_s", Metric("step_s", "s", "throughput", False, "sig3",
                                                  column="Step (s)", timed=True))
    table = Table(pd.DataFrame([{"Design": "llama", "Step (s)": 0.04}]),
                  sources={"Step (s)": "step_s"})
    assert table.display_frame().iat[0, 1] == "0.04"


def records(unstable: str | None = None) -> RecordSet:
    common = {"profile": "tiny", "device": "cpu", "table_label": None, "order": 1}
    out = []
    for i, name in enumerate(["llama", "mamba"]):
        fields = {**common, "order": i, "unstable": unstable if name == "mamba" else None}
        out += [Record.measured(name, "params", 100.0 * (i + 1), **common),
                Record.measured(name, "cache_bytes", 1000.0 * (i + 1), **common),
                Record.measured(name, "cache_mb", 0.001 * (i + 1), **common),
                Record.measured(name, "decode_tok_s", 50.0 * (i + 1),
                                **{k: v for k, v in fields.items() if v is not None}),
                Record.measured(name, "prefill_tok_s", 500.0 * (i + 1), **common)]
    return RecordSet(out)


def test_every_declared_column_is_in_the_extended_table() -> None:
    table = extended_table(records())
    assert set(SHOWN) <= set(table.frame.columns)
    assert table.format_of("Params") == "count" and table.format_of("Cache (MB)") == "mb"
    assert table.format_of("Decode vs Llama") == "ratio"


def test_unstable_marks_follow_the_columns_that_show_the_metric() -> None:
    table = compare_table(records(unstable="spread 40%"), ["llama", "mamba"])
    flagged = {column for row, column in table.flagged if row == 1}
    assert flagged == {"Decode (tok/s)", "Decode vs llama"}
    assert any("mamba decode_tok_s: spread 40%" in n for n in table.footnotes)
    assert not extended_table(records()).flagged


def test_regress_judges_a_metric_in_its_declared_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    """A latency (lower is better) that rose 50% is a regression; one that fell is not. Before
    the declarations every timed metric was read as higher-is-better."""
    monkeypatch.setitem(METRICS, "step_s", Metric("step_s", "s", "throughput", False, "sig3",
                                                  timed=True))
    higher = regress._higher("step_s")
    assert higher is False
    worse = regress._speed_check("llama", "step_s", "absolute", 1.0, 1.5, 0.15, None, None, higher)
    better = regress._speed_check("llama", "step_s", "absolute", 1.0, 0.7, 0.15, None, None, higher)
    assert not worse.ok and better.ok
    faster = regress._speed_check("llama", "decode_tok_s", "absolute", 100.0, 150.0, 0.15, None,
                                  None, regress._higher("decode_tok_s"))
    assert faster.ok
    monkeypatch.setitem(METRICS, "odd", Metric("odd", "", "throughput", None, timed=True))
    with pytest.raises(ValueError, match="neither higher nor lower"):
        regress._higher("odd")


def test_exact_and_timed_come_from_the_declarations() -> None:
    assert regress.EXACT == ("params", "cache_bytes", "cache_bytes_analytic")
    assert set(regress.SPEED) == {"decode_tok_s", "prefill_tok_s"}
    assert all(METRICS[m].higher_is_better is not None for m in regress.SPEED)


def test_the_committed_default_run_s_exact_metrics_still_hold() -> None:
    """The README's default run (results/tiny-cpu) was measured before the run layer was
    restructured: every design's parameter count and allocated cache bytes are the same now."""
    import torch

    from hymba_bench.design.registry import names, resolve
    from hymba_bench.model.cache import cache_bytes
    from hymba_bench.model.lm import count_parameters
    from tests.test_structure import ROOT

    committed = pd.read_csv(ROOT / "results" / "tiny-cpu" / "roadmap_extended.csv")
    by_label = committed.set_index("Configuration")
    designs = names(only_all=True)
    assert len(committed) == len(designs)
    for name in designs:
        rv = resolve(name, "tiny")
        row = by_label.loc[rv.info["table_label"]]
        assert count_parameters(rv.config) == row["Params"]
        assert cache_bytes(rv.config, 1, rv.info["cache_seq_len"], torch.float16) == \
            row["Cache (bytes)"]


def test_a_new_metric_is_its_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declared with a column, a metric a stage records shows in the extended table, in its
    format, with its unit in the record; nothing else is edited."""
    import hymba_bench.results.tables as tables

    step = Metric("step_s", "s", "throughput", False, "sig3", column="Step (s)", timed=True)
    monkeypatch.setitem(METRICS, "step_s", step)
    monkeypatch.setitem(tables.SHOWN, "Step (s)", step)
    common = {"profile": "tiny", "device": "cpu"}
    recs = RecordSet([*records(), Record.measured("llama", "step_s", 0.0421, **common)])
    shown = extended_table(recs).display_frame()
    assert dict(zip(shown["Configuration"], shown["Step (s)"], strict=True)) == {
        "llama": "0.0421", "mamba": "—"}
    assert Record.measured("llama", "step_s", 0.0421).unit == "s"
